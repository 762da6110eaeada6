/** Decides whether a stage takes a received frame: right job, step, phase, microbatch, shapes, first time. */
import { ConflictingFrameError, DuplicateKeyError, ShapeError, StaleStepError, UnexpectedFrameError, type TroupeError } from '../src/errors.js';
import type { Frame, WireTensor } from '../src/protocol/frame.js';
import { formatKey, slotOf, type Key } from '../src/protocol/key.js';
import { Phase } from '../src/protocol/phase.js';
import type { StepPlan } from '../src/protocol/messages.js';
import type { CutTensor } from '../src/compute/partition.js';
import type { StageInput } from './stageMachine.js';
import { microbatchSizes } from '../src/schedule/microbatch.js';
import { receives } from '../src/schedule/needs.js';

/** What a stage knows when it judges a frame. */
export interface AdmitContext extends StageInput {
  readonly step: number;
  /** The running step's plan; null when no step runs. */
  readonly plan: StepPlan | null;
  readonly inbox: Readonly<Record<string, Frame>>;
  readonly consumed: readonly string[];
  /** The plan of the step queued behind the running one (its frames may come early), or null. */
  readonly next?: StepPlan | null;
  /** Frames taken for the queued step. */
  readonly early?: Readonly<Record<string, Frame>>;
}

/** The context a frame is judged in: the queued step's when it is for that step, else the stage's own. */
function viewFor(c: AdmitContext, k: Key): AdmitContext {
  return c.next && k.step === c.next.step ? { ...c, step: c.next.step, plan: c.next, inbox: c.early ?? {}, consumed: [] } : c;
}

function checkTensors(what: string, got: readonly WireTensor[], want: readonly CutTensor[], batch: number): void {
  if (got.length !== want.length) throw new ShapeError(`${what}: ${got.length} tensors, expected ${want.length}`);
  got.forEach((t, i) => {
    const w = want[i]!;
    const shape = [batch, ...w.shape];
    if (t.dtype !== w.dtype || t.shape.length !== shape.length || t.shape.some((d, j) => d !== shape[j])) {
      throw new ShapeError(`${what} tensor ${i}: got ${t.dtype}[${t.shape.join(',')}], expected ${w.dtype}[${shape.join(',')}]`);
    }
  });
}

/** Splits an INPUT frame's tensors into model inputs (x*) and labels (y*). */
export function splitInput(f: Frame): { xs: WireTensor[]; ys: WireTensor[] } {
  return { xs: f.tensors.filter((t) => t.name.startsWith('x')), ys: f.tensors.filter((t) => t.name.startsWith('y')) };
}

/**
 * Null when a frame of key `k` belongs to the step this stage is running; otherwise why not.
 * Checked on a chunk's headers before any bytes are assembled, and again on whole frames.
 */
export function admitStep(c: Pick<AdmitContext, 'job' | 'rank' | 'step' | 'plan' | 'next'>, k: Key, from: string): TroupeError | null {
  const id = formatKey(k);
  if (k.job !== c.job) return new UnexpectedFrameError(`${id} from ${from}: job ${k.job} is not ${c.job}`);
  if (k.step < c.step) return new StaleStepError(`${id} from ${from}: step ${k.step} is over (now ${c.step})`);
  if (c.next && k.step === c.next.step) return null;
  if (k.step > c.step || !c.plan) return new UnexpectedFrameError(`${id} from ${from}: step ${k.step} is not running on stage ${c.rank}`);
  return null;
}

/** Whether two frames carry the same tensors, byte for byte (frames whose tensors are on a device cannot be compared: not the same). */
function sameBytes(a: Frame, b: Frame): boolean {
  if (a === b) return true;
  if (a.tensors.length !== b.tensors.length) return false;
  return a.tensors.every((t, i) => {
    const u = b.tensors[i]!;
    if (t.name !== u.name || t.dtype !== u.dtype || t.shape.length !== u.shape.length || t.shape.some((d, j) => d !== u.shape[j])) return false;
    const n = t.shape.reduce((x, d) => x * d, 1);
    if (t.data.length !== n || u.data.length !== n) return false;
    return (
      Buffer.compare(
        new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength),
        new Uint8Array(u.data.buffer, u.data.byteOffset, u.data.byteLength),
      ) === 0
    );
  });
}

/**
 * The frame the stage holds for `f`'s slot (of the running step, or of the queued one),
 * when `f` belongs to one of those steps and its bytes differ: a conflict. One of the two
 * is not what its sender computed, and the stage cannot tell which.
 */
export function conflictOf(stage: AdmitContext, f: Frame): { held: Frame; error: ConflictingFrameError } | null {
  const c = viewFor(stage, f.key);
  const held = c.inbox[slotOf(f.key.phase, f.key.microbatch)];
  if (!held || admitStep(c, f.key, f.from) || sameBytes(held, f)) return null;
  return {
    held,
    error: new ConflictingFrameError(`${formatKey(f.key)} from ${f.from}: received twice with different bytes; neither is used, and step ${f.key.step} fails`),
  };
}

/** Null when the stage takes `f`; otherwise the typed error saying why not. */
export function admitFrame(stage: AdmitContext, f: Frame): TroupeError | null {
  const k = f.key;
  const c = viewFor(stage, k);
  const id = formatKey(k);
  const wrongStep = admitStep(c, k, f.from);
  if (wrongStep) return wrongStep;
  const plan = c.plan!;
  const slot = slotOf(k.phase, k.microbatch);
  const held = c.inbox[slot];
  if (held && !sameBytes(held, f)) return conflictOf(stage, f)!.error;
  if (held || c.consumed.includes(slot)) return new DuplicateKeyError(`${id} from ${f.from}: received twice`);
  if (k.microbatch >= plan.microbatches) {
    return new UnexpectedFrameError(`${id} from ${f.from}: microbatch ${k.microbatch} is outside 0..${plan.microbatches - 1}`);
  }
  if (!receives(k.phase, c.rank, c.stages, plan.forwardOnly)) {
    return new UnexpectedFrameError(`${id} from ${f.from}: stage ${c.rank} of ${c.stages} takes no ${k.phase} frames`);
  }
  const batch = microbatchSizes(plan.batchSize, plan.microbatches)[k.microbatch]!;
  try {
    if (k.phase === Phase.FORWARD) checkTensors(id, f.tensors, c.inputs, batch);
    else if (k.phase === Phase.BACKWARD) checkTensors(id, f.tensors, c.outputs, batch);
    else {
      const { xs, ys } = splitInput(f);
      if (xs.length + ys.length !== f.tensors.length) throw new ShapeError(`${id}: INPUT tensors must be named x<i> or y<i>`);
      if (c.rank === 0) checkTensors(`${id} inputs`, xs, c.inputs, batch);
      else if (xs.length > 0) throw new ShapeError(`${id}: stage ${c.rank} takes labels only`);
      const last = c.rank === c.stages - 1;
      // A prediction has no labels; any other step gives the last stage its labels.
      if ((!last || plan.predict) && ys.length > 0) throw new ShapeError(`${id}: stage ${c.rank} takes no labels${plan.predict ? ' in a prediction' : ''}`);
      if (last && !plan.predict && ys.length === 0) throw new ShapeError(`${id}: the last stage needs labels`);
      for (const y of ys) if (y.shape[0] !== batch) throw new ShapeError(`${id} label ${y.name}: batch ${String(y.shape[0])}, expected ${batch}`);
    }
  } catch (err) {
    return err as TroupeError;
  }
  return null;
}
