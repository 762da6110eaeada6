/**
 * The early UPDATE, over a real nats-server: once every stage but one is done, the scheduler
 * sends that last one its UPDATE, which it applies as its own list ends. Training still
 * equals single-process tfjs, every stage gets one UPDATE per step, and a lone stage (granted
 * as the step begins) has its UPDATE on the wire before its DONE.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { encodeKeyOnly } from '../../src/protocol/frame.js';
import { decodeMessage } from '../../src/protocol/messages.js';
import { Phase } from '../../src/protocol/phase.js';
import { stageSubject } from '../../src/protocol/subjects.js';
import { Bus } from '../../src/transport/bus.js';
import { data, maxRelDiff, mlpAndReference, slowLoss, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const SIZES = [10, 16, 12, 3];

/** What the server delivered, in its order: `UPDATE <rank>` and `DONE <rank>` per step. */
async function watch(job: string): Promise<{ spy: Bus; seen: Map<number, string[]> }> {
  const spy = await Bus.connect({ role: 'admin', servers: nats.server.url, name: `${job}-spy` });
  const seen = new Map<number, string[]>();
  const at = (step: number) => seen.get(step) ?? (seen.set(step, []), seen.get(step)!);
  spy.subscribe(`troupe.${job}.stage.*.UPDATE`, (m) => at(Number(m.header('Troupe-Step'))).push(`UPDATE ${m.subject.split('.')[3]}`));
  spy.subscribe(`troupe.${job}.sched.done`, (m) => {
    const e = decodeMessage('done', m.data);
    at(e.step).push(`DONE ${e.rank}`);
  });
  await spy.flush();
  return { spy, seen };
}

describe('the early UPDATE of the last stage running', () => {
  it.each([1, 3])('%i stage(s), 1F1B, Adam: 3 steps equal single-process training; one UPDATE per stage and step', async (stages) => {
    const { model, ref } = mlpAndReference(SIZES, 41, tf.train.adam(0.02));
    const job = `grant-${stages}`;
    const pipe = await createPipeline({ model, stages, microbatches: 4, schedule: '1f1b', job, optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy', nats: { servers: nats.server.url } });
    const { spy, seen } = await watch(job);
    const { x, y } = data(16, SIZES[0]!, 3, 42);
    try {
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        expect(r.rejected).toBe(0); // no UPDATE came twice or out of turn
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      await spy.flush();
      for (let step = 1; step <= 3; step++) {
        const ev = seen.get(step) ?? [];
        const ranks = Array.from({ length: stages }, (_, r) => r);
        expect(ev.filter((e) => e.startsWith('UPDATE')).sort()).toEqual(ranks.map((r) => `UPDATE ${r}`));
        expect(ev.filter((e) => e.startsWith('DONE')).sort()).toEqual(ranks.map((r) => `DONE ${r}`));
        // Every UPDATE but one follows every DONE; that one goes to the stage whose DONE came last.
        const lastDone = Math.max(...ranks.map((r) => ev.indexOf(`DONE ${r}`)));
        const early = ev.filter((e, i) => e.startsWith('UPDATE') && i < lastDone);
        expect(early.length).toBeLessThanOrEqual(1);
        if (early.length === 1) expect(early[0]!.slice(7)).toBe(ev[lastDone]!.slice(5));
      }
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('a lone stage has its UPDATE before it is done, and applies it without another message', async () => {
    // Each forward takes at least SLOW ms (its loss waits): the step lasts m x SLOW ms, far
    // longer than the UPDATE the scheduler sends as the step begins takes to arrive.
    const SLOW = 20;
    const m = 4;
    const { model, ref } = mlpAndReference(SIZES, 43, tf.train.sgd(0.1));
    const job = 'grant-lone';
    const pipe = await createPipeline({ model, stages: 1, microbatches: m, schedule: '1f1b', job, optimizer: tf.train.sgd(0.1), loss: slowLoss(SLOW), nats: { servers: nats.server.url } });
    const { spy, seen } = await watch(job);
    const { x, y } = data(8, SIZES[0]!, 3, 44);
    try {
      for (let s = 0; s < 2; s++) await stepBoth(pipe, ref, x, y);
      await spy.flush();
      expect(seen.get(1)).toEqual(['UPDATE 0', 'DONE 0']);
      expect(seen.get(2)).toEqual(['UPDATE 0', 'DONE 0']);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('a second UPDATE of a step is refused with a typed error, and the update is applied once', async () => {
    const SLOW = 20;
    const { model, ref } = mlpAndReference(SIZES, 45, tf.train.sgd(0.1));
    const job = 'grant-twice';
    const pipe = await createPipeline({ model, stages: 1, microbatches: 4, schedule: '1f1b', job, optimizer: tf.train.sgd(0.1), loss: slowLoss(SLOW), nats: { servers: nats.server.url } });
    const { spy, seen } = await watch(job);
    const rejects: { code: string; message: string }[] = [];
    spy.subscribe(`troupe.${job}.sched.reject`, (m) => rejects.push(decodeMessage('reject', m.data)));
    await spy.flush();
    const { x, y } = data(8, SIZES[0]!, 3, 46);
    try {
      const step = pipe.trainStep(x, y);
      // The grant is on the wire: the stage runs step 1 for about 4 x SLOW ms more.
      await vi.waitFor(() => expect(seen.get(1)).toEqual(['UPDATE 0']));
      const again = encodeKeyOnly({ job, step: 1, microbatch: 0, phase: Phase.UPDATE }, 'sched');
      await spy.publish(stageSubject(job, 0, Phase.UPDATE), again.data, again.headers);
      const r = await step;
      await ref.trainOnBatch(x, y);
      expect(r.rejected).toBe(1);
      await spy.flush();
      expect(rejects).toHaveLength(1);
      expect(rejects[0]).toMatchObject({ code: 'UNEXPECTED_FRAME', message: 'UPDATE for step 1 came twice' });
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5); // applied once
      // The stage carries on.
      await stepBoth(pipe, ref, x, y);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
