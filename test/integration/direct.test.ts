import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

/** Every weight of the model, as bytes. */
async function weightBytes(model: tf.LayersModel): Promise<Buffer[]> {
  return Promise.all(model.getWeights().map(async (w) => Buffer.from(new Uint8Array(((await w.data()) as Float32Array).buffer))));
}

/**
 * Three steps of a 3-stage 1F1B pipeline whose activations and gradients are 96 KB per
 * microbatch (48 rows x 512), over the direct path or NATS only.
 */
async function train(direct: boolean): Promise<{ weights: Buffer[]; directOut: number[]; bytesOut: number[]; rejected: number }> {
  const model = mlp([32, 512, 512, 4], 21);
  const pipe = await createPipeline({
    model,
    stages: 3,
    microbatches: 4,
    schedule: '1f1b',
    job: `direct-${direct ? 'on' : 'off'}`,
    optimizer: tf.train.sgd(0.05),
    loss: 'categoricalCrossentropy',
    nats: { servers: nats.server.url, direct },
  });
  const { x, y } = data(192, 32, 4, 22);
  try {
    for (let s = 0; s < 3; s++) await pipe.trainStep(x, y);
    const stats = pipe.stats();
    return {
      weights: await weightBytes(model),
      directOut: stats.map((s) => s.directBytesOut ?? 0),
      bytesOut: stats.map((s) => s.bytesOut),
      rejected: stats.reduce((n, s) => n + s.rejected, 0),
    };
  } finally {
    await pipe.close();
    tf.dispose([x, y]);
  }
}

describe('a pipeline over the direct path', () => {
  it('trains to the same bytes as over NATS, with its activations and gradients on direct links', async () => {
    const viaNats = await train(false);
    const viaDirect = await train(true);
    expect(viaDirect.weights).toEqual(viaNats.weights);
    expect(viaNats.directOut).toEqual([0, 0, 0]);
    // Every stage sent frames over links once they were up (the first ones of step 1 go over NATS while they come up).
    for (const r of [0, 1, 2]) expect(viaDirect.directOut[r], `stage ${r}`).toBeGreaterThan(0);
    // The byte counters count both paths: the same frames went out either way (the events' JSON and the offers differ by a little).
    viaDirect.bytesOut.forEach((b, r) => expect(Math.abs(b - viaNats.bytesOut[r]!), `stage ${r}`).toBeLessThan(4096));
    expect(viaDirect.rejected).toBe(0);
  });
});
