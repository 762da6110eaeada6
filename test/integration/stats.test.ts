import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { subjects } from '../../src/protocol/index.js';
import { Bus } from '../../src/transport/index.js';
import { decodeMessage, type StatsMessage } from '../../src/protocol/messages.js';
import { countingLock } from '../helpers/countingLock.js';
import { data, mlp, slowLoss } from '../helpers/models.js';
import { loneStage } from '../helpers/loneStage.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('stage counters', () => {
  it('are published on troupe.<job>.stats.<rank> after every step and add up', async () => {
    const pipe = await createPipeline({
      model: mlp([6, 8, 8, 2], 3),
      stages: 2,
      microbatches: 4,
      schedule: 'gpipe',
      job: 'stats',
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const spy = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const got: StatsMessage[] = [];
    const lock = countingLock(6);
    for (const r of [0, 1])
      spy.subscribe(subjects.statsSubject('stats', r), (m) => {
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
        // Both stages received frames and handled events: time in the machine and in reading frames,
        // neither more than the stage's whole life in steps (busy + idle covers the steps' wall time).
        expect(g.machineMs).toBeGreaterThan(0);
        expect(g.framesMs).toBeGreaterThan(0);
        expect(g.machineMs + g.framesMs).toBeLessThan(g.busyMs + g.idleMs);
      }
      const local = pipe.stats();
      expect(local[1]!.forwards).toBe(12);
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('count the time the stage machine and frame reading take apart from compute and the update', async () => {
    // Each forward of the only stage takes at least SLOW ms (its loss waits): 2 steps of m = 4
    // are at least 8 x SLOW ms busy. Compute runs outside the machine's event handling; the
    // update runs inside it (the grant makes it start from the last action's end) and counts as busy only.
    const SLOW = 20;
    const { pipe } = await loneStage({ sizes: [10, 16, 12, 3], seed: 51, microbatches: 4, job: 'stats-parts', servers: nats.server.url, loss: slowLoss(SLOW) });
    const { x, y } = data(8, 10, 3, 52);
    try {
      for (let s = 0; s < 2; s++) await pipe.trainStep(x, y);
      const [st] = pipe.stats();
      expect(st!.busyMs).toBeGreaterThanOrEqual(8 * SLOW);
      expect(st!.machineMs).toBeGreaterThan(0);
      expect(st!.framesMs).toBeGreaterThan(0);
      // Were compute counted as the machine's, it would hold at least 8 x SLOW ms.
      expect(st!.machineMs).toBeLessThan(2 * SLOW);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
