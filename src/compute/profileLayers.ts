/**
 * Measured cost of each layer: its forward and backward on a sample microbatch, timed on
 * this process's backend. Partitioning by these costs balances stages by time, where
 * parameter counts mislead (a convolution has few parameters and most of the work).
 */
import * as tf from '@tensorflow/tfjs';
import { layerInputs } from './layerInputs.js';

/** Options of `profileLayers`. */
export interface ProfileOptions {
  /** Rows of the random sample microbatch (default 32). */
  readonly rows?: number;
  /** Timed repetitions per layer after one warm-up; the median counts (default 3). */
  readonly repeats?: number;
}

function asList<T>(x: T | T[]): T[] {
  return Array.isArray(x) ? x : [x];
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/**
 * Milliseconds of forward + backward (input and weight gradients) of every layer of `model`
 * except its input layers, in the order `partitionModel` cuts them, on a random microbatch.
 * Each layer runs on its real input (the sample carried through the layers before it).
 */
export async function profileLayers(model: tf.LayersModel, opts: ProfileOptions = {}): Promise<number[]> {
  const rows = opts.rows ?? 32;
  const repeats = opts.repeats ?? 3;
  // Every layer's input tensors, computed once from a random sample.
  const sample = layerInputs(model, rows);
  try {
    const costs: number[] = [];
    for (const [li, layer] of sample.layers.entries()) {
      const xs = sample.inputs[li]!;
      const vars = layer.trainableWeights.map((w) => (w as unknown as { val: tf.Variable }).val);
      const floats = xs.filter((x) => x.dtype === 'float32');
      const once = () =>
        tf.tidy(() => {
          const wrt = [...floats, ...vars];
          const f = () => {
            const out = asList(layer.apply(xs.length === 1 ? xs[0]! : xs, { training: true }) as tf.Tensor | tf.Tensor[]);
            return tf.addN(out.map((o) => tf.sum(o)));
          };
          if (wrt.length === 0) return f();
          return tf.engine().gradients(f, wrt, undefined, true).grads;
        });
      const run = async () => {
        const t0 = performance.now();
        const res = once();
        // Reading one value waits for the backend to finish the work.
        const first = asList(res).find((t): t is tf.Tensor => t instanceof tf.Tensor);
        await first?.data();
        const ms = performance.now() - t0;
        tf.dispose(res);
        return ms;
      };
      await run();
      const times: number[] = [];
      for (let i = 0; i < repeats; i++) times.push(await run());
      costs.push(median(times));
    }
    return costs;
  } finally {
    sample.dispose();
  }
}
