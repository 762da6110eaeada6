/**
 * Stages of one process hand their tensors over by hand (`handoff: true`, the default on GPU
 * backends): activations, gradients and the driver's inputs stay on the device and never cross
 * nats-server, the weights still equal single-process tfjs, and no tensor is left behind by a
 * step that fails half-way.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Bus } from '../../src/transport/bus.js';
import { createPipeline } from '../../src/index.js';
import { copyWeights, data, maxRelDiff, mlp, mlpAndReference } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

/** Counts the tensor frames (INPUT, FORWARD, BACKWARD) that cross the server for `job`. */
async function frameSpy(job: string): Promise<{ count(): Promise<number>; close(): Promise<void> }> {
  const bus = await Bus.connect({ servers: nats.server.url, role: 'admin' });
  let n = 0;
  bus.subscribe(`troupe.${job}.stage.*.*`, (m) => {
    if (!m.subject.endsWith('.UPDATE')) n++;
  });
  await bus.flush();
  return {
    count: async () => {
      await bus.flush();
      return n;
    },
    close: () => bus.close(),
  };
}

describe('tensors handed over between stages of one process', () => {
  it.each([true, false])('handoff %s: 3 stages x 3 Adam steps equal single-process tfjs; frames on the wire only without handoff', async (handoff) => {
    const SIZES = [8, 16, 12, 10, 4];
    const { model, ref } = mlpAndReference(SIZES, 71, tf.train.adam(0.01));
    const job = `handoff-${handoff}`;
    const spy = await frameSpy(job);
    const pipe = await createPipeline({
      model,
      job,
      stages: 3,
      microbatches: 4,
      handoff,
      optimizer: tf.train.adam(0.01),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(16, SIZES[0]!, 4, 8);
    try {
      for (let s = 0; s < 3; s++) {
        const r = await pipe.trainStep(x, y);
        expect(r.loss).toBeCloseTo((await ref.trainOnBatch(x, y)) as number, 5);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      // 3 steps x 4 microbatches: INPUT x and labels, 2 FORWARD and 2 BACKWARD hops each.
      expect(await spy.count()).toBe(handoff ? 0 : 3 * 4 * 6);
    } finally {
      await pipe.close();
      await spy.close();
      tf.dispose([x, y]);
    }
  });

  it('labels the driver adapts stay on the device: [n] for an [n, 1] output, int32 one-hot for categorical cross-entropy', async () => {
    const { x, y } = data(12, 8, 3, 12);
    const column = tf.tidy(() => tf.sum(y, 1)); // [n] where the model outputs [n, 1]
    const ids = tf.cast(y, 'int32'); // one-hot as int32
    const cases = [
      { out: 1, loss: 'meanSquaredError', labels: column, ref: tf.reshape(column, [12, 1]) },
      { out: 3, loss: 'categoricalCrossentropy', labels: ids, ref: y },
    ] as const;
    try {
      for (const c of cases) {
        const model = mlp([8, 10, c.out], 74);
        const ref = mlp([8, 10, c.out], 75);
        copyWeights(model, ref);
        ref.compile({ optimizer: tf.train.sgd(0.1), loss: c.loss });
        const pipe = await createPipeline({
          model,
          stages: 2,
          microbatches: 3,
          handoff: true,
          optimizer: tf.train.sgd(0.1),
          loss: c.loss,
          nats: { servers: nats.server.url },
        });
        try {
          const before = tf.memory().numTensors;
          for (let s = 0; s < 2; s++) expect((await pipe.trainStep(x, c.labels)).loss).toBeCloseTo((await ref.trainOnBatch(x, c.ref)) as number, 5);
          expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
          // The reshaped and cast labels were freed with their step.
          await pipe.trainStep(x, c.labels);
          const third = tf.memory().numTensors;
          await pipe.trainStep(x, c.labels);
          expect(tf.memory().numTensors).toBe(third);
          expect(third).toBeGreaterThanOrEqual(before);
        } finally {
          await pipe.close();
        }
      }
    } finally {
      tf.dispose([x, y, column, ids, cases[0].ref]);
    }
  });

  it('a step that fails half-way frees every tensor handed over, and the next steps train and stay flat', async () => {
    const SIZES = [8, 16, 12, 4];
    const model = mlp(SIZES, 73);
    let explode = false;
    const loss = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      if (explode) throw new Error('loss exploded');
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    // GPipe: stage 0 forwards every microbatch before any backward, so frames wait in the inboxes when the last stage fails.
    const pipe = await createPipeline({
      model,
      stages: 3,
      microbatches: 4,
      schedule: 'gpipe',
      handoff: true,
      optimizer: tf.train.adam(0.01),
      loss,
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(16, SIZES[0]!, 4, 9);
    try {
      await pipe.trainStep(x, y);
      await pipe.trainStep(x, y);
      const flat = tf.memory().numTensors;
      explode = true;
      await expect(pipe.trainStep(x, y)).rejects.toThrow(/loss exploded/);
      explode = false;
      await pipe.trainStep(x, y);
      expect(tf.memory().numTensors).toBe(flat);
      await pipe.trainStep(x, y);
      expect(tf.memory().numTensors).toBe(flat);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
