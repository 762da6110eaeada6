/**
 * The stage actor in memory: no NATS, no tensors. `execute` and `update` are fakes that
 * record what they are asked to do, frames are plain objects, and every report is logged
 * so the exact interleaving of compute and reports can be asserted.
 */
import { describe, expect, it, vi } from 'vitest';
import { createActor, waitFor, type Actor, type SnapshotFrom } from 'xstate';
import { ConflictingFrameError, DuplicateKeyError, ShapeError, StaleStepError, type TroupeError, UnexpectedFrameError } from '../../src/errors.js';
import type { CutTensor } from '../../src/compute/partition.js';
import type { DType } from '../../src/protocol/dtype.js';
import type { Frame, WireTensor } from '../../src/protocol/frame.js';
import type { StepPlan } from '../../src/protocol/messages.js';
import { Phase } from '../../src/protocol/phase.js';
import { deferred, type Deferred } from '../../src/runtime/deferred.js';
import { formatAction } from '../../src/schedule/action.js';
import { actionRunner, stageMachine, updateRunner, type ExecuteInput, type StageFailure, type StageInput } from '../../actors/stageMachine.js';

const JOB = 'j';
const WAIT = { timeout: 2000 };
/** Stage inputs [3] and outputs [2] (after the batch dimension), float32. */
const IN: CutTensor[] = [{ shape: [3], dtype: 'float32' }];
const OUT: CutTensor[] = [{ shape: [2], dtype: 'float32' }];

type StageMachine = typeof stageMachine;
type Snap = SnapshotFrom<StageMachine>;

function tensor(name: string, shape: number[], dtype: DType = 'float32'): WireTensor {
  const n = shape.reduce((a, b) => a * b, 1);
  const data = dtype === 'float32' ? new Float32Array(n).fill(0.5) : dtype === 'int32' ? new Int32Array(n) : new Uint8Array(n);
  return { name, dtype, shape, data };
}

function frame(phase: Phase, microbatch: number, tensors: WireTensor[], step = 1, job = JOB): Frame {
  return { key: { job, step, microbatch, phase }, from: 'test', tensors };
}

/** Frames a stage of these specs expects, for microbatches of 2 rows (batch 8, m 4). */
const fwd = (mb: number, step = 1, rows = 2) => frame(Phase.FORWARD, mb, [tensor('t0', [rows, 3])], step);
const bwd = (mb: number, step = 1, rows = 2) => frame(Phase.BACKWARD, mb, [tensor('t0', [rows, 2])], step);
const xInput = (mb: number, step = 1) => frame(Phase.INPUT, mb, [tensor('x0', [2, 3])], step);
const yInput = (mb: number, step = 1) => frame(Phase.INPUT, mb, [tensor('y0', [2, 4])], step);

function plan(actions: string, opts: Partial<StepPlan> = {}): StepPlan {
  const batchSize = opts.batchSize ?? 8;
  return {
    step: 1,
    microbatches: 4,
    batchSize,
    totalBatch: batchSize,
    forwardOnly: false,
    predict: false,
    update: !opts.forwardOnly,
    granted: false,
    actions,
    order: '',
    ...opts,
  };
}

interface Rejection {
  readonly error: TroupeError;
  readonly frame: Frame;
}

interface Harness {
  readonly actor: Actor<StageMachine>;
  /** Everything the stage did, in order: `exec 1F0`, `done 1 peak 2`, `update 1`, `updated 1`, `reject CODE`, `error KEY`, `reset`. */
  readonly log: string[];
  readonly executed: ExecuteInput[];
  /** The actions of each run the stage started, e.g. `1F0 1F1`. */
  readonly runs: string[];
  readonly rejects: Rejection[];
  readonly errors: { step: number; failure: StageFailure }[];
  /** Conflicts the stage reported: the step that fails, why, the held frame and the one that came. */
  readonly conflicts: { step: number; error: TroupeError; frames: readonly [Frame, Frame] }[];
  /** Control requests the stage refused (a plan, an abort), and UPDATEs it refused, as `verb CODE: message`. */
  readonly refusals: string[];
  /** Steps whose abort started (`abortStarts`). */
  readonly abortsStarted: number[];
  send(...frames: Frame[]): void;
  /** Waits until the stage waits for a frame with `cursor` actions done. */
  waitingAt(cursor: number): Promise<Snap>;
}

interface HarnessOptions {
  /** Replaces the default execute, which resolves at once. */
  readonly execute?: (input: ExecuteInput) => Promise<void>;
  readonly update?: (step: number) => Promise<void>;
  /** Replaces the update with a synchronous one (the host's, without replicas). */
  readonly syncUpdate?: (step: number) => void;
}

async function harness(input: Partial<StageInput> & { rank: number; stages: number }, o: HarnessOptions = {}): Promise<Harness> {
  const log: string[] = [];
  const executed: ExecuteInput[] = [];
  const runs: string[] = [];
  const rejects: Rejection[] = [];
  const errors: { step: number; failure: StageFailure }[] = [];
  const conflicts: Harness['conflicts'] = [];
  const refusals: string[] = [];
  const abortsStarted: number[] = [];
  const runner = actionRunner(async (ex) => {
    log.push(`exec ${formatAction(ex.action)}`);
    executed.push(ex);
    await o.execute?.(ex);
  });
  const machine = stageMachine.provide({
    actions: {
      startUpdate: updateRunner(
        o.syncUpdate
          ? (step) => {
              log.push(`update ${step}`);
              o.syncUpdate!(step);
            }
          : async (step) => {
              log.push(`update ${step}`);
              await o.update?.(step);
            },
      ),
      reportReject: (_, { error, frame: f }) => {
        log.push(`reject ${error.code}`);
        rejects.push({ error, frame: f });
      },
      reportConflict: (_, { step, error, frames }) => {
        log.push(`conflict ${step} ${error.code}`);
        conflicts.push({ step, error, frames });
      },
      reportDone: (_, { step, peakHeld }) => void log.push(`done ${step} peak ${peakHeld}`),
      reportUpdated: (_, { step }) => void log.push(`updated ${step}`),
      reportError: (_, e) => {
        log.push(`error ${e.failure.key}`);
        errors.push(e);
      },
      resetCompute: () => void log.push('reset'),
      refuseControl: (_, { verb, error }) => void refusals.push(`${verb} ${error.code}: ${error.message}`),
      rejectUpdate: (_, { step, job, error }) => void refusals.push(`UPDATE ${job}/${step} ${error.code}: ${error.message}`),
      abortStarts: (_, { step }) => void abortsStarted.push(step),
      startRun: (args, run) => {
        runs.push(run.map((ex) => formatAction(ex.action)).join(' '));
        runner(args, run);
      },
    },
  });
  const actor = createActor(machine, { input: { job: JOB, inputs: IN, outputs: OUT, ...input } });
  actor.start();
  await waitFor(actor, (s) => s.matches('idle'), WAIT);
  return {
    actor,
    log,
    executed,
    runs,
    rejects,
    errors,
    conflicts,
    refusals,
    abortsStarted,
    send: (...frames) => frames.forEach((f) => actor.send({ type: 'FRAME', frame: f })),
    waitingAt: (cursor) => waitFor(actor, (s) => s.matches({ running: 'waiting' }) && s.context.cursor === cursor, WAIT),
  };
}

const execs = (h: Harness) => h.log.filter((l) => l.startsWith('exec ')).map((l) => l.slice(5));

/** 1F1B, p=3, m=4, the middle stage: one warm-up forward, then F/B pairs, then the last backward. */
const MIDDLE_1F1B = 'F0 F1 B0 F2 B1 F3 B2 B3';

describe('stageMachine: a step', () => {
  it('runs a middle 1F1B stage (p=3, m=4) in action-list order, waiting for each missing frame', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    await h.waitingAt(0);
    expect(execs(h)).toEqual([]);

    // B0 and F1 arrive before F0: they are kept, and nothing runs until F0 is there.
    const b0 = bwd(0);
    const f1 = fwd(1);
    h.send(b0, f1);
    let s = await h.waitingAt(0);
    expect(Object.keys(s.context.inbox).sort()).toEqual(['BACKWARD:0', 'FORWARD:1']);
    expect(execs(h)).toEqual([]);

    const f0 = fwd(0);
    h.send(f0);
    s = await h.waitingAt(3); // F0 F1 B0 ran; F2 needs FORWARD:2
    expect(execs(h)).toEqual(['1F0', '1F1', '1B0']);
    expect(h.executed.map((e) => e.frames)).toEqual([[f0], [f1], [b0]]);
    expect(h.executed[0]!.frames[0]).toBe(f0);
    expect(s.context.held).toBe(1);
    expect(s.context.consumed).toEqual(['FORWARD:0', 'FORWARD:1', 'BACKWARD:0']);

    h.send(fwd(2), fwd(3));
    await h.waitingAt(4); // F2 ran; B1 is missing (F3 waits in the inbox behind it)
    expect(execs(h)).toEqual(['1F0', '1F1', '1B0', '1F2']);

    h.send(bwd(2));
    s = await h.waitingAt(4);
    expect(execs(h)).toHaveLength(4);
    expect(Object.keys(s.context.inbox).sort()).toEqual(['BACKWARD:2', 'FORWARD:3']);

    h.send(bwd(1));
    await h.waitingAt(7); // B1 F3 B2 ran; B3 is missing
    expect(execs(h)).toEqual(['1F0', '1F1', '1B0', '1F2', '1B1', '1F3', '1B2']);
    expect(h.log).not.toContain('done 1 peak 2');

    h.send(bwd(3));
    s = await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    expect(execs(h)).toEqual(MIDDLE_1F1B.split(' ').map((a) => `1${a}`));
    expect(s.context.peakHeld).toBe(2); // p - r for 1F1B
    expect(h.log.at(-1)).toBe('done 1 peak 2');

    // An UPDATE of another step is ignored.
    h.actor.send({ type: 'UPDATE', step: 0 });
    h.actor.send({ type: 'UPDATE', step: 2 });
    expect(h.actor.getSnapshot().value).toBe('awaitingUpdate');
    expect(h.log).not.toContain('update 1');

    h.actor.send({ type: 'UPDATE', step: 1 });
    s = await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.log.slice(-3)).toEqual(['done 1 peak 2', 'update 1', 'updated 1']);
    expect(s.context).toMatchObject({ step: 1, plan: null, actions: [], cursor: 0, inbox: {}, consumed: [], held: 0 });
    expect(h.rejects).toEqual([]);
    expect(h.log).not.toContain('reset');
  });

  it('runs the action list order whatever order the frames come in', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    // Every frame of the step, in reverse.
    h.send(bwd(3), bwd(2), bwd(1), bwd(0), fwd(3), fwd(2), fwd(1), fwd(0));
    await waitFor(h.actor, (s) => s.matches('awaitingUpdate'), WAIT);
    expect(execs(h)).toEqual(['1F0', '1F1', '1B0', '1F2', '1B1', '1F3', '1B2', '1B3']);
    expect(h.executed.map((e) => e.frames.map((f) => `${f.key.phase}:${f.key.microbatch}`))).toEqual([
      ['FORWARD:0'],
      ['FORWARD:1'],
      ['BACKWARD:0'],
      ['FORWARD:2'],
      ['BACKWARD:1'],
      ['FORWARD:3'],
      ['BACKWARD:2'],
      ['BACKWARD:3'],
    ]);
    expect(h.log.at(-1)).toBe('done 1 peak 2');
  });

  it('GPipe last stage: F needs FORWARD and the INPUT labels (in needs order), B needs nothing new', async () => {
    const h = await harness({ rank: 2, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan('F0 F1 B0 B1', { microbatches: 2, batchSize: 4 }) });
    const f0 = fwd(0);
    h.send(f0);
    await h.waitingAt(0); // the labels of microbatch 0 are missing
    const y0 = yInput(0);
    h.send(y0, yInput(1));
    await h.waitingAt(1);
    h.send(fwd(1));
    const s = await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    expect(execs(h)).toEqual(['2F0', '2F1', '2B0', '2B1']);
    expect(h.executed[0]!.frames).toEqual([f0, y0]);
    expect(h.executed[2]!.frames).toEqual([]);
    expect(s.context.peakHeld).toBe(2); // GPipe holds m
    expect(h.rejects).toEqual([]);
  });

  it('a forward-only plan goes back to idle after its last action, without UPDATE', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan('F0 F1', { microbatches: 2, batchSize: 4, forwardOnly: true }) });
    h.send(fwd(0), fwd(1));
    const s = await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.log).toEqual(['exec 1F0', 'exec 1F1', 'done 1 peak 0']);
    expect(s.context.plan).toBeNull();
    // Then the next step starts normally.
    h.actor.send({ type: 'STEP', plan: plan('F0', { step: 2, microbatches: 1, batchSize: 2, forwardOnly: true }) });
    h.send(fwd(0, 2));
    await waitFor(h.actor, (x) => x.matches('idle') && x.context.step === 2, WAIT);
    expect(h.log.slice(3)).toEqual(['exec 1F0', 'done 2 peak 0']);
  });

  it('an UPDATE of its step while it runs (the grant to the last stage running) is applied as the list ends, without awaiting another', async () => {
    const gate = deferred<void>();
    const h = await harness({ rank: 2, stages: 3 }, { execute: (ex) => (ex.action.kind === 'F' ? gate.promise : Promise.resolve()) });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0), yInput(0));
    await vi.waitFor(() => expect(h.log).toContain('exec 2F0'));
    h.actor.send({ type: 'UPDATE', step: 2 }); // another step's: ignored
    expect(h.actor.getSnapshot().context.updateGranted).toBe(false);
    h.actor.send({ type: 'UPDATE', step: 1 });
    h.actor.send({ type: 'UPDATE', step: 1 }); // a second one changes nothing
    expect(h.actor.getSnapshot().context.updateGranted).toBe(true);
    expect(h.log).not.toContain('update 1'); // not before the list ends
    gate.resolve();
    const s = await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.log).toEqual(['exec 2F0', 'exec 2B0', 'done 1 peak 1', 'update 1', 'updated 1']);
    expect(s.context.updateGranted).toBe(false);

    // A forward-only step takes no grant: it ends without an update.
    h.actor.send({ type: 'STEP', plan: plan('F0', { step: 2, microbatches: 1, batchSize: 2, forwardOnly: true }) });
    h.actor.send({ type: 'UPDATE', step: 2 });
    expect(h.actor.getSnapshot().context.updateGranted).toBe(false);
    h.send(fwd(0, 2), yInput(0, 2));
    await waitFor(h.actor, (x) => x.matches('idle') && x.context.step === 2, WAIT);
    expect(h.log.slice(5)).toEqual(['exec 2F0', 'done 2 peak 0']);
  });

  it(`a plan that grants the UPDATE (a lone stage's) is applied as the list ends, also for a queued step; \
a forward-only plan's grant counts for nothing`, async () => {
    const gate = deferred<void>();
    const h = await harness({ rank: 0, stages: 1 }, { execute: (ex) => (ex.plan.step === 1 && ex.action.kind === 'B' ? gate.promise : Promise.resolve()) });
    const xy = (step: number) => frame(Phase.INPUT, 0, [tensor('x0', [2, 3]), tensor('y0', [2, 4])], step);
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2, granted: true }) });
    expect(h.actor.getSnapshot().context.updateGranted).toBe(true);
    h.send(xy(1));
    await vi.waitFor(() => expect(h.log).toContain('exec 0B0'));
    // Step 2 is queued while step 1 computes; its plan grants too.
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 2, microbatches: 1, batchSize: 2, granted: true }) });
    h.send(xy(2));
    gate.resolve();
    await waitFor(h.actor, (x) => x.matches('idle') && x.context.step === 2, WAIT);
    expect(h.log).toEqual(['exec 0F0', 'exec 0B0', 'done 1 peak 1', 'update 1', 'updated 1', 'exec 0F0', 'exec 0B0', 'done 2 peak 1', 'update 2', 'updated 2']);

    // A forward-only plan that grants an update is refused (its grant would count for nothing): the stage stays idle.
    h.actor.send({ type: 'STEP', plan: plan('F0', { step: 3, microbatches: 1, batchSize: 2, forwardOnly: true, granted: true }) });
    expect(h.refusals).toEqual(['step FRAME: plan of step 3 grants an UPDATE, but the step applies none (evaluation, prediction or accumulation)']);
    expect(h.actor.getSnapshot().value).toBe('idle');
    expect(h.actor.getSnapshot().context.step).toBe(2);
    expect(h.log).toHaveLength(10);
  });
});

/** Rank 1 of 3 in step 1 of MIDDLE_1F1B, computing F0, which waits for `gate`; every later action runs at once. */
async function computingF0(): Promise<{ h: Harness; gate: ReturnType<typeof deferred<void>> }> {
  const gate = deferred<void>();
  const h = await harness({ rank: 1, stages: 3 }, { execute: (ex) => (formatAction(ex.action) === '1F0' ? gate.promise : Promise.resolve()) });
  h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
  h.send(fwd(0));
  await waitFor(h.actor, (s) => s.matches({ running: 'computing' }), WAIT);
  return { h, gate };
}

describe('stageMachine: runs of ready actions', () => {
  it('runs every action whose frames are in as one run: one start, one end, held counted action by action', async () => {
    const { h, gate } = await computingF0();
    expect(h.actor.getSnapshot().context).toMatchObject({ cursor: 0, run: 1 });
    // Everything else comes while F0 computes.
    h.send(fwd(1), fwd(2), fwd(3), bwd(0), bwd(1), bwd(2), bwd(3));
    gate.resolve();
    const s = await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    expect(h.runs).toEqual(['1F0', '1F1 1B0 1F2 1B1 1F3 1B2 1B3']);
    expect(execs(h)).toEqual(MIDDLE_1F1B.split(' ').map((a) => `1${a}`));
    // Each action got its own frames.
    expect(h.executed.map((ex) => ex.frames.map((f) => `${f.key.phase}:${f.key.microbatch}`).join())).toEqual([
      'FORWARD:0',
      'FORWARD:1',
      'BACKWARD:0',
      'FORWARD:2',
      'BACKWARD:1',
      'FORWARD:3',
      'BACKWARD:2',
      'BACKWARD:3',
    ]);
    // F0 F1 held two microbatches at once, as action by action.
    expect(h.log).toContain('done 1 peak 2');
    expect(s.context).toMatchObject({ cursor: 8, run: 0, inbox: {}, held: 0, peakHeld: 2 });
    expect(s.context.consumed).toHaveLength(8);
  });

  it('a run stops at the first action whose frame is missing', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    // F0 F1 B0 are ready, F2 is not (B1 is here, but after it).
    h.send(bwd(1));
    h.send(bwd(0));
    h.send(fwd(1));
    h.send(fwd(0));
    await h.waitingAt(3);
    expect(h.runs).toEqual(['1F0 1F1 1B0']);
    h.send(fwd(2));
    await h.waitingAt(5);
    expect(h.runs).toEqual(['1F0 1F1 1B0', '1F2 1B1']);
  });

  it('an end that does not fit the run (another index, a count beyond it) is ignored', async () => {
    const gate = deferred<void>();
    const h = await harness({ rank: 1, stages: 3 }, { execute: () => gate.promise });
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    h.send(fwd(0), fwd(1));
    await waitFor(h.actor, (s) => s.matches({ running: 'computing' }), WAIT);
    h.actor.send({ type: 'ACTION_DONE', step: 1, index: 0, count: 2 });
    h.actor.send({ type: 'ACTION_DONE', step: 1, index: 1, count: 1 });
    h.actor.send({ type: 'ACTION_FAILED', step: 1, index: 0, count: 1, error: new Error('late') });
    expect(h.actor.getSnapshot().matches({ running: 'computing' })).toBe(true);
    expect(h.actor.getSnapshot().context).toMatchObject({ cursor: 0, run: 1 });
    gate.resolve();
    await h.waitingAt(2);
    expect(h.errors).toEqual([]);
  });
});

describe('stageMachine: refused frames', () => {
  /** Starts step 1 of the middle stage and returns the harness. */
  async function middle(p: StepPlan = plan(MIDDLE_1F1B)): Promise<Harness> {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: p });
    await h.waitingAt(0);
    return h;
  }

  /** Feeds every frame the middle stage needs in step `step` (skipping `skip`) and waits for the end of the action list. */
  async function finish(h: Harness, skip: string[] = [], step = 1): Promise<void> {
    for (let mb = 0; mb < 4; mb++) {
      if (!skip.includes(`FORWARD:${mb}`)) h.send(fwd(mb, step));
      if (!skip.includes(`BACKWARD:${mb}`)) h.send(bwd(mb, step));
    }
    await waitFor(h.actor, (s) => s.matches('awaitingUpdate') && s.context.step === step, WAIT);
    expect(execs(h).slice(-8)).toEqual(MIDDLE_1F1B.split(' ').map((a) => `1${a}`));
  }

  function expectRejects(h: Harness, classes: (new (m: string) => TroupeError)[], frames: Frame[]): void {
    expect(h.rejects.map((r) => r.error.constructor)).toEqual(classes);
    h.rejects.forEach((r, i) => {
      expect(r.error).toBeInstanceOf(classes[i]!);
      expect(r.frame).toBe(frames[i]);
    });
    expect(h.actor.getSnapshot().context.rejected).toBe(classes.length);
  }

  it('a duplicate key, still in the inbox or already consumed (DuplicateKeyError)', async () => {
    const h = await middle();
    const f1 = fwd(1);
    const dupInbox = fwd(1);
    h.send(f1, dupInbox);
    h.send(fwd(0));
    await h.waitingAt(2); // F0 F1 ran, B0 missing
    const dupConsumed = fwd(0);
    h.send(dupConsumed);
    expectRejects(h, [DuplicateKeyError, DuplicateKeyError], [dupInbox, dupConsumed]);
    expect(h.rejects.map((r) => r.error.code)).toEqual(['DUPLICATE_KEY', 'DUPLICATE_KEY']);
    expect(h.executed[1]!.frames[0]).toBe(f1); // the first copy is the one used
    expect(h.actor.getSnapshot().matches({ running: 'waiting' })).toBe(true);
    await finish(h, ['FORWARD:0', 'FORWARD:1']);
  });

  it('a frame of an earlier step (StaleStepError), of a later step or another job (UnexpectedFrameError)', async () => {
    const h = await middle();
    await finish(h);
    h.actor.send({ type: 'UPDATE', step: 1 });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B, { step: 2 }) });
    await h.waitingAt(0);
    const stale = fwd(0, 1);
    const future = fwd(0, 3);
    const otherJob = frame(Phase.FORWARD, 0, [tensor('t0', [2, 3])], 2, 'other');
    h.send(stale, future, otherJob);
    expectRejects(h, [StaleStepError, UnexpectedFrameError, UnexpectedFrameError], [stale, future, otherJob]);
    expect(h.rejects[0]!.error.code).toBe('STALE_STEP');
    expect(h.rejects[0]!.error.message).toContain('j/1/0/FORWARD');
    await finish(h, [], 2);
  });

  it('a frame while no step runs is refused', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    const f = fwd(0);
    h.send(f);
    expectRejects(h, [UnexpectedFrameError], [f]);
    expect(h.actor.getSnapshot().value).toBe('idle');
  });

  it('a microbatch out of range (UnexpectedFrameError)', async () => {
    const h = await middle();
    const out = fwd(4);
    h.send(out);
    expectRejects(h, [UnexpectedFrameError], [out]);
    expect(h.rejects[0]!.error.message).toMatch(/outside 0\.\.3/);
    await finish(h);
  });

  it('a phase the rank never receives (UnexpectedFrameError)', async () => {
    // BACKWARD to the last stage.
    const last = await harness({ rank: 2, stages: 3 });
    last.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    const b = bwd(0);
    last.send(b);
    expectRejects(last, [UnexpectedFrameError], [b]);
    last.send(fwd(0), yInput(0));
    await waitFor(last.actor, (s) => s.matches('awaitingUpdate'), WAIT);
    expect(execs(last)).toEqual(['2F0', '2B0']);

    // FORWARD to stage 0.
    const first = await harness({ rank: 0, stages: 3, inputs: IN, outputs: IN });
    first.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    const f = fwd(0);
    first.send(f);
    expectRejects(first, [UnexpectedFrameError], [f]);
    first.send(xInput(0), frame(Phase.BACKWARD, 0, [tensor('t0', [2, 3])]));
    await waitFor(first.actor, (s) => s.matches('awaitingUpdate'), WAIT);
    expect(execs(first)).toEqual(['0F0', '0B0']);

    // INPUT to a middle stage, BACKWARD when evaluating.
    const mid = await middle(plan('F0', { microbatches: 1, batchSize: 2, forwardOnly: true }));
    const i = xInput(0);
    const bEval = bwd(0);
    mid.send(i, bEval);
    expectRejects(mid, [UnexpectedFrameError, UnexpectedFrameError], [i, bEval]);
    mid.send(fwd(0));
    await waitFor(mid.actor, (s) => s.matches('idle'), WAIT);
    expect(execs(mid)).toEqual(['1F0']);
  });

  it('wrong shape, dtype, tensor count or batch (ShapeError); the right frame for the slot is still taken', async () => {
    const h = await middle();
    const bad = [
      frame(Phase.FORWARD, 0, [tensor('t0', [2, 4])]), // wrong width
      frame(Phase.FORWARD, 0, [tensor('t0', [2, 3], 'int32')]), // wrong dtype
      frame(Phase.FORWARD, 0, [tensor('t0', [2, 3]), tensor('t1', [2, 3])]), // two tensors
      frame(Phase.FORWARD, 0, []), // none
      frame(Phase.FORWARD, 0, [tensor('t0', [3, 3])]), // wrong batch
      frame(Phase.FORWARD, 0, [tensor('t0', [6])]), // wrong rank
      frame(Phase.BACKWARD, 0, [tensor('t0', [2, 3])]), // gradient shaped like the input
    ];
    h.send(...bad);
    expectRejects(
      h,
      bad.map(() => ShapeError),
      bad,
    );
    expect(h.rejects.every((r) => r.error.code === 'SHAPE')).toBe(true);
    const s = await h.waitingAt(0);
    expect(s.context.inbox).toEqual({});
    expect(s.context.consumed).toEqual([]);
    // Nothing was lost: the well-formed frames of the same slots are accepted.
    await finish(h);
    expect(h.rejects).toHaveLength(bad.length);
  });

  it('INPUT frames: stage 0 takes no labels, the last stage needs labels', async () => {
    const first = await harness({ rank: 0, stages: 2 });
    first.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    const withLabels = frame(Phase.INPUT, 0, [tensor('x0', [2, 3]), tensor('y0', [2, 4])]);
    const badName = frame(Phase.INPUT, 0, [tensor('z0', [2, 3])]);
    first.send(withLabels, badName);
    expectRejects(first, [ShapeError, ShapeError], [withLabels, badName]);

    const last = await harness({ rank: 1, stages: 2 });
    last.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    const noLabels = frame(Phase.INPUT, 0, [tensor('x0', [2, 3])]);
    const wrongBatch = frame(Phase.INPUT, 0, [tensor('y0', [3, 4])]);
    last.send(noLabels, wrongBatch);
    expectRejects(last, [ShapeError, ShapeError], [noLabels, wrongBatch]);
    last.send(yInput(0), fwd(0));
    await waitFor(last.actor, (s) => s.matches('awaitingUpdate'), WAIT);
    expect(execs(last)).toEqual(['1F0', '1B0']);
  });

  it('frames refused while an action computes are reported too, and accepted ones kept', async () => {
    const { h, gate } = await computingF0();
    const dup = fwd(0);
    const f1 = fwd(1);
    h.send(dup, f1);
    expectRejects(h, [DuplicateKeyError], [dup]);
    expect(h.actor.getSnapshot().context.inbox['FORWARD:1']).toBe(f1);
    gate.resolve();
    await h.waitingAt(2);
    expect(execs(h)).toEqual(['1F0', '1F1']);
  });
});

describe('stageMachine: conflicting frames (#20 item 1)', () => {
  /** A frame like `f` whose first element differs. */
  const altered = (f: Frame): Frame => {
    const data = new Float32Array(f.tensors[0]!.data as Float32Array);
    data[0] = 7;
    return { ...f, tensors: [{ ...f.tensors[0]!, data }] };
  };

  it("a frame with other bytes for a held slot: reported as the step's failure, neither kept, and the slot takes no more", async () => {
    const { h, gate } = await computingF0();
    const held = fwd(1);
    const other = altered(held);
    h.send(held, other);
    expect(h.conflicts).toHaveLength(1);
    expect(h.conflicts[0]!.step).toBe(1);
    expect(h.conflicts[0]!.error).toBeInstanceOf(ConflictingFrameError);
    expect(h.conflicts[0]!.error.message).toMatch(/j\/1\/1\/FORWARD from test: received twice with different bytes; neither is used, and step 1 fails/);
    expect(h.conflicts[0]!.frames).toEqual([held, other]);
    // Neither is kept; a third copy (either one) is refused, not used.
    expect(h.actor.getSnapshot().context.inbox['FORWARD:1']).toBeUndefined();
    const third = fwd(1);
    h.send(third);
    expect(h.rejects.map((r) => [r.error.constructor, r.frame])).toEqual([[DuplicateKeyError, third]]);
    gate.resolve();
    await h.waitingAt(1); // F1 never runs: its frame is gone
    expect(execs(h)).toEqual(['1F0']);
    h.actor.send({ type: 'ABORT' });
    await waitFor(h.actor, (s) => s.matches('idle'), WAIT);
  });

  it('the same bytes again are a harmless duplicate: refused, and the held frame is used', async () => {
    const { h, gate } = await computingF0();
    const held = fwd(1);
    const copy = fwd(1); // another object, the same bytes
    h.send(held, copy);
    expect(h.conflicts).toEqual([]);
    expect(h.rejects.map((r) => [r.error.constructor, r.frame])).toEqual([[DuplicateKeyError, copy]]);
    gate.resolve();
    await h.waitingAt(2);
    expect(h.executed[1]!.frames[0]).toBe(held);
  });

  it("a conflict in the queued step drops that step (its frames are refused from then on) and reports it as that step's failure", async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    await h.waitingAt(0);
    h.actor.send({ type: 'STEP', plan: plan('F0 F1 B0 B1', { step: 2, microbatches: 2, batchSize: 4 }) });
    const early = fwd(0, 2);
    h.send(early, altered(early));
    expect(h.conflicts.map((c) => [c.step, c.error.code])).toEqual([[2, 'CONFLICTING_FRAME']]);
    let s = h.actor.getSnapshot();
    expect(s.context.next).toBeNull();
    expect(s.context.early).toEqual({});
    h.send(fwd(1, 2));
    expect(h.rejects.map((r) => r.error.constructor)).toEqual([UnexpectedFrameError]);
    // Step 1 goes on untouched, and no step 2 follows its update.
    h.send(fwd(0), bwd(0));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    h.actor.send({ type: 'UPDATE', step: 1 });
    s = await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(s.context.step).toBe(1);
    expect(execs(h)).toEqual(['1F0', '1B0']);
  });
});

describe('stageMachine: failures and aborts', () => {
  it('an execute that rejects: failed, reportError names the action; ABORT resets and returns to idle', async () => {
    const h = await harness(
      { rank: 1, stages: 3 },
      {
        execute: async (ex) => {
          if (formatAction(ex.action) === '1F2') throw new ShapeError('boom');
        },
      },
    );
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    h.send(fwd(0), fwd(1), bwd(0), fwd(2));
    const s = await waitFor(h.actor, (x) => x.matches('failed'), WAIT);
    expect(execs(h)).toEqual(['1F0', '1F1', '1B0', '1F2']);
    // F2 failed inside the run F1 B0 F2: the two before it count as done.
    expect(h.runs).toEqual(['1F0', '1F1 1B0 1F2']);
    expect(s.context.cursor).toBe(3);
    expect(h.errors).toHaveLength(1);
    expect(h.errors[0]!.step).toBe(1);
    expect(h.errors[0]!.failure).toEqual({ key: 'j/1/1F2', code: 'SHAPE', message: 'boom' });
    expect(h.errors[0]!.failure.key).toContain('/1F2');
    expect(s.context.error).toEqual(h.errors[0]!.failure);
    expect(h.log).not.toContain('reset');

    // Frames keep being judged in the failed state; the actor stays up.
    h.send(bwd(1));
    expect(h.actor.getSnapshot().value).toBe('failed');

    h.actor.send({ type: 'ABORT' });
    const idle = await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.log.slice(-2)).toEqual(['error j/1/1F2', 'reset']);
    expect(idle.context).toMatchObject({ plan: null, inbox: {}, consumed: [], cursor: 0, held: 0 });

    // The next step runs from a clean slate.
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 2, microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0, 2), bwd(0, 2));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate') && x.context.step === 2, WAIT);
    expect(execs(h).slice(-2)).toEqual(['1F0', '1B0']);
  });

  it('an error without a code is reported as COMPUTE with its message', async () => {
    const h = await harness({ rank: 2, stages: 3 }, { execute: () => Promise.reject(new Error('nan loss')) });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 5, microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0, 5), yInput(0, 5));
    await waitFor(h.actor, (x) => x.matches('failed'), WAIT);
    expect(h.errors).toEqual([{ step: 5, failure: { key: 'j/5/2F0', code: 'COMPUTE', message: 'nan loss' } }]);
  });

  it('a failing update: failed with key .../UPDATE', async () => {
    const h = await harness({ rank: 2, stages: 3 }, { update: () => Promise.reject(new Error('optimizer')) });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0), yInput(0));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    h.actor.send({ type: 'UPDATE', step: 1 });
    await waitFor(h.actor, (x) => x.matches('failed'), WAIT);
    expect(h.errors).toEqual([{ step: 1, failure: { key: 'j/1/UPDATE', code: 'COMPUTE', message: 'optimizer' } }]);
    expect(h.log).not.toContain('updated 1');
  });

  it('a synchronous update ends within the UPDATE event: updated, and the queued step begun; one that throws fails the stage', async () => {
    let fail = false;
    const h = await harness(
      { rank: 2, stages: 3 },
      {
        syncUpdate: () => {
          if (fail) throw new Error('optimizer');
        },
      },
    );
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0), yInput(0));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 2, microbatches: 1, batchSize: 2 }) });
    h.actor.send({ type: 'UPDATE', step: 1 });
    // No promise to wait for: once send returns, step 1 is applied and step 2 waits for its frames.
    expect(h.actor.getSnapshot().matches({ running: 'waiting' })).toBe(true);
    expect(h.actor.getSnapshot().context.step).toBe(2);
    expect(h.log).toEqual(['exec 2F0', 'exec 2B0', 'done 1 peak 1', 'update 1', 'updated 1']);
    fail = true;
    h.send(fwd(0, 2), yInput(0, 2));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    h.actor.send({ type: 'UPDATE', step: 2 });
    expect(h.actor.getSnapshot().value).toBe('failed');
    expect(h.errors).toEqual([{ step: 2, failure: { key: 'j/2/UPDATE', code: 'COMPUTE', message: 'optimizer' } }]);
  });

  it('ABORT while an action computes waits for it, then resets and goes idle without running more', async () => {
    const gate = deferred<void>();
    const started = deferred<void>();
    const h = await harness(
      { rank: 1, stages: 3 },
      {
        execute: (ex) => {
          if (formatAction(ex.action) !== '1F1') return Promise.resolve();
          started.resolve();
          return gate.promise;
        },
      },
    );
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    h.send(fwd(0), fwd(1), bwd(0), fwd(2));
    // F0 ran alone (the other frames came after it started); F1, B0 and F2 make the next run.
    await started.promise;
    expect(h.actor.getSnapshot().context).toMatchObject({ cursor: 1, run: 3 });
    h.actor.send({ type: 'ABORT' });
    let s = h.actor.getSnapshot();
    expect(s.matches({ running: 'computing' })).toBe(true);
    expect(s.context.abortRequested).toBe(true);
    expect(h.log).not.toContain('reset');

    gate.resolve();
    s = await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.log).toEqual(['exec 1F0', 'exec 1F1', 'reset']); // B0 and F2 were ready but not run
    expect(h.runs).toEqual(['1F0', '1F1 1B0 1F2']);
    expect(s.context).toMatchObject({ abortRequested: false, inbox: {}, consumed: [], plan: null });
  });

  it('ABORT while computing, then the action fails: still ends idle (the abort is not lost)', async () => {
    const gate: Deferred<void> = deferred<void>();
    const h = await harness({ rank: 1, stages: 3 }, { execute: () => gate.promise });
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    h.send(fwd(0));
    await waitFor(h.actor, (s) => s.matches({ running: 'computing' }), WAIT);
    await vi.waitFor(() => expect(h.log).toContain('exec 1F0')); // the action runs (a turn of the event loop after computing began)
    h.actor.send({ type: 'ABORT' });
    gate.reject(new Error('late failure'));
    const s = await waitFor(h.actor, (x) => x.matches('idle') || x.matches('failed'), WAIT);
    expect(s.value).toBe('idle');
    expect(h.log).toContain('reset');
    expect(s.context.abortRequested).toBe(false);
  });

  it('ABORT while updating: a successful update still ends idle and reported; a failing one ends idle too', async () => {
    for (const fails of [false, true]) {
      const gate = deferred<void>();
      const h = await harness({ rank: 2, stages: 3 }, { update: () => gate.promise });
      h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
      h.send(fwd(0), yInput(0));
      await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
      h.actor.send({ type: 'UPDATE', step: 1 });
      expect(h.actor.getSnapshot().value).toBe('updating');
      h.actor.send({ type: 'ABORT' });
      expect(h.actor.getSnapshot().value).toBe('updating');
      if (fails) gate.reject(new Error('update failed'));
      else gate.resolve();
      const s = await waitFor(h.actor, (x) => x.matches('idle') || x.matches('failed'), WAIT);
      expect(s.value).toBe('idle');
      expect(s.context.abortRequested).toBe(false);
      expect(h.log.slice(-1)).toEqual([fails ? 'reset' : 'updated 1']);
      expect(h.errors).toEqual([]);
    }
  });

  it('ABORT while waiting or awaiting UPDATE resets and returns to idle', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    h.send(fwd(1));
    await h.waitingAt(0);
    h.actor.send({ type: 'ABORT' });
    let s = h.actor.getSnapshot();
    expect(s.value).toBe('idle');
    expect(s.context.inbox).toEqual({});
    expect(h.log).toEqual(['reset']);

    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 2, microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0, 2), bwd(0, 2));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    h.actor.send({ type: 'ABORT' });
    s = h.actor.getSnapshot();
    expect(s.value).toBe('idle');
    expect(h.log).toEqual(['reset', 'exec 1F0', 'exec 1B0', 'done 2 peak 1', 'reset']);
    // A late UPDATE of the aborted step does nothing.
    h.actor.send({ type: 'UPDATE', step: 2 });
    expect(h.actor.getSnapshot().value).toBe('idle');
    expect(h.log).not.toContain('update 2');
  });

  it('STOP ends the actor from any state and resets compute', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan(MIDDLE_1F1B) });
    await h.waitingAt(0);
    h.actor.send({ type: 'STOP' });
    const s = h.actor.getSnapshot();
    expect(s.status).toBe('done');
    expect(s.value).toBe('stopped');
    expect(h.log).toEqual(['reset']);
  });
});

describe('stageMachine: a step queued behind the update (overlapped steps)', () => {
  /** A middle stage (p=3) that has run step 1 of 'F0 B0' and awaits its UPDATE. */
  async function awaitingUpdate(o: HarnessOptions = {}): Promise<Harness> {
    const h = await harness({ rank: 1, stages: 3 }, o);
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0), bwd(0));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    return h;
  }
  const step2 = plan('F0 F1 B0 B1', { step: 2, microbatches: 2, batchSize: 4 });

  it('a plan sent while awaiting UPDATE waits; its early frames are kept apart and used once the update is applied', async () => {
    const gate = deferred<void>();
    const h = await awaitingUpdate({ update: () => gate.promise });
    h.actor.send({ type: 'STEP', plan: step2 });
    let s = h.actor.getSnapshot();
    expect(s.value).toBe('awaitingUpdate');
    expect(s.context.next?.step).toBe(2);
    // Frames of step 2 come before step 1's update is applied: judged against step 2's plan, kept in `early`.
    const f0 = fwd(0, 2);
    h.send(f0, fwd(1, 2));
    s = h.actor.getSnapshot();
    expect(Object.keys(s.context.early).sort()).toEqual(['FORWARD:0', 'FORWARD:1']);
    expect(s.context.inbox).toEqual({});
    h.actor.send({ type: 'UPDATE', step: 1 });
    expect(h.actor.getSnapshot().value).toBe('updating');
    h.send(bwd(1, 2)); // during the update too
    expect(execs(h)).toEqual(['1F0', '1B0']);
    gate.resolve();
    s = await h.waitingAt(2); // F0 F1 ran from the early frames; B0 has not come
    expect(s.context.step).toBe(2);
    expect(s.context.next).toBeNull();
    expect(s.context.early).toEqual({});
    expect(execs(h)).toEqual(['1F0', '1B0', '1F0', '1F1']);
    expect(h.executed[2]!.frames).toEqual([f0]);
    // Step 1's update was reported before step 2 ran anything.
    expect(h.log.indexOf('updated 1')).toBeLessThan(h.log.lastIndexOf('exec 1F0'));
    h.send(bwd(0, 2));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate') && x.context.step === 2, WAIT);
    expect(h.log.at(-1)).toBe('done 2 peak 2');
    expect(h.rejects).toEqual([]);
  });

  it("a plan sent while the stage still runs its step is queued too, and runs after that step's update", async () => {
    const h = await harness({ rank: 1, stages: 3 });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    await h.waitingAt(0);
    h.actor.send({ type: 'STEP', plan: step2 });
    h.send(fwd(0, 2));
    let s = h.actor.getSnapshot();
    expect(s.matches({ running: 'waiting' })).toBe(true);
    expect(s.context.step).toBe(1);
    expect(s.context.next?.step).toBe(2);
    expect(Object.keys(s.context.early)).toEqual(['FORWARD:0']);
    h.send(fwd(0), bwd(0));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    expect(execs(h)).toEqual(['1F0', '1B0']);
    h.actor.send({ type: 'UPDATE', step: 1 });
    s = await h.waitingAt(1); // step 2's F0 ran from its early frame; F1 waits
    expect(s.context.step).toBe(2);
    expect(execs(h)).toEqual(['1F0', '1B0', '1F0']);
  });

  it('early frames are judged against the queued plan: a wrong shape, a duplicate, a step beyond it are refused', async () => {
    const h = await awaitingUpdate();
    h.actor.send({ type: 'STEP', plan: step2 });
    h.send(fwd(0, 2, 3), fwd(0, 2), fwd(0, 2), fwd(0, 3), fwd(5, 2));
    expect(h.rejects.map((r) => r.error.constructor)).toEqual([ShapeError, DuplicateKeyError, UnexpectedFrameError, UnexpectedFrameError]);
    expect(Object.keys(h.actor.getSnapshot().context.early)).toEqual(['FORWARD:0']);
  });

  it('one step queues at most, and only a later one', async () => {
    const h = await awaitingUpdate();
    h.actor.send({ type: 'STEP', plan: step2 });
    h.actor.send({ type: 'STEP', plan: { ...step2, step: 3 } });
    expect(h.actor.getSnapshot().context.next?.step).toBe(2);
    const g = await awaitingUpdate();
    g.actor.send({ type: 'STEP', plan: { ...step2, step: 1 } });
    expect(g.actor.getSnapshot().context.next).toBeNull();
  });

  it('ABORT of the running step drops the queued one; DROP_NEXT drops only the queued one', async () => {
    const h = await awaitingUpdate();
    h.actor.send({ type: 'STEP', plan: step2 });
    h.send(fwd(0, 2));
    h.actor.send({ type: 'ABORT' });
    let s = h.actor.getSnapshot();
    expect(s.value).toBe('idle');
    expect(s.context.next).toBeNull();
    expect(s.context.early).toEqual({});

    const g = await awaitingUpdate();
    g.actor.send({ type: 'STEP', plan: step2 });
    g.send(fwd(0, 2));
    g.actor.send({ type: 'DROP_NEXT' });
    s = g.actor.getSnapshot();
    expect(s.value).toBe('awaitingUpdate');
    expect(s.context.next).toBeNull();
    expect(s.context.early).toEqual({});
    g.actor.send({ type: 'UPDATE', step: 1 });
    s = await waitFor(g.actor, (x) => x.matches('idle'), WAIT);
    expect(s.context.step).toBe(1); // nothing queued runs
    expect(g.log.at(-1)).toBe('updated 1');
  });
});

describe('stageMachine: refusals it decides and reports (#21 item 2)', () => {
  const gated = async () => {
    const gate = deferred<void>();
    const h = await harness({ rank: 1, stages: 3 }, { execute: () => gate.promise });
    return { h, gate };
  };

  it('a plan: refused when over, when one already waits, when failed, and when the plan itself is wrong; each refusal names why', async () => {
    const h = await harness({ rank: 1, stages: 3 });
    const p = (over: Partial<StepPlan>) => plan('F0 B0', { microbatches: 1, batchSize: 2, ...over });
    // Idle: a plan that is wrong in itself, whatever the state.
    h.actor.send({ type: 'STEP', plan: p({ totalBatch: 1 }) });
    h.actor.send({ type: 'STEP', plan: p({ batchSize: 1, microbatches: 2 }) });
    h.actor.send({ type: 'STEP', plan: p({ actions: 'F0 X9' }) });
    h.actor.send({ type: 'STEP', plan: p({ order: '0 1 2' }) });
    h.actor.send({ type: 'STEP', plan: p({ order: '0 1' }) }); // a device order, but no shared device
    expect(h.refusals).toEqual([
      'step FRAME: plan totalBatch 1 must be an integer of at least batchSize 2',
      'step CONFIG: a batch of 1 examples cannot be split into 2 microbatches',
      'step SCHEDULE: "1X9" is not an action like 1F0',
      'step FRAME: stage 1: plan order "0 1 2" must give one device position per action (2)',
      'step STATE: stage 1 got a device order but shares no device',
    ]);
    expect(h.actor.getSnapshot().value).toBe('idle');
    h.refusals.length = 0;

    // Running step 1 with step 2 queued: an old step, a second queued one, and a wrong plan to queue.
    h.actor.send({ type: 'STEP', plan: p({}) });
    h.actor.send({ type: 'STEP', plan: p({ step: 1 }) });
    h.actor.send({ type: 'STEP', plan: p({ step: 2, totalBatch: 0 }) });
    h.actor.send({ type: 'STEP', plan: p({ step: 2 }) });
    h.actor.send({ type: 'STEP', plan: p({ step: 3 }) });
    expect(h.refusals).toEqual([
      'step STALE_STEP: step 1 is not after step 1',
      'step FRAME: plan totalBatch 0 must be an integer of at least batchSize 2',
      'step STATE: stage 1 cannot queue step 3: step 2 already waits behind step 1',
    ]);
    expect(h.actor.getSnapshot().context.next?.step).toBe(2);
    expect(h.actor.getSnapshot().matches({ running: 'waiting' })).toBe(true);
  });

  it('a plan while failed is refused naming the state; a stage that shares its device takes a device order', async () => {
    const h = await harness({ rank: 1, stages: 3 }, { execute: async () => Promise.reject(new ShapeError('boom')) });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0));
    await waitFor(h.actor, (x) => x.matches('failed'), WAIT);
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 2, microbatches: 1, batchSize: 2 }) });
    expect(h.refusals).toEqual(['step STATE: stage 1 cannot start step 2: it is "failed"']);

    const shared = await harness({ rank: 1, stages: 3, sharesDevice: true });
    shared.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2, order: '0 3' }) });
    expect(shared.refusals).toEqual([]);
    expect(shared.actor.getSnapshot().matches('running')).toBe(true);
  });

  it(`an UPDATE: refused for another job, a step that is over, a second grant, a grant its plan made, a step without update, and out of turn; \
counted as refused`, async () => {
    const { h, gate } = await gated();
    h.actor.send({ type: 'UPDATE', step: 0 });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    h.actor.send({ type: 'UPDATE', step: 1, job: 'other' });
    h.actor.send({ type: 'UPDATE', step: 2 }); // a later step's, while waiting for a frame
    h.send(fwd(0));
    await vi.waitFor(() => expect(h.log).toContain('exec 1F0'));
    h.actor.send({ type: 'UPDATE', step: 1 }); // the grant: taken
    h.actor.send({ type: 'UPDATE', step: 1 }); // again
    expect(h.actor.getSnapshot().context.updateGranted).toBe(true);
    expect(h.refusals).toEqual([
      'UPDATE j/0 UNEXPECTED_FRAME: UPDATE for step 0 while stage 1 is "idle"',
      'UPDATE other/1 UNEXPECTED_FRAME: UPDATE for job other, not j',
      'UPDATE j/2 UNEXPECTED_FRAME: UPDATE for step 2 while stage 1 is {"running":"waiting"}',
      'UPDATE j/1 UNEXPECTED_FRAME: UPDATE for step 1 came twice',
    ]);
    expect(h.actor.getSnapshot().context.rejected).toBe(4);
    gate.resolve();
    h.send(bwd(0));
    await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.log).toEqual(['exec 1F0', 'exec 1B0', 'done 1 peak 1', 'update 1', 'updated 1']);
    h.actor.send({ type: 'UPDATE', step: 0 });
    expect(h.refusals.at(-1)).toBe('UPDATE j/0 STALE_STEP: UPDATE for step 0, which is over (now 1)');

    // A lone stage whose plan granted its update, and an evaluation: neither takes an UPDATE while running.
    const lone = await harness({ rank: 0, stages: 1 }, { execute: () => new Promise<void>(() => {}) });
    lone.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2, granted: true }) });
    lone.actor.send({ type: 'UPDATE', step: 1 });
    lone.actor.send({ type: 'STEP', plan: plan('F0', { step: 2, microbatches: 1, batchSize: 2, forwardOnly: true }) });
    const evalStage = await harness({ rank: 1, stages: 3 });
    evalStage.actor.send({ type: 'STEP', plan: plan('F0', { microbatches: 1, batchSize: 2, forwardOnly: true }) });
    evalStage.actor.send({ type: 'UPDATE', step: 1 });
    expect(lone.refusals).toEqual(['UPDATE j/1 UNEXPECTED_FRAME: UPDATE for step 1, whose plan granted it already']);
    expect(evalStage.refusals).toEqual(['UPDATE j/1 UNEXPECTED_FRAME: UPDATE for step 1, which applies no update (evaluation, prediction or accumulation)']);
  });

  it('an UPDATE while updating, awaiting another step, or failed is refused naming the state', async () => {
    const gate = deferred<void>();
    const h = await harness({ rank: 1, stages: 3 }, { update: () => gate.promise });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { microbatches: 1, batchSize: 2 }) });
    h.send(fwd(0), bwd(0));
    await waitFor(h.actor, (x) => x.matches('awaitingUpdate'), WAIT);
    h.actor.send({ type: 'UPDATE', step: 2 });
    h.actor.send({ type: 'UPDATE', step: 1 });
    await waitFor(h.actor, (x) => x.matches('updating'), WAIT);
    h.actor.send({ type: 'UPDATE', step: 1 });
    expect(h.refusals).toEqual([
      'UPDATE j/2 UNEXPECTED_FRAME: UPDATE for step 2 while stage 1 is "awaitingUpdate"',
      'UPDATE j/1 UNEXPECTED_FRAME: UPDATE for step 1 while stage 1 is "updating"',
    ]);
    gate.resolve();
    await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(h.log.filter((l) => l.startsWith('update'))).toEqual(['update 1', 'updated 1']);
  });

  it(`an abort: one of a step that is over is refused, of the queued step drops it, of a later step does nothing, \
of its own step starts the abort`, async () => {
    const { h, gate } = await gated();
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 5, microbatches: 1, batchSize: 2 }) });
    h.actor.send({ type: 'STEP', plan: plan('F0 B0', { step: 6, microbatches: 1, batchSize: 2 }) });
    h.actor.send({ type: 'ABORT_STEP', step: 4 });
    expect(h.refusals).toEqual(['abort STALE_STEP: abort of step 4, which is over (now 5)']);
    h.actor.send({ type: 'ABORT_STEP', step: 7 });
    expect(h.actor.getSnapshot().context.next?.step).toBe(6);
    h.actor.send({ type: 'ABORT_STEP', step: 6 });
    expect(h.actor.getSnapshot().context.next).toBeNull();
    expect(h.actor.getSnapshot().matches('running')).toBe(true);
    expect(h.abortsStarted).toEqual([]);
    h.send(fwd(0, 5));
    await vi.waitFor(() => expect(h.log).toContain('exec 1F0'));
    h.actor.send({ type: 'ABORT_STEP', step: 5 });
    expect(h.abortsStarted).toEqual([5]);
    expect(h.actor.getSnapshot().context.abortRequested).toBe(true);
    gate.resolve();
    const s = await waitFor(h.actor, (x) => x.matches('idle'), WAIT);
    expect(s.context.step).toBe(5);
    expect(h.log).toEqual(['exec 1F0', 'reset']);
    // Idle in its step, an abort of it is taken (nothing to drop) and refuses nothing.
    h.actor.send({ type: 'ABORT_STEP', step: 5 });
    expect(h.abortsStarted).toEqual([5, 5]);
    expect(h.refusals).toHaveLength(1);
  });
});
