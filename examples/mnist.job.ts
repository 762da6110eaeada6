/**
 * Job config of the main job: a 784-256-128-10 MLP on the offline MNIST digits, cut into
 * 2 stages, 1F1B with 4 microbatches, Adam. Run it with `troupe up examples/mnist.job.ts`.
 */
import * as tf from '@tensorflow/tfjs';
import { defineJob } from '../src/index.js';
import { loadDigits } from '../src/data/mnist.js';

/** The model; seeded initialisers make every build identical (the driver's weights are sent anyway). */
export function buildModel(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.dense({ units: 256, activation: 'relu', inputShape: [784], kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }));
  m.add(tf.layers.dense({ units: 128, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }));
  m.add(tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: 3 }) }));
  return m;
}

export const LEARNING_RATE = 1e-3;

export default defineJob({
  model: buildModel,
  data: () => loadDigits(),
  stages: 2,
  microbatches: 4,
  schedule: '1f1b',
  optimizer: { className: 'Adam', config: { learningRate: LEARNING_RATE } },
  loss: 'categoricalCrossentropy',
  metric: 'accuracy',
  epochs: Number(process.env['EPOCHS'] ?? 3),
  batchSize: 64,
  job: 'mnist',
});
