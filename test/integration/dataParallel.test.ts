/**
 * Data parallel x pipeline parallel: 2 replicas of a 2-stage pipeline over a real
 * nats-server. Each step splits the batch over the replicas; the stages sum their gradients
 * with their replica's over NATS at UPDATE. Both replicas end equal, and equal to
 * single-process training on the whole batch.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { copyWeights, data, maxAbsDiff, maxRelDiff, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('replicas x stages', () => {
  it.each(['1f1b', 'zbh1'] as const)('2 replicas x 2 stages (%s, Adam): both replicas equal single-process training, and each other', async (schedule) => {
    const SIZES = [10, 16, 16, 4];
    const model = mlp(SIZES, 41);
    const ref = mlp(SIZES, 42);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.adam(0.01), loss: 'categoricalCrossentropy', metrics: ['accuracy'] });
    const pipe = await createPipeline({
      model, stages: 2, replicas: 2, microbatches: 3, schedule, optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy', metric: 'accuracy', nats: { servers: nats.server.url },
    });
    const { x, y } = data(26, SIZES[0]!, 4, 9); // 13 rows per replica, uneven microbatches
    try {
      expect(pipe.replicas).toBe(2);
      expect(pipe.models).toHaveLength(2);
      for (let s = 0; s < 3; s++) {
        const r = await pipe.trainStep(x, y);
        const [refLoss] = (await ref.trainOnBatch(x, y)) as number[];
        expect(Math.abs(r.loss - refLoss!) / refLoss!).toBeLessThan(1e-5);
        expect(r.microbatchLosses).toHaveLength(6);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      expect(maxRelDiff(pipe.models[1]!, ref)).toBeLessThan(1e-5);
      // The replicas applied the same summed gradients in the same order: the same bits.
      expect(maxAbsDiff(pipe.models[0]!, pipe.models[1]!)).toBe(0);
      const evalPipe = await pipe.evaluate(x, y);
      const [refEval] = ref.evaluate(x, y) as tf.Scalar[];
      expect(Math.abs(evalPipe.loss - refEval!.dataSync()[0]!)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
