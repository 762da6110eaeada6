/**
 * Overlapped steps over a real nats-server: trainStep calls made before the previous one
 * resolves are queued, and each begins while the stages apply the previous update. The
 * results are those of the same steps run one at a time by single-process tfjs; a failure
 * drops the steps queued behind it, and the pipeline goes on.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline, StageError, StateError } from '../../src/index.js';
import { decodeAck, decodeReply, encodeJson } from '../../src/protocol/messages.js';
import { CtlVerb, ctlSubject, ctlWildcard } from '../../src/protocol/subjects.js';
import { Bus } from '../../src/transport/bus.js';
import { data, maxRelDiff, mlp, mlpAndReference, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const SIZES = [7, 16, 12, 10, 3];

describe('overlapped steps', () => {
  it.each([
    { schedule: '1f1b', stages: 2 },
    { schedule: 'gpipe', stages: 3 },
    { schedule: 'zbh1', stages: 2 },
  ])('6 trainStep calls at once ($schedule, $stages stages, Adam) equal 6 single-process steps in order', async ({ schedule, stages }) => {
    const { model, ref } = mlpAndReference(SIZES, 71, tf.train.adam(0.02));
    const pipe = await createPipeline({
      model,
      stages,
      microbatches: 4,
      schedule,
      optimizer: tf.train.adam(0.02),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const batches = Array.from({ length: 6 }, (_, i) => data(16, SIZES[0]!, 3, 500 + i));
    try {
      const results = await Promise.all(batches.map((b) => pipe.trainStep(b.x, b.y)));
      const refLosses: number[] = [];
      for (const b of batches) refLosses.push((await ref.trainOnBatch(b.x, b.y)) as number);
      expect(results.map((r) => r.step)).toEqual([1, 2, 3, 4, 5, 6]);
      results.forEach((r, i) => expect(Math.abs(r.loss - refLosses[i]!) / refLosses[i]!, `step ${i + 1}`).toBeLessThan(1e-5));
      // Every step after the first was queued while its predecessor ran, so it began early.
      expect(results.map((r) => r.begunEarly)).toEqual([false, true, true, true, true, true]);
      expect(results.every((r) => r.rejected === 0)).toBe(true);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      // One at a time again: nothing is queued, nothing begins early.
      const [r] = await stepBoth(pipe, ref, batches[0]!.x, batches[0]!.y);
      expect(r.begunEarly).toBe(false);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose(batches.flatMap((b) => [b.x, b.y]));
    }
  });

  it('a step that fails drops the steps queued behind it (StateError with the failure as cause); the next call trains', async () => {
    const { model, ref } = mlpAndReference(SIZES, 73, tf.train.adam(0.02));
    let calls = 0;
    let failAt = -1;
    const loss = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      if (++calls === failAt) throw new Error('loss exploded');
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    const pipe = await createPipeline({
      model,
      stages: 3,
      microbatches: 2,
      schedule: '1f1b',
      job: 'overlap-fail',
      optimizer: tf.train.adam(0.02),
      loss,
      nats: { servers: nats.server.url },
    });
    const b = Array.from({ length: 4 }, (_, i) => data(8, SIZES[0]!, 3, 600 + i));
    try {
      // The loss runs once per microbatch forward on the last stage: call 3 is step 2's first.
      failAt = 3;
      const calls = b.slice(0, 3).map((d) => pipe.trainStep(d.x, d.y));
      // A step called the moment step 2 fails, while step 3 (begun early) is still being aborted.
      const retry = calls[1]!.then(
        () => null,
        () => pipe.trainStep(b[3]!.x, b[3]!.y),
      );
      const settled = await Promise.allSettled(calls);
      expect(settled[0]!.status).toBe('fulfilled');
      const e2 = (settled[1] as PromiseRejectedResult).reason as StageError;
      expect(e2).toBeInstanceOf(StageError);
      expect(e2.key).toBe('overlap-fail/2/2F0');
      const e3 = (settled[2] as PromiseRejectedResult).reason as StateError;
      expect(e3).toBeInstanceOf(StateError);
      expect(e3.message).toMatch(/step 3 was not run: step 2 failed/);
      expect(e3.cause).toBe(e2);
      await ref.trainOnBatch(b[0]!.x, b[0]!.y);
      // Steps 2 and 3 left nothing applied, and the retry waited for step 3's abort: it runs
      // on every stage and equals the reference's second step.
      const r = await retry;
      expect(r?.step).toBe(4);
      expect(r?.rejected).toBe(0);
      const refLoss = (await ref.trainOnBatch(b[3]!.x, b[3]!.y)) as number;
      expect(Math.abs(r!.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      // And the pipeline goes on.
      await stepBoth(pipe, ref, b[0]!.x, b[0]!.y);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose(b.flatMap((d) => [d.x, d.y]));
    }
  });

  it('an evaluation that fails with a training step begun behind it: that step is dropped, and a step called at once trains like the reference', async () => {
    const { model, ref } = mlpAndReference(SIZES, 77, tf.train.sgd(0.1));
    let armed = false;
    const loss = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      if (armed) {
        armed = false;
        throw new Error('loss exploded');
      }
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    // One microbatch: stage 0 ends its evaluation list at once and may go on to the queued step
    // before the last stage fails; the retry is called while that step is being dropped.
    const pipe = await createPipeline({
      model,
      stages: 3,
      microbatches: 1,
      schedule: '1f1b',
      job: 'overlap-retry',
      optimizer: tf.train.sgd(0.1),
      loss,
      nats: { servers: nats.server.url },
    });
    const b = Array.from({ length: 3 }, (_, i) => data(8, SIZES[0]!, 3, 800 + i));
    // Every control request, in the order the server passes them on.
    const spy = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const ctl: string[] = [];
    const subs = [0, 1, 2].map((r) =>
      spy.subscribe(ctlWildcard('overlap-retry', r), (m) => {
        const verb = m.subject.split('.').pop()!;
        if (verb === 'step' || verb === 'abort') ctl.push(`${r} ${verb} ${(JSON.parse(new TextDecoder().decode(m.data)) as { step: number }).step}`);
      }),
    );
    await spy.flush();
    try {
      armed = true;
      const evaluation = pipe.evaluate(b[0]!.x, b[0]!.y);
      const queued = pipe.trainStep(b[1]!.x, b[1]!.y);
      const retry = evaluation.then(
        () => null,
        () => pipe.trainStep(b[2]!.x, b[2]!.y),
      );
      await expect(evaluation).rejects.toThrow(/loss exploded/);
      const dropped = await queued.catch((e: unknown) => e);
      expect(dropped).toBeInstanceOf(StateError);
      expect((dropped as Error).message).toMatch(/step 2 was not run: step 1 failed/);
      const r = await retry;
      expect(r?.step).toBe(3);
      const refLoss = (await ref.trainOnBatch(b[2]!.x, b[2]!.y)) as number;
      expect(Math.abs(r!.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      // On every stage, step 2 was aborted before step 3's plan came (an abort meant for step 2
      // could otherwise drop step 3's plan queued behind it).
      await spy.flush();
      for (const rank of [0, 1, 2]) {
        const mine = ctl.filter((c) => c.startsWith(`${rank} `));
        expect(mine.indexOf(`${rank} abort 2`), mine.join(', ')).toBeGreaterThanOrEqual(0);
        expect(mine.indexOf(`${rank} abort 2`)).toBeLessThan(mine.indexOf(`${rank} step 3`));
      }
    } finally {
      await Promise.all(subs.map((x) => x.drain()));
      await spy.close();
      await pipe.close();
      tf.dispose(b.flatMap((d) => [d.x, d.y]));
    }
  });

  it('an update that fails while the next step has begun: that step is aborted on every stage and rejects unrun', async () => {
    const model = mlp(SIZES, 75);
    let made = 0;
    let armed = false;
    // The second stage's optimizer fails its update when armed.
    const optimizer = () => {
      const opt = tf.train.sgd(0.1);
      if (made++ === 1) {
        const apply = opt.applyGradients.bind(opt);
        opt.applyGradients = (g) => {
          if (armed) throw new Error('optimizer failed');
          apply(g);
        };
      }
      return opt;
    };
    const pipe = await createPipeline({
      model,
      stages: 3,
      microbatches: 2,
      schedule: '1f1b',
      job: 'overlap-update',
      optimizer,
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const b = Array.from({ length: 2 }, (_, i) => data(8, SIZES[0]!, 3, 700 + i));
    try {
      armed = true;
      const settled = await Promise.allSettled(b.map((d) => pipe.trainStep(d.x, d.y)));
      const e1 = (settled[0] as PromiseRejectedResult).reason as StageError;
      expect(e1).toBeInstanceOf(StageError);
      expect(e1.rank).toBe(1);
      expect(e1.message).toMatch(/optimizer failed.*during UPDATE/);
      const e2 = (settled[1] as PromiseRejectedResult).reason as StateError;
      expect(e2).toBeInstanceOf(StateError);
      expect(e2.message).toMatch(/step 2 was not run: step 1 failed/);
      // The stages that applied step 1 and began step 2 were aborted; the failed one dropped step 2 too.
      const spy = await Bus.connect({ role: 'admin', servers: nats.server.url });
      try {
        const probe = async (r: number) => decodeReply('probe', await spy.request(ctlSubject('overlap-update', r, CtlVerb.PROBE), encodeJson({}), 5_000));
        const states = await Promise.all([0, 1, 2].map(probe));
        expect(states.map((x) => x.state)).toEqual(['idle', 'failed', 'idle']);
        expect(states[1]!.step).toBe(1);
        // Once the failed stage is aborted it is idle; a step still queued on it would start now.
        expect(decodeAck(await spy.request(ctlSubject('overlap-update', 1, CtlVerb.ABORT), encodeJson({ step: 1 }), 5_000)).ok).toBe(true);
        expect(await probe(1)).toMatchObject({ state: 'idle', step: 1 });
      } finally {
        await spy.close();
      }
    } finally {
      await pipe.close();
      tf.dispose(b.flatMap((d) => [d.x, d.y]));
    }
  });
});
