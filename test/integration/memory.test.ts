import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('tensor lifetime', () => {
  it.each(['1f1b', 'gpipe'])('%s: tf.memory().numTensors is the same after step 2 and step 10', async (schedule) => {
    const model = mlp([10, 24, 24, 3], 3);
    const pipe = await createPipeline({
      model,
      stages: 3,
      microbatches: 4,
      schedule,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      metric: 'accuracy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(16, 10, 3);
    try {
      await pipe.trainStep(x, y);
      await pipe.trainStep(x, y);
      const afterTwo = tf.memory().numTensors;
      for (let s = 3; s <= 10; s++) {
        await pipe.trainStep(x, y);
        if (s % 3 === 0) await pipe.evaluate(x, y);
      }
      expect(tf.memory().numTensors).toBe(afterTwo);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});

describe('closing', () => {
  it.each([1, 2])(
    "replicas %i: after a step, close() frees every tensor the pipeline made (its replicas' clones too) and leaves the model the caller's",
    async (replicas) => {
      const model = mlp([10, 24, 24, 3], 3);
      const { x, y } = data(16, 10, 3);
      const before = tf.memory().numTensors;
      const pipe = await createPipeline({
        model,
        stages: 3,
        replicas,
        microbatches: 2,
        optimizer: { className: 'Adam', config: { learningRate: 0.01 } },
        loss: 'categoricalCrossentropy',
        nats: { servers: nats.server.url },
      });
      try {
        await pipe.trainStep(x, y);
      } finally {
        await pipe.close();
      }
      expect(tf.memory().numTensors).toBe(before);
      // The caller's model still works: its weights were not freed.
      const out = model.predict(x) as tf.Tensor;
      expect(out.shape).toEqual([16, 3]);
      tf.dispose([out, x, y]);
    },
  );
});
