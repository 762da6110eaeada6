import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { parseScheduleTable } from '../../src/schedule/index.js';
import { copyWeights, data, maxRelDiff, mlp, mlpAndReference, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

const OPTIMIZERS: Record<string, () => tf.Optimizer> = {
  momentum: () => tf.train.momentum(0.05, 0.9, true),
  rmsprop: () => tf.train.rmsprop(0.01, 0.9, 0.1),
  adagrad: () => tf.train.adagrad(0.1),
  adamax: () => tf.train.adamax(0.01),
};

describe('any tf.train optimizer, any tfjs loss', () => {
  it.each(Object.keys(OPTIMIZERS))('%s: 3 steps on 2 stages equal single-process training', async (name) => {
    const SIZES = [8, 12, 12, 3];
    const model = mlp(SIZES, 51);
    const ref = mlp(SIZES, 52);
    copyWeights(model, ref);
    ref.compile({ optimizer: OPTIMIZERS[name]!(), loss: 'categoricalCrossentropy' });
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 3,
      optimizer: OPTIMIZERS[name]!(),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(9, SIZES[0]!, 3, 2);
    try {
      for (let s = 0; s < 3; s++) {
        await stepBoth(pipe, ref, x, y);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('meanSquaredError regression with uneven microbatches (10 = 4 + 3 + 3) and an optimizer factory', async () => {
    const build = (seed: number) => {
      const m = tf.sequential();
      m.add(tf.layers.dense({ units: 6, inputShape: [4], activation: 'tanh', kernelInitializer: tf.initializers.glorotUniform({ seed }) }));
      m.add(tf.layers.dense({ units: 2, kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }));
      return m;
    };
    const model = build(60);
    const ref = build(70);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.sgd(0.05), loss: 'meanSquaredError' });
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 3,
      schedule: 'gpipe',
      optimizer: () => tf.train.sgd(0.05),
      loss: 'meanSquaredError',
      nats: { servers: nats.server.url },
    });
    const x = tf.linspace(-1, 1, 40).reshape([10, 4]);
    const y = tf.concat([tf.sum(x, 1, true), tf.sin(tf.slice(x, [0, 0], [10, 1]))], 1);
    try {
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        expect(r.microbatchLosses).toHaveLength(3);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('a hand-written schedule table trains like single-process tfjs, holding what its table says', async () => {
    const table = parseScheduleTable('0: F0 F1 B0 F2 B1 B2\n1: F0 F1 B0 B1 F2 B2\n');
    const SIZES = [8, 12, 3];
    const { model, ref } = mlpAndReference(SIZES, 71, tf.train.adam(0.01));
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 3,
      schedule: table,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(9, SIZES[0]!, 3, 5);
    try {
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        expect(r.peakHeld).toEqual([2, 2]);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      // A table for other sizes is refused before anything starts.
      await expect(
        createPipeline({
          model,
          stages: 2,
          microbatches: 4,
          schedule: table,
          optimizer: tf.train.sgd(0.1),
          loss: 'categoricalCrossentropy',
          nats: { servers: nats.server.url },
        }),
      ).rejects.toThrow(/action 0F3 is missing/);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
