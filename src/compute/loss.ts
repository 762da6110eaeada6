/** Loss and metric functions by name (any loss tfjs-layers compiles) or as user functions. */
import * as tf from '@tensorflow/tfjs';
import { ConfigError, messageOf } from '../errors.js';

/** A loss or metric: per-example values (or a scalar mean) from labels and predictions. */
export type LossFn = (yTrue: tf.Tensor, yPred: tf.Tensor) => tf.Tensor;

/** A tfjs loss name (`categoricalCrossentropy`, `meanSquaredError`, ...) or a function. */
export type LossSpec = string | LossFn;

/**
 * Resolves a loss and an optional metric exactly as `model.compile` would, by compiling a
 * small probe model and taking its functions, so names and numerics match tfjs-layers.
 */
export function resolveLoss(loss: LossSpec, metric?: LossSpec): { loss: LossFn; metric: LossFn | null } {
  if (typeof loss === 'function' && (metric === undefined || typeof metric === 'function')) {
    return { loss, metric: metric ?? null };
  }
  // A functional model (Sequential compiles an inner model); two units so 'accuracy' means categorical.
  const input = tf.input({ shape: [1] });
  const probe = tf.model({ inputs: input, outputs: tf.layers.dense({ units: 2 }).apply(input) as tf.SymbolicTensor });
  try {
    const metrics = typeof metric === 'string' ? [metric] : [];
    try {
      probe.compile({ optimizer: 'sgd', loss: typeof loss === 'string' ? loss : 'meanSquaredError', metrics });
    } catch (cause) {
      throw new ConfigError(`unknown loss "${String(loss)}" or metric "${String(metric)}": ${messageOf(cause)}`, { cause });
    }
    return {
      loss: typeof loss === 'function' ? loss : (probe.lossFunctions[0] as LossFn),
      metric: typeof metric === 'function' ? metric : metric === undefined ? null : (probe.metricsTensors[0]?.[0] ?? null),
    };
  } finally {
    probe.dispose();
  }
}

/**
 * This microbatch's share of the batch mean: per-example values summed and divided by the
 * whole batch's size, so the microbatches of a step add up to the full-batch mean.
 */
export function shareOfBatch(values: tf.Tensor, microbatchSize: number, batchSize: number): tf.Scalar {
  return tf.tidy(() => {
    if (values.rank === 0) return tf.mul<tf.Scalar>(values, microbatchSize / batchSize);
    const perExample = values.rank === 1 ? values : tf.mean(tf.reshape(values, [values.shape[0], -1]), 1);
    return tf.div<tf.Scalar>(tf.sum(perExample), batchSize);
  });
}
