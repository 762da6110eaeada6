/** Turns a batch into one scheduled step: microbatch split, INPUT frames, plans, and the step's result. */
import * as tf from '@tensorflow/tfjs';
import { ConfigError } from '../errors.js';
import { fromTensor, releaseDevice, reshapeWire, rowsOf } from '../compute/wire.js';
import type { Frame, WireTensor } from '../protocol/frame.js';
import { Phase } from '../protocol/phase.js';
import { concatRows } from '../protocol/rows.js';
import { formatStageActions, type Schedule } from '../schedule/action.js';
import { feedBound, releasedBy, type FeedMode } from '../schedule/constraint.js';
import { microbatchOffsets, microbatchSizes } from '../schedule/microbatch.js';
import { devicePositions, type DeviceSchedule } from '../schedule/interleaved.js';
import { forwardOnlySchedule } from '../schedule/schedules.js';
import type { SchedulerHost } from './schedulerHost.js';
import { checkStepTensors, floatLabels, type StepTensorSpec } from './stepTensors.js';

/** What a training or evaluation step returns. */
export interface StepResult {
  readonly step: number;
  /** Mean loss over the whole batch. */
  readonly loss: number;
  /** Mean metric over the whole batch, when a metric was given. */
  readonly metric: number | null;
  /** Mean loss of each microbatch. */
  readonly microbatchLosses: readonly number[];
  /** Most microbatches each stage held for a backward during the step. */
  readonly peakHeld: readonly number[];
  /**
   * Frames the stages refused during the step, each dropped unused: harmless (a malformed,
   * stale, duplicate or unsealed frame). A frame that conflicts with one a stage holds for its
   * slot is no refusal: it fails the step (StageError, reason CONFLICTING_FRAME).
   */
  readonly rejected: number;
  /** A prediction's outputs (the last stage's), in batch order. */
  readonly outputs?: readonly WireTensor[];
  /**
   * The step was called while the previous one ran, and its plans and first inputs went
   * out before that step ended (overlapped steps).
   */
  readonly begunEarly: boolean;
}

/** What else a step does: predict (outputs, no labels, no loss), or keep its gradients for the next step. */
export interface StepExtra {
  readonly predict?: boolean;
  /** Apply the update at the end of a training step (default true; false accumulates). */
  readonly update?: boolean;
}

/** Options of a step runner. */
export interface StepRunnerOptions {
  readonly scheduler: SchedulerHost;
  readonly job: string;
  readonly schedule: Schedule;
  /** Per device, its stages' actions in order, when devices host several stages (interleaved schedules). */
  readonly devices?: DeviceSchedule;
  readonly microbatches: number;
  /** The model's inputs and outputs and the loss's label rule: every step's tensors are checked against them before anything is published. */
  readonly tensors: StepTensorSpec;
  readonly hasMetric: boolean;
  readonly stepTimeoutMs: number;
  /** How stage 0 gets its inputs (FeedMode); default `step`. */
  readonly feed?: FeedMode;
  /** Id of the last step already taken (0 for a fresh job; a checkpoint's step on resume). */
  readonly lastStep?: number;
}

function asList(t: tf.Tensor | tf.Tensor[], what: string): tf.Tensor[] {
  const l = Array.isArray(t) ? t : [t];
  if (l.length === 0 || l.some((x) => !(x instanceof tf.Tensor))) throw new ConfigError(`${what} must be a tensor or a non-empty list of tensors`);
  return l;
}

/** Runs steps one at a time through a scheduler, wherever the stages live. */
export class StepRunner {
  /** Id of the last step started. */
  step: number;
  private readonly evalSchedule: Schedule;
  /** Per stage, its actions' positions in its device's order ("" when it has the device to itself). */
  private readonly orders: string[];

  constructor(private readonly o: StepRunnerOptions) {
    this.step = o.lastStep ?? 0;
    this.evalSchedule = forwardOnlySchedule(o.schedule.length, o.microbatches);
    const positions = o.devices ? devicePositions(o.devices, o.schedule.length) : null;
    this.orders = o.schedule.map((_, r) => (positions ? positions[r]!.join(' ') : ''));
  }

  /** One training step (or, with `forwardOnly`, one evaluation) of the batch (x, y). */
  async run(x: tf.Tensor | tf.Tensor[], y: tf.Tensor | tf.Tensor[], forwardOnly: boolean): Promise<StepResult> {
    const xs = await Promise.all(asList(x, 'x').map((t, i) => fromTensor(t, `x${i}`)));
    const ys = await Promise.all(asList(y, 'y').map((t, i) => fromTensor(t, `y${i}`)));
    return this.runWire(xs, ys, forwardOnly);
  }

  /** Microbatches per step. */
  get microbatches(): number {
    return this.o.microbatches;
  }

  /** The scheduler this runner's steps go through. */
  get scheduler(): SchedulerHost {
    return this.o.scheduler;
  }

  /**
   * Every check that can refuse a step of (xw, yw), without starting it (no step id is taken):
   * data-parallel replicas check each replica's share before any of them starts. Wrong shapes
   * and dtypes fail here, naming the tensor, before any frame goes out.
   */
  check(
    xw: readonly WireTensor[],
    yw: readonly WireTensor[],
    forwardOnly: boolean,
    extra: StepExtra = {},
  ): { predict: boolean; update: boolean; xs: WireTensor[]; ys: WireTensor[] } {
    const predict = extra.predict ?? false;
    const update = !forwardOnly && !predict && (extra.update ?? true);
    if (predict && !forwardOnly) throw new ConfigError('a predict step is forward only');
    if (yw.length === 0 && !predict) throw new ConfigError('y must hold at least one label tensor');
    const { xs, ys } = checkStepTensors(xw, yw, this.o.tensors);
    return { predict, update, xs, ys };
  }

  /**
   * The same from wire tensors (`x<i>`, `y<i>`): a caller holding a whole data set as bytes
   * passes row slices of it (`sliceRows`) and no tensor is made or read on this side. Device
   * wires (`deviceWire`) are sliced on their device; the caller keeps owning the ones it passed.
   */
  async runWire(xw: readonly WireTensor[], yw: readonly WireTensor[], forwardOnly: boolean, totalBatch?: number, extra: StepExtra = {}): Promise<StepResult> {
    const checked = this.check(xw, yw, forwardOnly, extra);
    const { predict, update } = checked;
    // Tensors made here from the caller's (a reshaped [n] label, a cast one) are this step's to free.
    const made: WireTensor[] = [];
    const keep = (from: readonly WireTensor[], to: readonly WireTensor[]) => to.map((w, i) => (w === from[i] ? w : (made.push(w), w)));
    const asChecked = (ws: readonly WireTensor[], checkedWs: readonly WireTensor[]) =>
      keep(
        ws,
        ws.map((w, i) => (checkedWs[i] === w ? w : reshapeWire(w, checkedWs[i]!.shape))),
      );
    xw = asChecked(xw, checked.xs);
    const shaped = asChecked(yw, checked.ys);
    yw = keep(shaped, floatLabels(shaped, this.o.tensors.labels));
    try {
      return await this.runChecked(xw, yw, forwardOnly, predict, update, totalBatch);
    } finally {
      releaseDevice(made);
    }
  }

  /** The step itself, on checked inputs and labels. */
  private async runChecked(
    xw: readonly WireTensor[],
    yw: readonly WireTensor[],
    forwardOnly: boolean,
    predict: boolean,
    update: boolean,
    totalBatch: number | undefined,
  ): Promise<StepResult> {
    const { job, microbatches: m } = this.o;
    const p = this.o.schedule.length;
    const batch = xw[0]!.shape[0]!;
    const sizes = microbatchSizes(batch, m);
    const offsets = microbatchOffsets(sizes);
    const rows = (ws: readonly WireTensor[], mb: number) => ws.map((w) => rowsOf(w, offsets[mb]!, sizes[mb]!));
    const s = ++this.step;
    const sch = forwardOnly ? this.evalSchedule : this.o.schedule;
    // A lone stage has no other stage's list to wait for: its plan grants its UPDATE.
    const grantInPlan = p === 1 && update;
    const inputFrame = (mb: number, tensors: WireTensor[]): Frame => ({ key: { job, step: s, microbatch: mb, phase: Phase.INPUT }, from: 'sched', tensors });
    const outcome = await this.o.scheduler.run({
      step: s,
      microbatches: m,
      forwardOnly,
      update,
      // `step`: every input goes out as the step begins; `bounded`: the schedule's bound plus one.
      feedBound: this.o.feed === 'bounded' ? feedBound(sch[0]!) : m,
      releasedBy: releasedBy(sch[0]!),
      timeoutMs: this.o.stepTimeoutMs,
      grantInPlan,
      plan: (r) => ({
        step: s,
        microbatches: m,
        batchSize: batch,
        totalBatch: totalBatch ?? batch,
        forwardOnly,
        predict,
        update,
        granted: grantInPlan,
        actions: formatStageActions(sch[r]!),
        order: forwardOnly ? '' : this.orders[r]!,
      }),
      inputs: (mb) =>
        p === 1
          ? [{ rank: 0, frame: inputFrame(mb, [...rows(xw, mb), ...(predict ? [] : rows(yw, mb))]) }]
          : [{ rank: 0, frame: inputFrame(mb, rows(xw, mb)) }, ...(predict ? [] : [{ rank: p - 1, frame: inputFrame(mb, rows(yw, mb)) }])],
    });
    // A prediction: the last stage's outputs of every microbatch, back in batch order.
    const outputs = predict ? concatRows(this.o.scheduler.takeOutputs(s, m).map((f) => f.tensors)) : undefined;
    return {
      ...(outputs ? { outputs } : {}),
      step: s,
      loss: outcome.lossShares.reduce((a, b) => a + b, 0),
      metric: this.o.hasMetric ? outcome.metricShares.reduce<number>((a, b) => a + (b ?? 0), 0) : null,
      microbatchLosses: outcome.lossShares.map((l, i) => (l * batch) / sizes[i]!),
      peakHeld: outcome.peakHeld,
      rejected: outcome.rejected,
      begunEarly: outcome.begunEarly,
    };
  }
}
