/** Small models and data for tests, and single-process TensorFlow.js training to compare with. */
import * as tf from '@tensorflow/tfjs';

/** A seeded MLP: in -> hidden... -> out (softmax). Same seed, same weights. */
export function mlp(sizes: readonly number[], seed = 1): tf.Sequential {
  const m = tf.sequential();
  for (let i = 1; i < sizes.length; i++) {
    const last = i === sizes.length - 1;
    m.add(
      tf.layers.dense({
        units: sizes[i]!,
        activation: last ? 'softmax' : 'relu',
        kernelInitializer: tf.initializers.glorotUniform({ seed: seed * 100 + i }),
        biasInitializer: tf.initializers.randomUniform({ minval: -0.1, maxval: 0.1, seed: seed * 100 + 50 + i }),
        ...(i === 1 ? { inputShape: [sizes[0]!] } : {}),
      }),
    );
  }
  return m;
}

/** A functional model whose skip connection crosses the cut between its halves. */
export function skipModel(seed = 7): tf.LayersModel {
  const init = (k: number) => tf.initializers.glorotUniform({ seed: seed * 10 + k });
  const x = tf.input({ shape: [6] });
  const a = tf.layers.dense({ units: 8, activation: 'tanh', kernelInitializer: init(1), name: 'skip_a' }).apply(x) as tf.SymbolicTensor;
  const b = tf.layers.dense({ units: 8, activation: 'tanh', kernelInitializer: init(2), name: 'skip_b' }).apply(a) as tf.SymbolicTensor;
  const s = tf.layers.add({ name: 'skip_add' }).apply([a, b]) as tf.SymbolicTensor;
  const c = tf.layers.dense({ units: 8, activation: 'relu', kernelInitializer: init(3), name: 'skip_c' }).apply(s) as tf.SymbolicTensor;
  const y = tf.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: init(4), name: 'skip_out' }).apply(c) as tf.SymbolicTensor;
  return tf.model({ inputs: x, outputs: y });
}

/**
 * Categorical cross-entropy that first busy-waits `ms` milliseconds: each forward of the last
 * stage then takes at least that long, so a test can hold a stage in its step.
 */
export function slowLoss(ms: number): (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Tensor {
  return (yTrue, yPred) => {
    const t0 = performance.now();
    while (performance.now() - t0 < ms);
    return tf.metrics.categoricalCrossentropy(yTrue, yPred);
  };
}

/** Deterministic data: inputs in [-1, 1) and one-hot labels. */
export function data(n: number, inDim: number, classes: number, seed = 3): { x: tf.Tensor2D; y: tf.Tensor2D } {
  let s = seed >>> 0;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const xs = new Float32Array(n * inDim).map(() => rnd() * 2 - 1);
  const labels = Int32Array.from({ length: n }, () => Math.floor(rnd() * classes));
  return { x: tf.tensor2d(xs, [n, inDim]), y: tf.oneHot(tf.tensor1d(labels, 'int32'), classes).toFloat() as tf.Tensor2D };
}

/**
 * An MLP to train in a pipeline and its single-process twin: the same weights, the twin
 * compiled with `optimizer` and categorical cross-entropy.
 */
export function mlpAndReference(sizes: readonly number[], seed: number, optimizer: tf.Optimizer): { model: tf.Sequential; ref: tf.Sequential } {
  const model = mlp(sizes, seed);
  const ref = mlp(sizes, seed + 1);
  copyWeights(model, ref);
  ref.compile({ optimizer, loss: 'categoricalCrossentropy' });
  return { model, ref };
}

/** Copies all weights of `from` into `to` (same architecture). */
export function copyWeights(from: tf.LayersModel, to: tf.LayersModel): void {
  to.setWeights(from.getWeights());
}

/** Largest relative difference between the weights of two models: |a-b| / (|b| + 1e-3), elementwise. */
export function maxRelDiff(a: tf.LayersModel, b: tf.LayersModel): number {
  const wa = a.getWeights();
  const wb = b.getWeights();
  let worst = 0;
  wa.forEach((t, i) => {
    const x = t.dataSync();
    const y = wb[i]!.dataSync();
    for (let k = 0; k < x.length; k++) worst = Math.max(worst, Math.abs(x[k]! - y[k]!) / (Math.abs(y[k]!) + 1e-3));
  });
  return worst;
}

/** Largest absolute difference between the weights of two models. */
export function maxAbsDiff(a: tf.LayersModel, b: tf.LayersModel): number {
  const wb = b.getWeights();
  return Math.max(...a.getWeights().map((t, i) => tf.tidy(() => tf.max(tf.abs(tf.sub(t, wb[i]!))).dataSync()[0]!)));
}

/** One pipeline step and one single-process `trainOnBatch` on the same batch: the step's result and the reference loss. */
export async function stepBoth<R>(
  pipe: { trainStep(x: tf.Tensor, y: tf.Tensor): Promise<R> },
  ref: tf.LayersModel,
  x: tf.Tensor,
  y: tf.Tensor,
): Promise<[R, number]> {
  const r = await pipe.trainStep(x, y);
  return [r, (await ref.trainOnBatch(x, y)) as number];
}
