import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { copyWeights, maxRelDiff, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

function convNet(seed: number): tf.LayersModel {
  const m = tf.sequential();
  m.add(
    tf.layers.conv2d({
      inputShape: [10, 10, 2],
      filters: 4,
      kernelSize: 3,
      padding: 'same',
      activation: 'relu',
      kernelInitializer: tf.initializers.glorotUniform({ seed }),
    }),
  );
  m.add(tf.layers.maxPooling2d({ poolSize: 2 }));
  m.add(tf.layers.conv2d({ filters: 6, kernelSize: 3, strides: 2, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }));
  m.add(tf.layers.flatten());
  m.add(tf.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 2 }) }));
  return m;
}

describe('a conv net on the wasm backend', () => {
  it('trains over NATS in 2 stages exactly as trainOnBatch (4-D activations, Troupe conv kernels)', async () => {
    const model = convNet(3);
    const ref = convNet(30);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.adam(0.01), loss: 'categoricalCrossentropy' });
    const pipe = await createPipeline({
      model,
      stages: [2],
      microbatches: 3,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const x = tf.randomUniform([12, 10, 10, 2], -1, 1, 'float32', 4);
    const y = tf.oneHot(tf.tensor1d([0, 1, 2, 0, 1, 2, 2, 1, 0, 0, 1, 2], 'int32'), 3).toFloat();
    try {
      expect(pipe.partitions[1]!.inputs[0]!.shape).toEqual([5, 5, 4]); // a 4-D activation crosses the cut
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
