/**
 * Training, evaluation and prediction interleaved freely on one pipeline, and gradient
 * accumulation across trainStep calls: the same results as the same calls on a
 * single-process model.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { copyWeights, data, maxAbsDiff, maxRelDiff, mlp, mlpAndReference } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const SIZES = [7, 12, 12, 3];

function maxDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

describe('train, evaluate and predict on one pipeline', () => {
  it.each([
    { stages: 1, replicas: 1 },
    { stages: 3, replicas: 1 },
    { stages: 2, replicas: 2 },
  ])('5 rounds of trainStep / evaluate / predict equal single-process tfjs ($stages stages, $replicas replicas)', async ({ stages, replicas }) => {
    const model = mlp(SIZES, 61);
    const ref = mlp(SIZES, 62);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy', metrics: ['accuracy'] });
    const pipe = await createPipeline({
      model,
      stages,
      replicas,
      microbatches: 3,
      optimizer: tf.train.adam(0.02),
      loss: 'categoricalCrossentropy',
      metric: 'accuracy',
      nats: { servers: nats.server.url },
    });
    try {
      for (let round = 0; round < 5; round++) {
        const train = data(12, SIZES[0]!, 3, 100 + round);
        const held = data(10, SIZES[0]!, 3, 200 + round);
        const r = await pipe.trainStep(train.x, train.y);
        const [refLoss] = (await ref.trainOnBatch(train.x, train.y)) as number[];
        expect(Math.abs(r.loss - refLoss!) / refLoss!).toBeLessThan(1e-5);
        const e = await pipe.evaluate(held.x, held.y);
        const [el, em] = ref.evaluate(held.x, held.y) as tf.Scalar[];
        expect(Math.abs(e.loss - el!.dataSync()[0]!)).toBeLessThan(1e-5);
        expect(Math.abs(e.metric! - em!.dataSync()[0]!)).toBeLessThan(1e-6);
        const [y] = await pipe.predict(held.x);
        const want = ref.predict(held.x) as tf.Tensor;
        expect(y!.shape).toEqual([10, 3]);
        expect(maxDiff(y!, want)).toBeLessThan(1e-5);
        tf.dispose([train.x, train.y, held.x, held.y, y!, want, el!, em!]);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
    }
  });

  it('accumulate: 2 trainStep calls make one update equal to one step on their concatenation, with evaluate and predict between', async () => {
    const { model, ref } = mlpAndReference(SIZES, 63, tf.train.adam(0.02));
    const pipe = await createPipeline({
      model,
      stages: 2,
      accumulate: 2,
      microbatches: 2,
      optimizer: tf.train.adam(0.02),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    try {
      for (let round = 0; round < 3; round++) {
        const a = data(8, SIZES[0]!, 3, 300 + round);
        const b = data(8, SIZES[0]!, 3, 400 + round);
        const before = model.getWeights().map((w) => w.clone());
        await pipe.trainStep(a.x, a.y);
        // No update yet: the weights are untouched, and evaluation and prediction see them so.
        expect(Math.max(...model.getWeights().map((w, i) => maxDiff(w, before[i]!)))).toBe(0);
        const [y] = await pipe.predict(a.x);
        expect(maxDiff(y!, ref.predict(a.x) as tf.Tensor)).toBeLessThan(1e-5);
        await pipe.evaluate(b.x, b.y);
        await pipe.trainStep(b.x, b.y);
        const x = tf.concat([a.x, b.x]);
        const t = tf.concat([a.y, b.y]);
        await ref.trainOnBatch(x, t);
        expect(maxAbsDiff(model, ref)).toBeLessThan(1e-5);
        tf.dispose([a.x, a.y, b.x, b.y, x, t, y!, ...before]);
      }
    } finally {
      await pipe.close();
    }
  });
});
