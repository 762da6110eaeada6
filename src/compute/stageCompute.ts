/**
 * One stage's computation: forward from wire tensors, backward from the cached input and
 * the upstream gradient (recomputing the forward under the tape), gradient accumulation
 * across microbatches, and the optimizer update.
 */
import * as tf from '@tensorflow/tfjs';
import { ConfigError, ShapeError, StateError } from '../errors.js';
import type { WireTensor } from '../protocol/frame.js';
import { shareOfBatch, type LossFn } from './loss.js';
import type { StagePartition } from './partition.js';
import { fromTensor, toTensor } from './wire.js';

/** What the stage needs besides its partition. */
export interface StageComputeOptions {
  readonly partition: StagePartition;
  /** This stage's own optimizer (optimizers keep per-variable slots by position). */
  readonly optimizer: tf.Optimizer;
  /** Required on the last stage. */
  readonly loss?: LossFn;
  readonly metric?: LossFn | null;
}

/** Result of a forward or backward action. */
export interface ActionResult {
  /** Tensors for the neighbour: activations after F, input gradients after B; empty when none go out. */
  readonly tensors: WireTensor[];
  /** The microbatch's share of the batch-mean loss and metric (last stage only). */
  readonly loss?: number;
  readonly metric?: number | null;
}

interface Cached {
  readonly inputs: tf.Tensor[];
  readonly labels: tf.Tensor[];
  readonly size: number;
}

/** Per-step context of one stage: cached inputs per microbatch and accumulated gradients. */
export class StageCompute {
  private readonly cache = new Map<number, Cached>();
  private acc: (tf.Tensor | null)[];
  private readonly part: StagePartition;
  private readonly isLast: boolean;

  /** The compute of one partition: the loss and metric go to the last stage only. */
  static forPartition(partition: StagePartition, optimizer: tf.Optimizer, objective: { loss: LossFn; metric: LossFn | null }): StageCompute {
    const last = partition.rank === partition.stages - 1;
    return new StageCompute({ partition, optimizer, ...(last ? objective : {}) });
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
   * Runs the forward of microbatch `mb`. In training the inputs (and labels) are kept for
   * the backward; the last stage then computes nothing until its backward. In evaluation
   * the last stage returns loss and metric.
   */
  forward(mb: number, inputs: readonly WireTensor[], labels: readonly WireTensor[], size: number, batchSize: number, training: boolean): ActionResult {
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
    if (training) {
      this.cache.set(mb, { inputs: xs, labels: ys, size });
      if (this.isLast) return { tensors: [] };
      return { tensors: this.runToWire(xs, true) };
    }
    try {
      if (!this.isLast) return { tensors: this.runToWire(xs, false) };
      const { loss, metric } = tf.tidy(() => {
        const pred = this.part.run(xs, false)[0]!;
        const l = shareOfBatch(this.opts.loss!(ys[0]!, pred), size, batchSize);
        return this.opts.metric ? { loss: l, metric: shareOfBatch(this.opts.metric(ys[0]!, pred), size, batchSize) } : { loss: l };
      }) as { loss: tf.Scalar; metric?: tf.Scalar };
      const out = { tensors: [], loss: loss.dataSync()[0]!, metric: metric ? metric.dataSync()[0]! : null };
      tf.dispose([loss, metric ?? []]);
      return out;
    } finally {
      tf.dispose([...xs, ...ys]);
    }
  }

  private runToWire(xs: tf.Tensor[], training: boolean): WireTensor[] {
    const outs = tf.tidy(() => this.part.run(xs, training).map((t) => (xs.includes(t) ? t.clone() : t)));
    try {
      return outs.map((t, i) => fromTensor(t, `a${i}`));
    } finally {
      tf.dispose(outs);
    }
  }

  /**
   * Backward of microbatch `mb`: recomputes its forward under the tape from the cached
   * input, backpropagates `dy` (or, on the last stage, the microbatch's share of the loss),
   * adds the variables' gradients to the accumulators and returns the input gradients.
   */
  backward(mb: number, dy: readonly WireTensor[], batchSize: number): ActionResult {
    const c = this.cache.get(mb);
    if (!c) throw new StateError(`stage ${this.part.rank}: backward of microbatch ${mb} without its forward`);
    let dys: tf.Tensor[] = [];
    if (!this.isLast) {
      if (dy.length !== this.part.outputs.length) {
        throw new ShapeError(`microbatch ${mb} gradient: ${dy.length} tensors received, stage ${this.part.rank} sends ${this.part.outputs.length}`);
      }
      try {
        dy.forEach((w, i) => dys.push(toTensor(w, this.part.outputs[i], c.size, `microbatch ${mb} gradient ${i}`)));
      } catch (err) {
        tf.dispose(dys);
        throw err;
      }
    }
    const needInputGrads = this.part.rank > 0;
    const wrt = [...(needInputGrads ? c.inputs : []), ...this.part.variables];
    let metric: tf.Tensor | null = null;
    let taped: { value: tf.Scalar; grads: tf.Tensor[] };
    try {
      taped = tf.engine().gradients(
        () => {
          const outs = this.part.run(c.inputs, true);
          if (!this.isLast) return tf.addN(outs.map((o, i) => tf.sum(tf.mul(o, dys[i]!))));
          if (this.opts.metric) metric = tf.keep(shareOfBatch(this.opts.metric(c.labels[0]!, outs[0]!), c.size, batchSize));
          return shareOfBatch(this.opts.loss!(c.labels[0]!, outs[0]!), c.size, batchSize);
        },
        wrt,
        undefined,
        true,
      ) as { value: tf.Scalar; grads: tf.Tensor[] };
    } catch (err) {
      // The cached inputs stay for reset(); what this call made goes now. tfjs frees the tensors
      // its tape saved only after a backward pass, so a forward that throws leaves them: free them here.
      const tape = (tf.engine() as unknown as { state: { activeTape?: { saved?: tf.Tensor[] }[] } }).state.activeTape ?? [];
      for (const node of tape) tf.dispose(node.saved ?? []);
      tf.dispose([...dys, metric ?? []]);
      throw err;
    }
    const { value, grads } = taped;
    const nIn = needInputGrads ? c.inputs.length : 0;
    this.part.variables.forEach((_, i) => {
      const g = grads[nIn + i];
      if (!g) return;
      const prev = this.acc[i];
      this.acc[i] = prev ? tf.add(prev, g) : g;
      if (prev) tf.dispose([prev, g]);
    });
    const dx = grads.slice(0, nIn).map((g, i) => g ?? tf.zerosLike(c.inputs[i]!));
    try {
      const tensors = dx.map((g, i) => fromTensor(g, `g${i}`));
      if (!this.isLast) return { tensors };
      const m = metric as tf.Tensor | null;
      return { tensors, loss: value.dataSync()[0]!, metric: m ? m.dataSync()[0]! : null };
    } finally {
      tf.dispose([value, ...dx, ...dys, ...c.inputs, ...c.labels, metric ?? []]);
      this.cache.delete(mb);
    }
  }

  /** Applies the accumulated gradients with the optimizer, then zeroes the accumulators. */
  update(): void {
    if (this.cache.size > 0) throw new StateError(`stage ${this.part.rank}: update with ${this.cache.size} microbatches still waiting for their backward`);
    const named = this.part.variables.flatMap((v, i) => (this.acc[i] ? [{ name: v.name, tensor: this.acc[i]! }] : []));
    if (named.length > 0) this.opts.optimizer.applyGradients(named);
    this.clearGradients();
  }

  private clearGradients(): void {
    tf.dispose(this.acc.filter((t): t is tf.Tensor => t !== null));
    this.acc = this.part.variables.map(() => null);
  }

  /** Drops everything of the current step (an aborted step): cached inputs and gradients. */
  reset(): void {
    for (const c of this.cache.values()) tf.dispose([...c.inputs, ...c.labels]);
    this.cache.clear();
    this.clearGradients();
  }

  /** Frees the step's tensors and the optimizer's slots. */
  dispose(): void {
    this.reset();
    this.opts.optimizer.dispose();
  }
}
