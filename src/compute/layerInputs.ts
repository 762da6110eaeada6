/** Every layer's real input on a random sample: the sample carried through the layers before it. */
import * as tf from '@tensorflow/tfjs';
import { PartitionError } from '../errors.js';

/** The layers (in cut order) and, for each, its input tensors on a `rows`-row sample; `dispose` frees them. */
export interface LayerInputs {
  readonly layers: tf.layers.Layer[];
  readonly inputs: tf.Tensor[][];
  dispose(): void;
}

export function layerInputs(model: tf.LayersModel, rows: number, seed = 11): LayerInputs {
  const layers = model.layers.filter((l) => l.getClassName() !== 'InputLayer');
  for (const input of model.inputs) {
    if (input.shape.slice(1).some((d) => d === null)) throw new PartitionError(`input ${input.name} has an unknown dimension ${JSON.stringify(input.shape)}`);
  }
  const symbolsOf = layers.map((l) => [l.getInputAt(0)].flat());
  const sample = model.inputs.map((t, i) =>
    tf.randomUniform([rows, ...(t.shape.slice(1) as number[])], 0, 1, t.dtype === 'int32' ? 'int32' : 'float32', seed + i),
  );
  const valueOf = new Map<number, tf.Tensor>(model.inputs.map((t, i) => [t.id, sample[i]!]));
  const inner = [
    ...new Map(
      symbolsOf
        .flat()
        .filter((s) => !valueOf.has(s.id))
        .map((s) => [s.id, s]),
    ).values(),
  ];
  const values: tf.Tensor[] = inner.length ? [tf.model({ inputs: model.inputs, outputs: inner }).predict(sample)].flat() : [];
  inner.forEach((s, i) => valueOf.set(s.id, values[i]!));
  return { layers, inputs: symbolsOf.map((ss) => ss.map((s) => valueOf.get(s.id)!)), dispose: () => tf.dispose([...sample, ...values]) };
}
