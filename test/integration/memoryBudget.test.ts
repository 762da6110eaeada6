/**
 * Memory budgets per stage: a cut is chosen so that every stage's estimate (weights,
 * optimizer state, activations held for backwards) fits; a budget no cut meets fails before
 * any connection, naming the stage; the estimate is compared with what the stages held.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline, PartitionError } from '../../src/index.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const SIZES = [16, 64, 64, 64, 4];
const MiB = 2 ** 20;

describe('memoryBudget', () => {
  it('a budget too small for any cut fails before start, naming the stage and what it needs', async () => {
    const err = await createPipeline({
      model: mlp(SIZES, 71),
      stages: 2,
      microbatches: 4,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      memoryBudget: { bytesPerStage: 20_000, batchSize: 32 },
      nats: { servers: 'nats://127.0.0.1:1' },
    }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(PartitionError);
    expect((err as Error).message).toMatch(
      new RegExp(
        /stage \d needs [\d.]+ MiB \(weights [\d.]+ MiB, optimizer [\d.]+ MiB, activations [\d.]+ MiB\) /.source +
          /even in the best cut into 2 stages; the budget is 0\.02 MiB per stage/.source,
      ),
    );
  });

  it('a feasible budget is met: estimates under it, and the measured peak printed beside them', async () => {
    const budget = 0.2 * MiB;
    const pipe = await createPipeline({
      model: mlp(SIZES, 72),
      stages: 2,
      microbatches: 4,
      schedule: '1f1b',
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      memoryBudget: { bytesPerStage: budget, batchSize: 32 },
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(32, SIZES[0]!, 4, 2);
    try {
      for (let s = 0; s < 2; s++) await pipe.trainStep(x, y);
      const report = await pipe.memory();
      for (const r of report) {
        console.log(
          `stage ${r.rank}: estimate ${(r.estimate.total / MiB).toFixed(3)} MiB (weights ${r.estimate.weights}, optimizer ${r.estimate.optimizer}, ` +
            `activations ${r.estimate.activations} B); measured ${(r.measured.total / MiB).toFixed(3)} MiB (weights ${r.measured.weights}, ` +
            `optimizer ${r.measured.optimizer}, activations ${r.measured.activations} B)`,
        );
        expect(r.estimate.total).toBeLessThanOrEqual(budget);
        // Weights and Adam's two slots per weight are exact; the activations are an estimate of the tape.
        expect(r.measured.weights).toBe(r.estimate.weights);
        expect(r.measured.optimizer).toBe(r.estimate.optimizer);
        // Activations: each layer's tape measured alone on a sample, summed; the last stage's loss adds a little.
        expect(r.measured.activations).toBeGreaterThan(0);
        expect(Math.abs(r.measured.activations - r.estimate.activations)).toBeLessThanOrEqual(0.1 * r.estimate.activations);
        expect(r.measured.total).toBeLessThanOrEqual(budget);
      }
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
