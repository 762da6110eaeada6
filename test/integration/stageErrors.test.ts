import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ConfigError, createPipeline, StageError } from '../../src/index.js';
import { data, maxRelDiff, mlp, mlpAndReference, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('a failing stage', () => {
  it('fails the step with the stage and key, applies nothing, and the next step trains', async () => {
    const SIZES = [6, 12, 12, 3];
    const { model, ref } = mlpAndReference(SIZES, 31, tf.train.adam(0.01));
    let armed = false;
    const loss = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      if (armed) throw new Error('loss exploded');
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    const pipe = await createPipeline({
      model,
      stages: 3,
      microbatches: 4,
      schedule: '1f1b',
      job: 'failing',
      optimizer: tf.train.adam(0.01),
      loss,
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(12, SIZES[0]!, 3, 4);
    try {
      await stepBoth(pipe, ref, x, y);
      const tensorsBefore = tf.memory().numTensors;
      armed = true;
      const err = await pipe.trainStep(x, y).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StageError);
      expect((err as StageError).rank).toBe(2);
      // The last stage computes the loss in its forward (under the held tape).
      expect((err as StageError).key).toBe('failing/2/2F0');
      expect((err as Error).message).toMatch(/loss exploded/);
      armed = false;
      await stepBoth(pipe, ref, x, y);
      // The failed step left no gradient behind: two good steps equal two reference steps.
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      // Nor any tensor (the reference model's optimizer made its slots before the first count).
      expect(tf.memory().numTensors).toBe(tensorsBefore);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('bad options fail before anything starts, naming the field', async () => {
    const model = mlp([4, 8, 2], 41);
    const base = { model, stages: 2, microbatches: 2, optimizer: tf.train.sgd(0.1), loss: 'categoricalCrossentropy', nats: { servers: nats.server.url } };
    await expect(createPipeline({ ...base, schedule: 'zigzag' })).rejects.toThrow(/unknown schedule "zigzag"/);
    await expect(createPipeline({ ...base, microbatches: 0 })).rejects.toThrow(ConfigError);
    await expect(createPipeline({ ...base, loss: 'noSuchLoss' })).rejects.toThrow(/noSuchLoss/);
    await expect(createPipeline({ ...base, stages: 5 })).rejects.toThrow(/cannot cut 2 layers into 5 stages/);
    await expect(createPipeline({ ...base, model: {} as tf.LayersModel })).rejects.toThrow(/model must be a tf.LayersModel/);
    const pipe = await createPipeline(base);
    try {
      const { x, y } = data(1, 4, 2);
      await expect(pipe.trainStep(x, y)).rejects.toThrow(/cannot be split into 2 microbatches/);
      await expect(pipe.trainStep(x, tf.zeros([3, 2]))).rejects.toThrow(/same batch dimension/);
    } finally {
      await pipe.close();
    }
  });
});
