/** Freeing a model Troupe cut into stages. */
import type * as tf from '@tensorflow/tfjs';

/**
 * Frees a model's weights. `model.dispose()` frees none once the model is cut: each stage's
 * sub-model holds its layers too, so their reference counts never reach zero.
 */
export function disposeModel(model: tf.LayersModel): void {
  for (const w of model.weights) w.dispose();
}
