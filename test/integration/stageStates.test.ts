import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { Bus } from '../../src/transport/index.js';
import { dumpStates, loadStates } from '../../src/runtime/stageStates.js';
import { data, maxRelDiff, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('stage state over NATS', () => {
  it('dumped from one pipeline and loaded into another, Adam moments included, trains on identically', async () => {
    const SIZES = [6, 10, 10, 3];
    const a = mlp(SIZES, 81);
    const b = mlp(SIZES, 82); // other initial weights
    const opts = { stages: 2, microbatches: 2, optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy', nats: { servers: nats.server.url } };
    const pa = await createPipeline({ ...opts, model: a, job: 'state-a' });
    const pb = await createPipeline({ ...opts, model: b, job: 'state-b' });
    const bus = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const { x, y } = data(8, SIZES[0]!, 3, 6);
    try {
      await pa.trainStep(x, y);
      await pa.trainStep(x, y);
      const states = await dumpStates(bus, 'state-a', 2);
      expect(states.map((s) => s.step)).toEqual([2, 2]);
      expect(states[0]!.weightNames).toEqual(a.layers[0]!.weights.map((w) => w.originalName));
      expect(states[0]!.optimizerNames.length).toBeGreaterThan(1); // iteration + first and second moments
      expect(maxRelDiff(a, b)).toBeGreaterThan(1e-2);
      // Pipeline B has taken no step: its stages take the state as their step 0.
      await loadStates(
        bus,
        'state-b',
        states.map((s) => ({ ...s, step: 0 })),
      );
      expect(maxRelDiff(b, a)).toBe(0);
      for (let s = 0; s < 2; s++) {
        await pa.trainStep(x, y);
        await pb.trainStep(x, y);
      }
      // Adam's running products travel with the state: the same bytes, not float32 noise.
      const bytes = async (m: tf.LayersModel) =>
        Promise.all(
          m.weights.map(async (w) => {
            const d = await w.read().data();
            return Buffer.from(d.buffer, d.byteOffset, d.byteLength);
          }),
        );
      expect(Buffer.concat(await bytes(b)).equals(Buffer.concat(await bytes(a)))).toBe(true);
      // A state of the wrong shape is refused by the stage, naming the weight.
      const bad = states.map((s) => ({ ...s, step: 9, tensors: s.tensors.map((t, i) => (i === 0 ? { ...t, shape: [t.shape[1]!, t.shape[0]!] } : t)) }));
      await expect(loadStates(bus, 'state-b', bad.slice(0, 1))).rejects.toThrow(/weight dense_Dense\d*\/kernel has shape \[10,6\]/);
    } finally {
      await bus.close();
      await pa.close();
      await pb.close();
      tf.dispose([x, y]);
    }
  });

  it('collects chunked states of several stages at once (each stage over max_payload)', async () => {
    const model = mlp([784, 640, 640, 10], 83); // ~2 MB of weights per stage: several chunks each
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 2,
      optimizer: tf.train.adam(0.001),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
      job: 'state-big',
    });
    const bus = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const { x, y } = data(4, 784, 10, 2);
    try {
      await pipe.trainStep(x, y);
      const states = await dumpStates(bus, 'state-big', 2);
      const bytes = states.map((s) => s.tensors.reduce((n, t) => n + t.data.byteLength, 0));
      for (const b of bytes) expect(b).toBeGreaterThan(2 * bus.maxPayload);
      const w = model.layers[0]!.getWeights()[0]!.dataSync();
      expect(Array.from(states[0]!.tensors[0]!.data.subarray(0, 50))).toEqual(Array.from(w.subarray(0, 50)));
    } finally {
      await bus.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
