/**
 * What the scheduler's inspection shows of its queue and its liveness watch (#21 item 1):
 * steps called while one runs sit in the machine's context (`queue`, `early`), and the watch
 * is a child actor whose heartbeats and probe answers are the scheduler's events.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { inspectSubject } from '../../src/protocol/subjects.js';
import { Bus } from '../../src/transport/bus.js';
import { countingLock } from '../helpers/countingLock.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

interface Inspected {
  type: string;
  name?: string;
  event?: { type: string };
  snapshot?: { context?: { queue?: { step: number }[]; early?: { step: number } | null } };
}

describe('the scheduler in the inspector', () => {
  it('shows the steps queued behind the running one, the one begun early, and the liveness watch with its heartbeats and probe answers', async () => {
    const job = 'queue-seen';
    const inspector = await Bus.connect({ role: 'inspector', servers: nats.server.url });
    const seen: Inspected[] = [];
    // Three steps: the scheduler hears UPDATED from both stages in each.
    const lock = countingLock(6);
    const sub = inspector.subscribe(inspectSubject(job, 'scheduler'), (m) => {
      const e = JSON.parse(new TextDecoder().decode(m.data)) as Inspected;
      seen.push(e);
      if (e.type === '@xstate.event' && e.event?.type === 'UPDATED') lock.count();
    });
    await inspector.flush();
    const pipe = await createPipeline({
      model: mlp([6, 8, 2], 5),
      stages: 2,
      microbatches: 2,
      job,
      inspect: true,
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(4, 6, 2);
    try {
      await Promise.all([1, 2, 3].map(() => pipe.trainStep(x, y)));
      await lock.wait(10_000);
      const contexts = seen.flatMap((e) => (e.type === '@xstate.snapshot' && e.snapshot?.context ? [e.snapshot.context] : []));
      const queued = new Set(contexts.flatMap((c) => (c.queue ?? []).map((q) => q.step)));
      expect([...queued].sort()).toEqual([2, 3]);
      expect(contexts.some((c) => c.early?.step === 2)).toBe(true);
      expect(seen.some((e) => e.type === '@xstate.actor' && e.name === 'liveness')).toBe(true);
      const events = seen.flatMap((e) => (e.type === '@xstate.event' && e.event ? [e.event.type] : []));
      expect(events).toContain('RUN');
      expect(events).toContain('PLANNED');
      expect(events).toContain('TICK');
      expect(events).toContain('PROBED');
    } finally {
      await pipe.close();
      await sub.drain();
      await inspector.close();
      tf.dispose([x, y]);
    }
  });
});
