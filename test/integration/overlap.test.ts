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
import { CtlVerb, ctlSubject } from '../../src/protocol/subjects.js';
import { Bus } from '../../src/transport/bus.js';
import { copyWeights, data, maxRelDiff, mlp, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const SIZES = [7, 16, 12, 10, 3];

describe('overlapped steps', () => {
  it.each([
    { schedule: '1f1b', stages: 2 },
    { schedule: 'gpipe', stages: 3 },
    { schedule: 'zbh1', stages: 2 },
  ])('6 trainStep calls at once ($schedule, $stages stages, Adam) equal 6 single-process steps in order', async ({ schedule, stages }) => {
    const model = mlp(SIZES, 71);
    const ref = mlp(SIZES, 72);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy' });
    const pipe = await createPipeline({ model, stages, microbatches: 4, schedule, optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy', nats: { servers: nats.server.url } });
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
    const model = mlp(SIZES, 73);
    const ref = mlp(SIZES, 74);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy' });
    let calls = 0;
    let failAt = -1;
    const loss = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      if (++calls === failAt) throw new Error('loss exploded');
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    const pipe = await createPipeline({ model, stages: 3, microbatches: 2, schedule: '1f1b', job: 'overlap-fail', optimizer: tf.train.adam(0.02), loss, nats: { servers: nats.server.url } });
    const b = Array.from({ length: 4 }, (_, i) => data(8, SIZES[0]!, 3, 600 + i));
    try {
      // The loss runs once per microbatch forward on the last stage: call 3 is step 2's first.
      failAt = 3;
      const settled = await Promise.allSettled(b.slice(0, 3).map((d) => pipe.trainStep(d.x, d.y)));
      expect(settled[0]!.status).toBe('fulfilled');
      const e2 = (settled[1] as PromiseRejectedResult).reason as StageError;
      expect(e2).toBeInstanceOf(StageError);
      expect(e2.key).toBe('overlap-fail/2/2F0');
      const e3 = (settled[2] as PromiseRejectedResult).reason as StateError;
      expect(e3).toBeInstanceOf(StateError);
      expect(e3.message).toMatch(/step 3 was not run: step 2 failed/);
      expect(e3.cause).toBe(e2);
      await ref.trainOnBatch(b[0]!.x, b[0]!.y);
      // Steps 2 and 3 left nothing applied: the next step equals the reference's second.
      const [r] = await stepBoth(pipe, ref, b[3]!.x, b[3]!.y);
      expect(r.step).toBe(4);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
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
    const pipe = await createPipeline({ model, stages: 3, microbatches: 2, schedule: '1f1b', job: 'overlap-update', optimizer, loss: 'categoricalCrossentropy', nats: { servers: nats.server.url } });
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
