/** The benches' small dense models: relu layers, a softmax output, weights seeded by layer. */
import * as tf from '@tensorflow/tfjs';

/** A sequential MLP with layer widths `sizes` (the first is the input's); layer i's weights seeded with i. */
export function seededMlp(sizes: readonly number[]): tf.LayersModel {
  const m = tf.sequential();
  for (let i = 1; i < sizes.length; i++) {
    m.add(
      tf.layers.dense({
        units: sizes[i]!,
        activation: i === sizes.length - 1 ? 'softmax' : 'relu',
        kernelInitializer: tf.initializers.glorotUniform({ seed: i }),
        ...(i === 1 ? { inputShape: [sizes[0]!] } : {}),
      }),
    );
  }
  return m;
}
