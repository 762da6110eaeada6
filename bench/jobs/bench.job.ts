/**
 * The benchmark job, shaped by environment variables so every process of the fleet builds
 * the same thing: BENCH_MODEL (mlp | conv | uniform), BENCH_STAGES, BENCH_V (stages per
 * worker), BENCH_M, BENCH_SCHEDULE, BENCH_BATCH, BENCH_STEPS, BENCH_FEED (step | bounded),
 * BENCH_OPTIMIZER (sgd | adam), BENCH_WIDTH (the uniform MLP's width, default 1024).
 * Data are random: speed does not depend on the values.
 */
import * as tf from '@tensorflow/tfjs';
import { defineJob } from '../../src/index.js';

const env = (k: string, d: string) => process.env[k] ?? d;
export const MODEL = env('BENCH_MODEL', 'mlp');
export const BATCH = Number(env('BENCH_BATCH', '256'));
const STEPS = Number(env('BENCH_STEPS', '12'));

/** Width of the uniform MLP's layers (smaller ones let the scaling bench run on few cores). */
export const UNIFORM_WIDTH = Number(env('BENCH_WIDTH', '1024'));
/** Equal layers of the uniform MLP (divisible by 2, 4 and 8 stages). */
export const UNIFORM_LAYERS = 8;

/**
 * The reference MLP 784-1024-1024-10, a small conv net on 28x28x1, or a uniform MLP of 8
 * equal 1024-wide layers (and a small softmax layer): stages of equal work, for the bubble.
 */
export function benchModel(kind = MODEL): tf.LayersModel {
  const init = (seed: number) => tf.initializers.glorotUniform({ seed });
  const m = tf.sequential();
  if (kind === 'conv') {
    m.add(tf.layers.conv2d({ inputShape: [28, 28, 1], filters: 16, kernelSize: 3, activation: 'relu', kernelInitializer: init(1) }));
    m.add(tf.layers.maxPooling2d({ poolSize: 2 }));
    m.add(tf.layers.conv2d({ filters: 32, kernelSize: 3, activation: 'relu', kernelInitializer: init(2) }));
    m.add(tf.layers.maxPooling2d({ poolSize: 2 }));
    m.add(tf.layers.flatten());
    m.add(tf.layers.dense({ units: 128, activation: 'relu', kernelInitializer: init(3) }));
    m.add(tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: init(4) }));
  } else if (kind === 'uniform') {
    for (let i = 0; i < UNIFORM_LAYERS; i++) {
      m.add(
        tf.layers.dense({ units: UNIFORM_WIDTH, activation: 'relu', kernelInitializer: init(10 + i), ...(i === 0 ? { inputShape: [UNIFORM_WIDTH] } : {}) }),
      );
    }
    m.add(tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: init(9) }));
  } else {
    m.add(tf.layers.dense({ units: 1024, activation: 'relu', inputShape: [784], kernelInitializer: init(1) }));
    m.add(tf.layers.dense({ units: 1024, activation: 'relu', kernelInitializer: init(2) }));
    m.add(tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: init(3) }));
  }
  return m;
}

/** Random inputs and one-hot labels for `n` examples of the model's input shape. */
export function benchData(n: number, kind = MODEL): { x: tf.Tensor; y: tf.Tensor } {
  const shape = kind === 'conv' ? [n, 28, 28, 1] : kind === 'uniform' ? [n, UNIFORM_WIDTH] : [n, 784];
  return { x: tf.randomUniform(shape, 0, 1, 'float32', 7), y: tf.oneHot(tf.randomUniform([n], 0, 10, 'int32', 8), 10).toFloat() };
}

export default defineJob({
  model: () => benchModel(),
  data: () => ({ train: benchData(BATCH * STEPS) }),
  stages: Number(env('BENCH_STAGES', '2')),
  microbatches: Number(env('BENCH_M', '4')),
  schedule: env('BENCH_SCHEDULE', '1f1b'),
  virtualStages: Number(env('BENCH_V', '1')),
  feed: env('BENCH_FEED', 'step') as 'step' | 'bounded',
  optimizer:
    env('BENCH_OPTIMIZER', 'sgd') === 'adam' ? { className: 'Adam', config: { learningRate: 0.001 } } : { className: 'SGD', config: { learningRate: 0.01 } },
  loss: 'categoricalCrossentropy',
  epochs: 1,
  batchSize: BATCH,
  job: 'bench',
});
