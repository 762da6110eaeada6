/**
 * The subjects of a job with replicas: everything of every replica is under
 * `troupe.<job>.>`, and `troupe.<job>.*.<kind>` covers each kind in every replica, so an
 * inspector or a user's listener needs one wildcard for the whole job.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { decodeMessage } from '../../src/protocol/messages.js';
import { Bus } from '../../src/transport/bus.js';
import { countingLock } from '../helpers/countingLock.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('replica subjects', () => {
  it("one wildcard of the job covers every replica's stages", async () => {
    const job = 'wild';
    // An admin: the inspector user hears only what the inspector shows (no frames).
    const listener = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const seen = new Set<string>();
    const subjects = new Set<string>();
    // Each of 2 replicas x 2 stages publishes its counters after the step.
    const lock = countingLock(4);
    const stats = listener.subscribe(`troupe.${job}.*.stats.*`, (m) => {
      const s = decodeMessage('stats', m.data);
      const key = `${m.subject.split('.')[2]}/${s.rank}`;
      if (!seen.has(key)) lock.count();
      seen.add(key);
    });
    const all = listener.subscribe(`troupe.${job}.>`, (m) => subjects.add(m.subject));
    await listener.flush();
    const pipe = await createPipeline({
      model: mlp([6, 8, 2], 4),
      stages: 2,
      replicas: 2,
      microbatches: 2,
      job,
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(8, 6, 2);
    try {
      await pipe.trainStep(x, y);
      await lock.wait(10_000);
      expect([...seen].sort()).toEqual(['r0/0', 'r0/1', 'r1/0', 'r1/1']);
      // Frames, events and counters of both replicas, and the replicas' all-reduce, all under troupe.<job>.>.
      for (const r of ['r0', 'r1']) {
        expect(subjects).toContain(`troupe.${job}.${r}.stage.1.FORWARD`);
        expect(subjects).toContain(`troupe.${job}.${r}.sched.1.done`);
      }
      expect(subjects).toContain(`troupe.${job}.allreduce.0`);
    } finally {
      await pipe.close();
      await stats.drain();
      await all.drain();
      await listener.close();
      tf.dispose([x, y]);
    }
  });
});
