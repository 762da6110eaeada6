import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { Bus, createPipeline, subjects } from '../../src/index.js';
import { decodeMessage, type StatsMessage } from '../../src/protocol/messages.js';
import { countingLock } from '../helpers/countingLock.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('stage counters', () => {
  it('are published on troupe.<job>.stats.<rank> after every step and add up', async () => {
    const pipe = await createPipeline({
      model: mlp([6, 8, 8, 2], 3), stages: 2, microbatches: 4, schedule: 'gpipe', job: 'stats',
      optimizer: tf.train.sgd(0.1), loss: 'categoricalCrossentropy', nats: { servers: nats.server.url },
    });
    const spy = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const got: StatsMessage[] = [];
    const lock = countingLock(6);
    for (const r of [0, 1]) spy.subscribe(subjects.statsSubject('stats', r), (m) => {
      got.push(decodeMessage('stats', m.data));
      lock.count();
    });
    await spy.flush();
    const { x, y } = data(8, 6, 2);
    try {
      for (let s = 0; s < 3; s++) await pipe.trainStep(x, y);
      await lock.wait(5_000);
      const last = got.filter((g) => g.step === 3);
      expect(last.map((g) => g.rank).sort()).toEqual([0, 1]);
      for (const g of last) {
        expect(g.forwards).toBe(12);
        expect(g.backwards).toBe(12);
        expect(g.peakHeld).toBe(4);
        expect(g.busyMs).toBeGreaterThan(0);
        expect(g.idleMs).toBeGreaterThanOrEqual(0);
        expect(g.bytesIn).toBeGreaterThan(0);
        expect(g.bytesOut).toBeGreaterThan(0);
      }
      const local = pipe.stats();
      expect(local[1]!.forwards).toBe(12);
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
