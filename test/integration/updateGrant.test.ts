/**
 * The early UPDATE, over a real nats-server: once every stage but one is done, the scheduler
 * sends that last one its UPDATE, which it applies as its own list ends. Training still
 * equals single-process tfjs, every stage but a lone one gets one UPDATE per step, and a lone
 * stage's plan grants its update: no UPDATE message goes to it at all.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { encodeKeyOnly } from '../../src/protocol/frame.js';
import { decodeAck, decodeMessage, encodeJson, type StepPlan } from '../../src/protocol/messages.js';
import { Phase } from '../../src/protocol/phase.js';
import { CtlVerb, ctlSubject, stageSubject } from '../../src/protocol/subjects.js';
import { Bus } from '../../src/transport/bus.js';
import { data, maxRelDiff, mlpAndReference, slowLoss, stepBoth } from '../helpers/models.js';
import { loneStage } from '../helpers/loneStage.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const SIZES = [10, 16, 12, 3];

/** What the server delivered, in its order: `UPDATE <rank>` and `DONE <rank>` per step. */
async function watch(job: string): Promise<{ spy: Bus; seen: Map<number, string[]> }> {
  const spy = await Bus.connect({ role: 'admin', servers: nats.server.url, name: `${job}-spy` });
  const seen = new Map<number, string[]>();
  const at = (step: number) => seen.get(step) ?? (seen.set(step, []), seen.get(step)!);
  spy.subscribe(`troupe.${job}.stage.*.UPDATE`, (m) => at(Number(m.header('Troupe-Step'))).push(`UPDATE ${m.subject.split('.')[3]}`));
  spy.subscribe(`troupe.${job}.sched.*.done`, (m) => {
    const e = decodeMessage('done', m.data);
    at(e.step).push(`DONE ${e.rank}`);
  });
  await spy.flush();
  return { spy, seen };
}

describe('the early UPDATE of the last stage running', () => {
  it.each([1, 3])('%i stage(s), 1F1B, Adam: 3 steps equal single-process training; one UPDATE per stage and step (none to a lone stage)', async (stages) => {
    const { model, ref } = mlpAndReference(SIZES, 41, tf.train.adam(0.02));
    const job = `grant-${stages}`;
    const pipe = await createPipeline({
      model,
      stages,
      microbatches: 4,
      schedule: '1f1b',
      job,
      optimizer: tf.train.adam(0.02),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
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
        expect(ev.filter((e) => e.startsWith('UPDATE')).sort()).toEqual(stages === 1 ? [] : ranks.map((r) => `UPDATE ${r}`));
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

  it("a lone stage's plan grants its UPDATE: no UPDATE message, the update applied as its list ends", async () => {
    const job = 'grant-lone';
    const { model, ref, pipe } = await loneStage({ sizes: SIZES, seed: 43, microbatches: 4, job, servers: nats.server.url });
    const { spy, seen } = await watch(job);
    const plans: StepPlan[] = [];
    spy.subscribe(`troupe.${job}.ctl.0.step`, (msg) => plans.push(decodeMessage('plan', msg.data)));
    await spy.flush();
    const { x, y } = data(8, SIZES[0]!, 3, 44);
    try {
      for (let s = 0; s < 2; s++) await stepBoth(pipe, ref, x, y);
      const evaluated = await pipe.evaluate(x, y);
      expect(evaluated.loss).toBeGreaterThan(0);
      await spy.flush();
      expect(seen.get(1)).toEqual(['DONE 0']);
      expect(seen.get(2)).toEqual(['DONE 0']);
      // Training plans grant; the evaluation's does not.
      expect(plans.map((p) => [p.step, p.granted, p.update])).toEqual([
        [1, true, true],
        [2, true, true],
        [3, false, false],
      ]);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      // A plan that grants an update its step does not apply is refused, naming why; the stage stays idle.
      const bad = { ...plans[0]!, step: 4, update: false };
      const ack = decodeAck(await spy.request(ctlSubject(job, 0, CtlVerb.STEP), encodeJson(bad), 5_000));
      expect(ack).toMatchObject({
        ok: false,
        code: 'FRAME',
        message: 'plan of step 4 grants an UPDATE, but the step applies none (evaluation, prediction or accumulation)',
      });
      await stepBoth(pipe, ref, x, y);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('an UPDATE to a lone stage whose plan granted it is refused with a typed error, and the update is applied once', async () => {
    // Each forward takes at least SLOW ms. The stage sends its held LOSS events once the
    // oldest is 50 ms old (at the third forward): five forwards, 200 ms, are still to come.
    const SLOW = 40;
    const job = 'grant-twice';
    const { model, ref, pipe } = await loneStage({ sizes: SIZES, seed: 45, microbatches: 8, job, servers: nats.server.url, loss: slowLoss(SLOW) });
    const { spy, seen } = await watch(job);
    const rejects: { code: string; message: string }[] = [];
    const losses: number[] = [];
    spy.subscribe(`troupe.${job}.sched.*.reject`, (m) => rejects.push(decodeMessage('reject', m.data)));
    spy.subscribe(`troupe.${job}.sched.*.loss`, (m) => losses.push(decodeMessage('loss', m.data).step));
    await spy.flush();
    const { x, y } = data(8, SIZES[0]!, 3, 46);
    try {
      const step = pipe.trainStep(x, y);
      // Step 1 runs (its plan granted its update).
      await vi.waitFor(() => expect(losses).toContain(1));
      const again = encodeKeyOnly({ job, step: 1, microbatch: 0, phase: Phase.UPDATE }, 'sched');
      await spy.publish(stageSubject(job, 0, Phase.UPDATE), again.data, again.headers);
      const r = await step;
      await ref.trainOnBatch(x, y);
      expect(r.rejected).toBe(1);
      await spy.flush();
      expect(rejects).toHaveLength(1);
      expect(rejects[0]).toMatchObject({ code: 'UNEXPECTED_FRAME', message: 'UPDATE for step 1, whose plan granted it already' });
      expect(seen.get(1)).toEqual(['UPDATE 0', 'DONE 0']); // only the one sent here
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
