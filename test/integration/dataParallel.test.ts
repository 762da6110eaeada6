/**
 * Data parallel x pipeline parallel: 2 replicas of a 2-stage pipeline over a real
 * nats-server. Each step splits the batch over the replicas; the stages sum their gradients
 * with their replica's over NATS at UPDATE. Both replicas end equal, and equal to
 * single-process training on the whole batch.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ConfigError, StageError, createPipeline } from '../../src/index.js';
import { copyWeights, data, maxAbsDiff, maxRelDiff, mlp, mlpAndReference, stepBoth } from '../helpers/models.js';
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
      model,
      stages: 2,
      replicas: 2,
      microbatches: 3,
      schedule,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      metric: 'accuracy',
      nats: { servers: nats.server.url },
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

describe('replicas under bad calls', () => {
  it('a predict refused for too few rows (10 rows, 3 replicas x 4 microbatches) starts nothing; the next trainStep equals trainOnBatch', async () => {
    const SIZES = [6, 12, 12, 3];
    const { model, ref } = mlpAndReference(SIZES, 51, tf.train.adam(0.01));
    const pipe = await createPipeline({
      model,
      stages: 2,
      replicas: 3,
      microbatches: 4,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
      stepTimeoutMs: 20_000,
    });
    const few = tf.zeros([10, SIZES[0]!]);
    const { x, y } = data(30, SIZES[0]!, 3, 5); // 10 rows a replica
    try {
      const err = await pipe.predict(few).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(ConfigError);
      expect((err as Error).message).toMatch(/a batch of 10 rows cannot be split over 3 replicas x 4 microbatches: it needs at least 12 rows/);
      // A refused trainStep (labels of another batch size) starts nothing either.
      await expect(pipe.trainStep(x, tf.zeros([29, 3]))).rejects.toThrow(/same batch dimension 30/);
      // Every replica still at the same step: the next step trains, and equals trainOnBatch.
      for (let s = 0; s < 2; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      for (const m of pipe.models.slice(1)) expect(maxAbsDiff(m, model)).toBe(0);
      // And a prediction on enough rows is the model's own.
      const [out] = await pipe.predict(x);
      const want = model.predict(x) as tf.Tensor;
      expect(tf.tidy(() => tf.max(tf.abs(tf.sub(out!, want))).dataSync()[0]!)).toBeLessThan(1e-6);
      tf.dispose([out!, want]);
    } finally {
      await pipe.close();
      tf.dispose([few, x, y]);
    }
  });

  it('with accumulate: 2, a refused call does not shift the cycle: the next two calls make one update', async () => {
    const SIZES = [6, 12, 12, 3];
    const { model, ref } = mlpAndReference(SIZES, 55, tf.train.adam(0.02));
    const pipe = await createPipeline({
      model,
      stages: 2,
      replicas: 2,
      accumulate: 2,
      microbatches: 2,
      optimizer: tf.train.adam(0.02),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const a = data(8, SIZES[0]!, 3, 70);
    const b = data(8, SIZES[0]!, 3, 71);
    const few = data(3, SIZES[0]!, 3, 72);
    try {
      await expect(pipe.trainStep(few.x, few.y)).rejects.toThrow(/a batch of 3 rows cannot be split over 2 replicas x 2 microbatches/);
      const before = model.getWeights().map((w) => w.clone());
      await pipe.trainStep(a.x, a.y);
      // The first of two: no update yet.
      expect(Math.max(...model.getWeights().map((w, i) => tf.tidy(() => tf.max(tf.abs(tf.sub(w, before[i]!))).dataSync()[0]!)))).toBe(0);
      await pipe.trainStep(b.x, b.y);
      const x = tf.concat([a.x, b.x]);
      const y = tf.concat([a.y, b.y]);
      await ref.trainOnBatch(x, y);
      expect(maxAbsDiff(model, ref)).toBeLessThan(1e-5);
      tf.dispose([x, y, ...before]);
    } finally {
      await pipe.close();
      tf.dispose([a.x, a.y, b.x, b.y, few.x, few.y]);
    }
  });

  it('a loss that throws on one replica fails the step on every replica; nothing is applied and the next step equals trainOnBatch', async () => {
    const SIZES = [6, 12, 12, 3];
    const { model, ref } = mlpAndReference(SIZES, 53, tf.train.adam(0.01));
    // 23 rows over 2 replicas x 3 microbatches: replica 0 gets [4, 4, 4], replica 1 [4, 4, 3]:
    // only replica 1 ever sees a microbatch of 3 rows.
    let armed = false;
    const loss = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      if (armed && yTrue.shape[0] === 3) throw new Error('loss exploded');
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    const pipe = await createPipeline({
      model,
      stages: 2,
      replicas: 2,
      microbatches: 3,
      optimizer: tf.train.adam(0.01),
      loss,
      nats: { servers: nats.server.url },
      stepTimeoutMs: 20_000,
    });
    const { x, y } = data(23, SIZES[0]!, 3, 6);
    try {
      await stepBoth(pipe, ref, x, y);
      armed = true;
      const err = await pipe.trainStep(x, y).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StageError);
      expect((err as Error).message).toMatch(/loss exploded/);
      // Replica 1's job, its last stage, the forward of its 3-row microbatch.
      expect((err as StageError).key).toBe(`${pipe.job}.r1/2/1F2`);
      // Overlapped calls: the failing one's successor is dropped on every replica, unrun.
      const failing = pipe.trainStep(x, y).catch((e: unknown) => e);
      const dropped = pipe.trainStep(x, y).catch((e: unknown) => e);
      expect(await failing).toBeInstanceOf(StageError);
      expect(((await dropped) as Error).message).toMatch(/step 4 was not run/);
      // An evaluation that fails on replica 1 only.
      await expect(pipe.evaluate(x, y)).rejects.toThrow(/loss exploded/);
      armed = false;
      for (let s = 0; s < 2; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      expect(maxAbsDiff(pipe.models[1]!, model)).toBe(0);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
