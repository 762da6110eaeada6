/**
 * An inspector started after a job failed a step and refused a frame: the scheduler's answer
 * to "who is there" brings the error and the refusal, the actors in their current state, and
 * the step's real shape, so the next step's theoretical bubble uses p and m from its first
 * action on.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { startInspector } from '../../src/inspect/inspectorServer.js';
import type { ModelUpdate } from '../../src/inspect/model.js';
import { Bus } from '../../src/transport/bus.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('what a late inspector is told', () => {
  it('the first error, the refused frames, every actor in its state, and the shape of the steps', async () => {
    const job = 'told';
    const m = 4;
    let fail = false;
    const loss = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      if (fail) throw new Error('the loss broke');
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    const pipe = await createPipeline({
      model: mlp([6, 8, 3], 5),
      stages: 2,
      microbatches: m,
      job,
      inspect: true,
      optimizer: tf.train.sgd(0.1),
      loss,
      nats: { servers: nats.server.url },
    });
    const admin = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const { x, y } = data(8, 6, 3);
    let insp: Awaited<ReturnType<typeof startInspector>> | undefined;
    const reader = new AbortController();
    try {
      await pipe.trainStep(x, y);
      fail = true;
      await expect(pipe.trainStep(x, y)).rejects.toThrow(/the loss broke/);
      fail = false;
      await pipe.trainStep(x, y);
      const refused = new Promise<void>((resolve) => admin.subscribe(`troupe.${job}.sched.*.reject`, () => resolve()));
      await admin.flush();
      await admin.publish(`troupe.${job}.stage.0.INPUT`, new TextEncoder().encode('not a frame'));
      await refused;

      // Only now does the inspector start.
      insp = await startInspector({ nats: nats.server.url, job });
      const model = insp.model;
      await vi.waitFor(() => expect(model.actors.size).toBe(3), { timeout: 5000 });
      await vi.waitFor(() => expect(model.rejected).toBe(1), { timeout: 5000 });
      expect(model.firstError).toMatchObject({ rank: 1, code: 'COMPUTE' });
      expect(model.firstError!.message).toMatch(/the loss broke/);
      expect(model.errors).toBeGreaterThanOrEqual(1);
      expect([...model.actors.values()].map((a) => `${a.name}:${JSON.stringify(a.value)}`).sort()).toEqual([
        'scheduler:"idle"',
        'stage-0:"idle"',
        'stage-1:"idle"',
      ]);
      for (const a of model.actors.values()) if (a.name !== 'scheduler') expect((a.context as { step: number }).step).toBe(3);

      // The page's stream: the next step's first timeline update has the real p and m.
      const res = await fetch(`${insp.url}events`, { signal: reader.signal });
      const updates: ModelUpdate[] = [];
      const firstOfStep4 = new Promise<ModelUpdate>((resolve) => {
        void (async () => {
          let buf = '';
          for await (const chunk of res.body!) {
            buf += new TextDecoder().decode(chunk);
            let i: number;
            while ((i = buf.indexOf('\n\n')) >= 0) {
              const u = JSON.parse(buf.slice(6, i)) as ModelUpdate;
              buf = buf.slice(i + 2);
              updates.push(u);
              if (u.kind === 'step' && u.step.step === 4) return resolve(u);
            }
          }
        })().catch(() => {});
      });
      // Opened late, the page is told the errors and refusals from before at once.
      await vi.waitFor(() => expect(updates.some((u) => u.kind === 'error') && updates.some((u) => u.kind === 'reject')).toBe(true), { timeout: 5000 });
      await pipe.trainStep(x, y);
      const first = await firstOfStep4;
      expect(first.kind === 'step' && first.step.actions).toHaveLength(1);
      expect(first).toMatchObject({ kind: 'step', step: { stages: 2, microbatches: m } });
      expect(first.kind === 'step' && first.step.theoreticalBubble).toBeCloseTo(1 / (m + 1), 12);
    } finally {
      reader.abort();
      await insp?.close();
      await admin.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
