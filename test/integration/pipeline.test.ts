import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { copyWeights, data, maxRelDiff, mlp, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';
import { inFlightBounds } from '../../src/schedule/constraint.js';

const nats = useNatsServer();

const SIZES = [12, 16, 16, 12, 3];
const CASES = [1, 2, 4].flatMap((stages) =>
  (['gpipe', '1f1b'] as const).flatMap((schedule) => (['sgd', 'adam'] as const).map((opt) => ({ stages, schedule, opt }))),
);

const optimizer = (name: 'sgd' | 'adam') => (name === 'sgd' ? tf.train.sgd(0.1) : tf.train.adam(0.01));

describe('pipeline over a real nats-server', () => {
  it.each(CASES)('$stages stages, $schedule, $opt: 3 steps equal single-process training', async ({ stages, schedule, opt }) => {
    const model = mlp(SIZES, 5);
    const ref = mlp(SIZES, 6);
    copyWeights(model, ref);
    ref.compile({ optimizer: optimizer(opt), loss: 'categoricalCrossentropy' });
    const m = 4;
    const pipe = await createPipeline({
      model,
      stages,
      microbatches: m,
      schedule,
      optimizer: optimizer(opt),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(20, SIZES[0]!, 3, stages * 7);
    try {
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        // The consume constraint, as the stages recorded it: 1F1B holds at most p - rank, GPipe m.
        r.peakHeld.forEach((h, rank) => expect(h).toBeLessThanOrEqual(schedule === '1f1b' ? stages - rank : m));
        if (schedule === 'gpipe') expect(r.peakHeld).toEqual(new Array(stages).fill(m));
        else expect(r.peakHeld).toEqual(Array.from({ length: stages }, (_, rank) => Math.min(m, stages - rank)));
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it.each([2, 4].flatMap((stages) => (['sgd', 'adam'] as const).map((opt) => ({ stages, opt }))))(
    "$stages stages, ZB-H1 (B and W apart), $opt: 3 steps equal single-process training, held within 1F1B's peak",
    async ({ stages, opt }) => {
      const model = mlp(SIZES, 5);
      const ref = mlp(SIZES, 6);
      copyWeights(model, ref);
      ref.compile({ optimizer: optimizer(opt), loss: 'categoricalCrossentropy' });
      const m = 6;
      const pipe = await createPipeline({
        model,
        stages,
        microbatches: m,
        schedule: 'zbh1',
        optimizer: optimizer(opt),
        loss: 'categoricalCrossentropy',
        nats: { servers: nats.server.url },
      });
      const { x, y } = data(24, SIZES[0]!, 3, stages * 5);
      try {
        for (let s = 0; s < 3; s++) {
          const [r, refLoss] = await stepBoth(pipe, ref, x, y);
          expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
          // Held from F to W, as the schedule's rows bound it, never above 1F1B's peak (p).
          expect(r.peakHeld).toEqual(inFlightBounds(pipe.schedule));
          expect(Math.max(...r.peakHeld)).toBeLessThanOrEqual(stages);
        }
        const w = pipe.stats().map((st) => st.weightGrads);
        expect(w).toEqual(new Array(stages).fill(3 * m));
        expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      } finally {
        await pipe.close();
        tf.dispose([x, y]);
      }
    },
  );

  it.each([
    { schedule: 'interleaved', devices: 2, v: 2, m: 4 },
    { schedule: 'interleaved', devices: 2, v: 3, m: 4 },
    { schedule: 'loopedbfs', devices: 2, v: 2, m: 3 },
  ] as const)('$schedule, $devices devices x $v virtual stages, m=$m: 3 Adam steps equal single-process training', async ({ schedule, devices, v, m }) => {
    const sizes = [12, 16, 16, 16, 16, 16, 12, 3];
    const model = mlp(sizes, 5);
    const ref = mlp(sizes, 6);
    copyWeights(model, ref);
    ref.compile({ optimizer: optimizer('adam'), loss: 'categoricalCrossentropy' });
    const pipe = await createPipeline({
      model,
      stages: devices * v,
      virtualStages: v,
      microbatches: m,
      schedule,
      optimizer: optimizer('adam'),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(16, sizes[0]!, 3, 9);
    try {
      expect(pipe.devices).toHaveLength(devices);
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        expect(r.peakHeld).toEqual(inFlightBounds(pipe.schedule));
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it("balance: 'time' cuts by measured layer time and still trains like single-process tfjs", async () => {
    const sizes = [12, 16, 16, 12, 3];
    const model = mlp(sizes, 5);
    const ref = mlp(sizes, 6);
    copyWeights(model, ref);
    ref.compile({ optimizer: optimizer('sgd'), loss: 'categoricalCrossentropy' });
    const pipe = await createPipeline({
      model,
      stages: 2,
      balance: 'time',
      microbatches: 2,
      optimizer: optimizer('sgd'),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(8, sizes[0]!, 3, 4);
    try {
      expect(pipe.partitions.map((p) => p.layers.length).reduce((a, b) => a + b)).toBe(4);
      for (let s = 0; s < 2; s++) await stepBoth(pipe, ref, x, y);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
    await expect(
      createPipeline({
        model,
        stages: 2,
        balance: 'speed' as never,
        microbatches: 2,
        optimizer: optimizer('sgd'),
        loss: 'categoricalCrossentropy',
        nats: { servers: nats.server.url },
      }),
    ).rejects.toThrow(/balance must be "params" or "time"/);
  });
});
