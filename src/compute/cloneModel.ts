/** A second model with the same topology and the same weights (its own variables). */
import * as tf from '@tensorflow/tfjs';

export async function cloneModel(model: tf.LayersModel): Promise<tf.LayersModel> {
  let artifacts: tf.io.ModelArtifacts | undefined;
  await model.save(
    tf.io.withSaveHandler(async (a) => {
      artifacts = a;
      return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(a) };
    }),
  );
  return tf.loadLayersModel(tf.io.fromMemory(artifacts!));
}
