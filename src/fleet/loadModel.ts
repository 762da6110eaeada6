/**
 * Loads a TensorFlow.js model directory (model.json + its weight files, as `troupe up --save`
 * and `troupe checkpoint export` write) in Node with plain @tensorflow/tfjs, which has no
 * file:// handler (only @tensorflow/tfjs-node registers one).
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { ConfigError, messageOf } from '../errors.js';

interface ModelJson {
  readonly modelTopology?: object;
  readonly format?: string;
  readonly generatedBy?: string;
  readonly convertedBy?: string | null;
  readonly weightsManifest?: readonly { readonly paths: readonly string[]; readonly weights: tf.io.WeightsManifestEntry[] }[];
}

/**
 * Reads `dir`/model.json and the weight files it names, and builds the model.
 *
 * @example
 * const model = await loadModel('trained');   // written by troupe up --save trained
 * model.predict(x);
 */
export async function loadModel(dir: string): Promise<tf.LayersModel> {
  let json: ModelJson;
  try {
    json = JSON.parse(await readFile(join(dir, 'model.json'), 'utf8')) as ModelJson;
  } catch (cause) {
    throw new ConfigError(`model directory ${dir}: cannot read model.json: ${messageOf(cause)}`, { cause });
  }
  if (!json.modelTopology) throw new ConfigError(`model directory ${dir}: model.json has no modelTopology (not a layers model)`);
  const groups = json.weightsManifest ?? [];
  let parts: Buffer[];
  try {
    parts = await Promise.all(groups.flatMap((g) => g.paths).map((p) => readFile(join(dir, p))));
  } catch (cause) {
    throw new ConfigError(`model directory ${dir}: a weight file model.json names cannot be read: ${messageOf(cause)}`, { cause });
  }
  const weightData = tf.io.concatenateArrayBuffers(parts.map((b) => b.buffer.slice(b.byteOffset, b.byteOffset + b.byteLength) as ArrayBuffer));
  return tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: json.modelTopology,
      weightSpecs: groups.flatMap((g) => g.weights),
      weightData,
      ...(json.format !== undefined ? { format: json.format } : {}),
      ...(json.generatedBy !== undefined ? { generatedBy: json.generatedBy } : {}),
      ...(json.convertedBy != null ? { convertedBy: json.convertedBy } : {}),
    }),
  );
}
