/** `pipe.actors`: the scheduler and stage actors of this process, per replica, to follow or compose. */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { waitFor } from 'xstate';
import { createPipeline } from '../../src/index.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('pipe.actors', () => {
  it("gives every replica's scheduler and stages, live, replica 0 first", async () => {
    const pipe = await createPipeline({
      model: mlp([6, 8, 8, 2], 4),
      stages: 3,
      replicas: 2,
      microbatches: 2,
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(8, 6, 2);
    try {
      const { actors } = pipe;
      expect(actors.replicas).toHaveLength(2);
      expect(actors.scheduler).toBe(actors.replicas[0]!.scheduler);
      expect(actors.stages).toEqual(actors.replicas[0]!.stages);
      for (const r of actors.replicas) {
        expect(r.scheduler.id).toBe('scheduler');
        expect(r.stages.map((s) => s.id)).toEqual(['stage-0', 'stage-1', 'stage-2']);
      }
      expect(actors.replicas[1]!.stages[0]).not.toBe(actors.stages[0]);
      // Followed from outside: each stage goes through running and updating in a step.
      const seen = actors.replicas.flatMap((r) => r.stages).map(() => new Set<string>());
      const subs = actors.replicas
        .flatMap((r) => r.stages)
        .map((s, i) => s.subscribe((snap) => seen[i]!.add(typeof snap.value === 'string' ? snap.value : Object.keys(snap.value)[0]!)));
      await pipe.trainStep(x, y);
      for (const s of subs) s.unsubscribe();
      for (const states of seen) expect([...states]).toEqual(expect.arrayContaining(['running', 'updating', 'idle']));
      for (const r of actors.replicas) {
        await waitFor(r.scheduler, (s) => s.matches('idle'));
        for (const s of r.stages) expect(s.getSnapshot().context.step).toBe(1);
      }
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
