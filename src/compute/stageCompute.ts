/**
 * One stage's computation: forward from wire tensors under a held gradient tape, backward
 * split into B (input gradients) and W (weight gradients) or both at once, gradient
 * accumulation across microbatches, and the optimizer update. With `recompute`, the forward
 * keeps only the stage's input and the backward recomputes it (activation checkpointing:
 * less memory, one more forward).
 */
import * as tf from '@tensorflow/tfjs';
import { ConfigError, ShapeError, StateError } from '../errors.js';
import type { WireTensor } from '../protocol/frame.js';
import { HeldTape } from './heldTape.js';
import { isOptimizerScalar, readOptimizerState } from './optimizerState.js';
import { shareOfBatch, type LossFn } from './loss.js';
import type { StagePartition } from './partition.js';
import { deviceWire, fromTensor, toTensor } from './wire.js';

/** What the stage needs besides its partition. */
export interface StageComputeOptions {
  readonly partition: StagePartition;
  /** This stage's own optimizer (optimizers keep per-variable slots by position). */
  readonly optimizer: tf.Optimizer;
  /** Required on the last stage. */
  readonly loss?: LossFn;
  readonly metric?: LossFn | null;
  /** Keep only each microbatch's input and recompute its forward at backward time (activation checkpointing). */
  readonly recompute?: boolean;
}

/** Result of a forward or backward action. */
export interface ActionResult {
  /**
   * Tensors for the neighbour: activations after F, input gradients after B; empty when none
   * go out. Bytes, or device wires (`deviceWire`) when the action was asked to keep them on the device.
   */
  readonly tensors: WireTensor[];
  /** The microbatch's share of the batch-mean loss and metric (last stage only). */
  readonly loss?: number;
  readonly metric?: number | null;
}

interface Cached {
  /** Kept for a recomputing backward only. */
  readonly inputs: tf.Tensor[];
  readonly labels: tf.Tensor[];
  readonly size: number;
  /** The forward's tape; recorded at backward time when recomputing. */
  tape: HeldTape | null;
}

/** Per-step context of one stage: cached inputs per microbatch and accumulated gradients. */
export class StageCompute {
  private readonly cache = new Map<number, Cached>();
  private acc: (tf.Tensor | null)[];
  private readonly part: StagePartition;
  private readonly isLast: boolean;

  /** The compute of one partition: the loss and metric go to the last stage only. */
  static forPartition(partition: StagePartition, optimizer: tf.Optimizer, objective: { loss: LossFn; metric: LossFn | null }, recompute = false): StageCompute {
    const last = partition.rank === partition.stages - 1;
    return new StageCompute({ partition, optimizer, recompute, ...(last ? objective : {}) });
  }

  constructor(private readonly opts: StageComputeOptions) {
    this.part = opts.partition;
    this.isLast = this.part.rank === this.part.stages - 1;
    if (this.isLast && !opts.loss) throw new StateError(`stage ${this.part.rank} is the last and needs a loss`);
    if (this.isLast && this.part.outputs.length !== 1) {
      throw new ConfigError(`the model has ${this.part.outputs.length} outputs; a pipeline trains models with one output`);
    }
    this.acc = this.part.variables.map(() => null);
  }

  /** This stage's optimizer (for checkpoints). */
  get optimizer(): tf.Optimizer {
    return this.opts.optimizer;
  }

  /** This stage's partition. */
  get partition(): StagePartition {
    return this.part;
  }

  /** Most bytes of activations held for backwards at once (inputs kept for recomputing, or tapes). */
  peakHeldBytes = 0;

  private noteHeld(): void {
    let bytes = 0;
    for (const c of this.cache.values()) bytes += c.tape ? c.tape.bytes : [...c.inputs, ...c.labels].reduce((n, t) => n + t.size * 4, 0);
    this.peakHeldBytes = Math.max(this.peakHeldBytes, bytes);
  }

  /** What the stage holds, measured: its weights, its optimizer's tensors, and the peak of activations held. */
  async measuredMemory(): Promise<{ weights: number; optimizer: number; activations: number; total: number }> {
    const weights = this.part.layers.flatMap((l) => l.weights).reduce((n, w) => n + w.read().size * 4, 0);
    // Every optimizer's state, Adamax's too (its getWeights throws); the running scalars count for nothing.
    const slots = await readOptimizerState(this.opts.optimizer);
    const optimizer = slots.filter((s) => !isOptimizerScalar(s.name)).reduce((n, s) => n + s.tensor.size * 4, 0);
    tf.dispose(slots.map((s) => s.tensor).filter((t) => !(t instanceof tf.Variable)));
    return { weights, optimizer, activations: this.peakHeldBytes, total: weights + optimizer + this.peakHeldBytes };
  }

  /** Microbatches whose inputs are held for a backward. */
  get held(): number {
    return this.cache.size;
  }

  private inputsOf(ws: readonly WireTensor[], size: number, what: string): tf.Tensor[] {
    if (ws.length !== this.part.inputs.length) {
      throw new ShapeError(`${what}: ${ws.length} tensors received, stage ${this.part.rank} takes ${this.part.inputs.length}`);
    }
    const out: tf.Tensor[] = [];
    try {
      ws.forEach((w, i) => out.push(toTensor(w, this.part.inputs[i], size, `${what} tensor ${i}`)));
    } catch (err) {
      tf.dispose(out);
      throw err;
    }
    return out;
  }

  /**
   * Runs the forward of microbatch `mb`. In training its tape is kept for the backward (or,
   * recomputing, its inputs), and the last stage returns the microbatch's share of the loss.
   * In evaluation the last stage returns loss and metric and nothing is kept. With `device`,
   * the activations stay on the device as device wires (a neighbour in this process takes them).
   */
  async forward(
    mb: number,
    inputs: readonly WireTensor[],
    labels: readonly WireTensor[],
    size: number,
    batchSize: number,
    training: boolean,
    device = false,
  ): Promise<ActionResult> {
    if (this.cache.has(mb)) throw new StateError(`stage ${this.part.rank}: microbatch ${mb} was already forwarded`);
    const xs = this.inputsOf(inputs, size, `microbatch ${mb} input`);
    let ys: tf.Tensor[] = [];
    try {
      ys = labels.map((w, i) => toTensor(w, undefined, size, `microbatch ${mb} label ${i}`));
      if (this.isLast && ys.length === 0) throw new ShapeError(`microbatch ${mb}: the last stage got no labels`);
    } catch (err) {
      tf.dispose([...xs, ...ys]);
      throw err;
    }
    if (training && this.opts.recompute) {
      this.cache.set(mb, { inputs: xs, labels: ys, size, tape: null });
      this.noteHeld();
      return { tensors: this.isLast ? [] : await wireOut(this.run(xs), 'a', device) };
    }
    let outputs: tf.Tensor[] = [];
    try {
      if (!training) {
        if (!this.isLast) return { tensors: await wireOut(this.run(xs), 'a', device) };
        outputs = tf.tidy(() => this.objective(this.part.run(xs, false)[0]!, ys, size, batchSize));
        return await this.lossResult([], outputs);
      }
      const recorded = this.record(xs, ys, size, batchSize);
      outputs = recorded.outputs;
      this.cache.set(mb, { inputs: [], labels: [], size, tape: recorded.tape });
      this.noteHeld();
      if (this.isLast) return await this.lossResult([], outputs);
      const tensors = wireOut(outputs, 'a', device);
      outputs = [];
      return { tensors: await tensors };
    } finally {
      tf.dispose([...xs, ...ys, ...outputs]);
    }
  }

  /** The stage's outputs for `inputs` (inference, no tape, nothing kept): a prediction, read into bytes. */
  async predict(inputs: readonly WireTensor[], size: number): Promise<WireTensor[]> {
    const xs = this.inputsOf(inputs, size, 'prediction input');
    try {
      return await wireOut(this.run(xs), 'a', false);
    } finally {
      tf.dispose(xs);
    }
  }

  /** [loss share, metric share?] of a prediction. */
  private objective(pred: tf.Tensor, ys: tf.Tensor[], size: number, batchSize: number): tf.Tensor[] {
    const loss = shareOfBatch(this.opts.loss!(ys[0]!, pred), size, batchSize);
    return this.opts.metric ? [loss, shareOfBatch(this.opts.metric(ys[0]!, pred), size, batchSize)] : [loss];
  }

  /** The loss (and metric) shares read from `outs`, which the caller still owns. */
  private async lossResult(tensors: WireTensor[], outs: tf.Tensor[]): Promise<ActionResult> {
    const [loss, metric] = await Promise.all(outs.map((t) => t.data()));
    return { tensors, loss: loss![0]!, metric: metric ? metric[0]! : null };
  }

  /** Runs the stage's forward (and, on the last stage, its loss) under a held tape. */
  private record(xs: tf.Tensor[], ys: tf.Tensor[], size: number, batchSize: number): { outputs: tf.Tensor[]; tape: HeldTape } {
    const needInputGrads = this.part.rank > 0;
    return HeldTape.record(
      () => {
        const outs = this.part.run(xs, true);
        if (this.isLast) return this.objective(outs[0]!, ys, size, batchSize);
        return outs.map((t) => (xs.includes(t) ? t.clone() : t));
      },
      needInputGrads ? xs : [],
      this.part.variables,
    );
  }

  /** The stage's outputs without a tape, as new tensors the caller owns. */
  private run(xs: tf.Tensor[]): tf.Tensor[] {
    return tf.tidy(() => this.part.run(xs, false).map((t) => (xs.includes(t) ? t.clone() : t)));
  }

  /**
   * Backward of microbatch `mb`, B and W at once: backpropagates `dy` (or, on the last stage,
   * the microbatch's share of the loss), adds the variables' gradients to the accumulators and
   * returns the input gradients.
   */
  async backward(mb: number, dy: readonly WireTensor[], batchSize: number, device = false): Promise<ActionResult> {
    // B's part of the tape runs before its first await, so W follows it at once, while B's
    // gradients are read. A B that failed before walking the tape answers with its own error.
    const res = this.backwardInputs(mb, dy, batchSize, device);
    const c = this.cache.get(mb);
    if (!c?.tape || c.tape.inputsPending) return res;
    try {
      this.backwardWeights(mb);
    } catch (err) {
      res.catch(() => {});
      throw err;
    }
    return res;
  }

  /**
   * B of microbatch `mb`: the input gradients only; the weight gradients wait for
   * `backwardWeights` and the microbatch's tape is held until then. With `device`, the input
   * gradients stay on the device as device wires.
   */
  async backwardInputs(mb: number, dy: readonly WireTensor[], batchSize: number, device = false): Promise<ActionResult> {
    const c = this.cache.get(mb);
    if (!c) throw new StateError(`stage ${this.part.rank}: backward of microbatch ${mb} without its forward`);
    if (c.tape && !c.tape.inputsPending) throw new StateError(`stage ${this.part.rank}: microbatch ${mb} was already backpropagated`);
    const dys = this.gradientsIn(mb, dy, c.size);
    let lossOut: tf.Tensor[] = [];
    try {
      if (!c.tape) {
        // Recomputing: the forward runs now, under the tape, from the kept inputs.
        const { outputs, tape } = this.record(c.inputs, c.labels, c.size, batchSize);
        c.tape = tape;
        lossOut = this.isLast ? outputs : [];
        if (!this.isLast) tf.dispose(outputs);
        tf.dispose([...c.inputs, ...c.labels]);
        this.cache.set(mb, { inputs: [], labels: [], size: c.size, tape });
      }
      const dx = c.tape.backwardInputs(dys);
      const out = wireOut(dx, 'g', device);
      // Read after the tape's B part, before anything else runs: the loss of a recomputed forward.
      const kept = lossOut;
      lossOut = [];
      return await this.finishBackward(out, kept);
    } finally {
      tf.dispose([...dys, ...lossOut]);
    }
  }

  /** The input gradients once read (or linked), with the loss of a recomputing last stage. */
  private async finishBackward(out: Promise<WireTensor[]>, lossOut: tf.Tensor[]): Promise<ActionResult> {
    try {
      const tensors = await out;
      return lossOut.length > 0 ? await this.lossResult(tensors, lossOut) : { tensors };
    } finally {
      tf.dispose(lossOut);
    }
  }

  /** W of microbatch `mb`: adds its weight gradients to the accumulators and frees its tape. */
  backwardWeights(mb: number): void {
    const c = this.cache.get(mb);
    if (!c?.tape || c.tape.inputsPending) throw new StateError(`stage ${this.part.rank}: weight gradients of microbatch ${mb} before its input gradients`);
    try {
      c.tape.backwardWeights().forEach((g, i) => {
        if (!g) return;
        const prev = this.acc[i];
        this.acc[i] = prev ? tf.add(prev, g) : g;
        if (prev) tf.dispose([prev, g]);
      });
    } finally {
      c.tape.dispose();
      this.cache.delete(mb);
    }
  }

  /** The upstream gradients of microbatch `mb` as tensors (none on the last stage). */
  private gradientsIn(mb: number, dy: readonly WireTensor[], size: number): tf.Tensor[] {
    if (this.isLast) return [];
    if (dy.length !== this.part.outputs.length) {
      throw new ShapeError(`microbatch ${mb} gradient: ${dy.length} tensors received, stage ${this.part.rank} sends ${this.part.outputs.length}`);
    }
    const dys: tf.Tensor[] = [];
    try {
      dy.forEach((w, i) => dys.push(toTensor(w, this.part.outputs[i], size, `microbatch ${mb} gradient ${i}`)));
    } catch (err) {
      tf.dispose(dys);
      throw err;
    }
    return dys;
  }

  /** The accumulated gradients as wire tensors, in variable order (zeros for a variable without one). */
  gradientsWire(): Promise<WireTensor[]> {
    return Promise.all(
      this.part.variables.map(async (v, i) => {
        const g = this.acc[i] ?? tf.zerosLike(v);
        try {
          return await fromTensor(g, `g${i}`);
        } finally {
          if (!this.acc[i]) g.dispose();
        }
      }),
    );
  }

  /** Replaces the accumulated gradients (with the sum over data-parallel replicas). */
  setGradients(grads: readonly WireTensor[]): void {
    if (grads.length !== this.part.variables.length)
      throw new ShapeError(`stage ${this.part.rank}: ${grads.length} gradients for ${this.part.variables.length} variables`);
    grads.forEach((w, i) => {
      const want = this.part.variables[i]!.shape;
      if (w.dtype !== 'float32' || w.shape.length !== want.length || w.shape.some((d, k) => d !== want[k])) {
        throw new ShapeError(`stage ${this.part.rank}: gradient ${i} is ${w.dtype}[${w.shape.join(',')}], variable ${i} is float32[${want.join(',')}]`);
      }
    });
    const next = grads.map((w, i) => toTensor(w, undefined, undefined, `gradient ${i}`));
    this.clearGradients();
    this.acc = next;
  }

  /** Applies the accumulated gradients with the optimizer, then zeroes the accumulators. */
  update(): void {
    if (this.cache.size > 0)
      throw new StateError(`stage ${this.part.rank}: update with ${this.cache.size} microbatches still waiting for their backward (B or W)`);
    const named = this.part.variables.flatMap((v, i) => (this.acc[i] ? [{ name: v.name, tensor: this.acc[i] }] : []));
    if (named.length > 0) this.opts.optimizer.applyGradients(named);
    this.clearGradients();
  }

  private clearGradients(): void {
    tf.dispose(this.acc.filter((t): t is tf.Tensor => t !== null));
    this.acc = this.part.variables.map(() => null);
  }

  /** Drops everything of the current step (an aborted step): cached inputs and gradients. */
  reset(): void {
    for (const c of this.cache.values()) {
      tf.dispose([...c.inputs, ...c.labels]);
      c.tape?.dispose();
    }
    this.cache.clear();
    this.clearGradients();
  }

  /** Frees the step's tensors and the optimizer's slots. */
  dispose(): void {
    this.reset();
    this.opts.optimizer.dispose();
  }
}

/**
 * `tensors` for a neighbour, named `<prefix><i>`: kept on the device as device wires (owned by
 * them), or read into bytes and freed. Starts the reads at once; the caller awaits the result.
 */
function wireOut(tensors: tf.Tensor[], prefix: string, device: boolean): Promise<WireTensor[]> {
  if (device) return Promise.resolve(tensors.map((t, i) => deviceWire(t, `${prefix}${i}`)));
  return Promise.all(tensors.map((t, i) => fromTensor(t, `${prefix}${i}`))).finally(() => tf.dispose(tensors));
}
