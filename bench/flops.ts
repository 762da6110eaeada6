/** Floating-point operations of a training step, counted from the layers (dense and conv2d). */
import type * as tf from '@tensorflow/tfjs';

/** Forward multiply-adds x 2 of every Dense and Conv2D layer for `batch` examples. */
export function forwardFlops(model: tf.LayersModel, batch: number): number {
  let n = 0;
  for (const l of model.layers) {
    const cls = l.getClassName();
    const out = l.outputShape as number[];
    if (cls === 'Dense') {
      const inDim = l.inputSpec?.[0]?.axes?.[-1] ?? l.getWeights()[0]!.shape[0];
      n += 2 * batch * inDim * (out[out.length - 1] as number);
    } else if (cls === 'Conv2D') {
      const [kh, kw, cin, cout] = l.getWeights()[0]!.shape as number[];
      n += 2 * batch * (out[1] as number) * (out[2] as number) * kh! * kw! * cin! * cout!;
    }
  }
  return n;
}

/** A training step's model FLOPs: forward plus backward (input and weight gradients) = 3 x forward. */
export function trainFlops(model: tf.LayersModel, batch: number): number {
  return 3 * forwardFlops(model, batch);
}
