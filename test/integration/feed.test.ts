/**
 * How stage 0 gets its inputs, over a real nats-server: `feed: 'step'` (the default) sends
 * every microbatch of a step as it begins, `feed: 'bounded'` the schedule's bound plus one and
 * then one per microbatch stage 0 releases. Both train like single-process tfjs; what the
 * scheduler sent and the stage received before each acted is what each one promises.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { createPipeline, ConfigError, type FeedMode } from '../../src/index.js';
import { decodeMessage, encodeJson } from '../../src/protocol/messages.js';
import { CtlVerb, ctlSubject } from '../../src/protocol/subjects.js';
import { Bus, type BusMessage } from '../../src/transport/bus.js';
import type { Frame } from '../../src/protocol/frame.js';
import { data, maxRelDiff, mlpAndReference, slowLoss, stepBoth } from '../helpers/models.js';
import { loneStage } from '../helpers/loneStage.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const publishOriginal = Bus.prototype.publish;
const publishFrameOriginal = Bus.prototype.publishFrame;
const subscribeOriginal = Bus.prototype.subscribe;
const SIZES = [10, 16, 12, 3];

describe('feeding stage 0', () => {
  it.each([
    { feed: 'step', stages: 1 },
    { feed: 'step', stages: 3 },
    { feed: 'bounded', stages: 1 },
    { feed: 'bounded', stages: 3 },
  ] as const)("feed $feed, $stages stage(s) (1F1B, Adam): 3 steps equal single-process training, within the schedule's bound", async ({ feed, stages }) => {
    const { model, ref } = mlpAndReference(SIZES, 31, tf.train.adam(0.02));
    const pipe = await createPipeline({
      model,
      stages,
      microbatches: 5,
      schedule: '1f1b',
      feed,
      optimizer: tf.train.adam(0.02),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(20, SIZES[0]!, 3, 32);
    try {
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        // Inputs waiting in stage 0's inbox are not activations: 1F1B still holds at most p - rank.
        r.peakHeld.forEach((h, rank) => expect(h).toBe(stages - rank));
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it.each(['step', 'bounded'] as const)(
    "feed '%s': what the scheduler sent and the stage received before each acted, and every action event arrives",
    async (feed: FeedMode) => {
      const m = 6;
      const job = `feed-${feed}`;
      // Scheduler and stage share this process: one timeline, in the order things happened here.
      // (A spy connection would see the scheduler's and the stage's messages in an order NATS
      // does not promise: they come from two connections.)
      const timeline: string[] = [];
      const frameSpy = vi.spyOn(Bus.prototype, 'publishFrame').mockImplementation(function (this: Bus, subject: string, frame: Frame) {
        if (subject === `troupe.${job}.stage.0.INPUT` && frame.key.step === 1) timeline.push(`sched sends INPUT ${frame.key.microbatch}`);
        return publishFrameOriginal.call(this, subject, frame);
      });
      const publishSpy = vi.spyOn(Bus.prototype, 'publish').mockImplementation(async function (
        this: Bus,
        subject: string,
        body: Uint8Array,
        headers?: Record<string, string>,
      ) {
        if (subject === `troupe.${job}.sched.0.action`) {
          const e = decodeMessage('action', body);
          if (e.step === 1) timeline.push(`stage did ${e.action}`);
        }
        return publishOriginal.call(this, subject, body, headers);
      });
      // What the stage's and the scheduler's subscriptions are handed, when they are handed it.
      const subscribeSpy = vi.spyOn(Bus.prototype, 'subscribe').mockImplementation(function (
        this: Bus,
        subject: string,
        handler: (msg: BusMessage) => void,
        queue?: string,
      ) {
        const seen = (msg: BusMessage) => {
          if (subject === `troupe.${job}.stage.0.*` && msg.subject.endsWith('.INPUT') && msg.header('Troupe-Step') === '1')
            timeline.push(`stage got INPUT ${msg.header('Troupe-Mb')}`);
          if (subject === `troupe.${job}.sched.*.*` && msg.subject.endsWith('.action')) {
            const e = decodeMessage('action', msg.data);
            if (e.step === 1) timeline.push(`sched heard ${e.action}`);
          }
          handler(msg);
        };
        return subscribeOriginal.call(this, subject, seen, queue);
      });
      const { pipe } = await loneStage({ sizes: SIZES, seed: 33, microbatches: m, job, feed, servers: nats.server.url });
      const { x, y } = data(12, SIZES[0]!, 3, 34);
      try {
        await pipe.trainStep(x, y);
        const at = (label: string) => {
          const i = timeline.indexOf(label);
          expect(i, `${label} in\n${timeline.join('\n')}`).toBeGreaterThan(-1);
          return i;
        };
        const mbs = Array.from({ length: m }, (_, i) => i);
        // Held back or not, every action of the step reached the scheduler once.
        const heard = timeline.filter((t) => t.startsWith('sched heard ')).map((t) => t.slice('sched heard '.length));
        expect(heard.sort()).toEqual([...mbs.map((i) => `F${i}`), ...mbs.map((i) => `B${i}`)].sort());
        for (const mb of mbs) expect(at(`stage got INPUT ${mb}`)).toBeGreaterThan(at(`sched sends INPUT ${mb}`));
        if (feed === 'step') {
          // Every input went out as the step began: before the stage had received any of them.
          const firstGot = Math.min(...mbs.map((mb) => at(`stage got INPUT ${mb}`)));
          for (const mb of mbs) expect(at(`sched sends INPUT ${mb}`), `INPUT ${mb}`).toBeLessThan(firstGot);
        } else {
          // 1 stage, 1F1B: bound 1, so 2 inputs at first; input k goes out once the scheduler heard
          // B(k-2), so the stage had done B(k-2) before it received input k.
          for (const mb of [0, 1]) expect(at(`sched sends INPUT ${mb}`)).toBeLessThan(at('sched heard B0'));
          for (const mb of mbs.slice(2)) {
            expect(at(`sched sends INPUT ${mb}`), `INPUT ${mb}`).toBeGreaterThan(at(`sched heard B${mb - 2}`));
            expect(at(`stage got INPUT ${mb}`), `INPUT ${mb}`).toBeGreaterThan(at(`stage did B${mb - 2}`));
          }
        }
      } finally {
        frameSpy.mockRestore();
        publishSpy.mockRestore();
        subscribeSpy.mockRestore();
        await pipe.close();
        tf.dispose([x, y]);
      }
    },
  );

  it('a lone stage with every input in still reports its actions during the step, at most 50 ms after holding them', async () => {
    // Each forward of the only stage takes at least SLOW ms (its loss waits), so a step of m
    // microbatches lasts m x SLOW ms. Step 2 was queued behind step 1: its inputs were all in
    // before it began, so its stage never waits and publishes no frame before its DONE. Its
    // action events can only leave early by the 50 ms rule.
    const SLOW = 60;
    const m = 4;
    const job = 'feed-hold';
    const { pipe } = await loneStage({ sizes: SIZES, seed: 36, microbatches: m, job, servers: nats.server.url, loss: slowLoss(SLOW) });
    // Every event the stage publishes, when it publishes it (the stage runs in this process).
    const published: { subject: string; step: number; at: number }[] = [];
    const spy = vi.spyOn(Bus.prototype, 'publish').mockImplementation(async function (
      this: Bus,
      subject: string,
      body: Uint8Array,
      headers?: Record<string, string>,
    ) {
      if (subject.startsWith(`troupe.${job}.sched.`))
        published.push({
          subject: subject.split('.').pop()!,
          step: (JSON.parse(new TextDecoder().decode(body)) as { step: number }).step,
          at: performance.now(),
        });
      return publishOriginal.call(this, subject, body, headers);
    });
    const { x, y } = data(8, SIZES[0]!, 3, 37);
    try {
      await Promise.all([pipe.trainStep(x, y), pipe.trainStep(x, y)]);
      const two = published.filter((p) => p.step === 2);
      const done = two.find((p) => p.subject === 'done')!;
      const actions = two.filter((p) => p.subject === 'action');
      expect(actions).toHaveLength(2 * m);
      // Held for the whole step, every action would leave together with DONE.
      expect(done.at - Math.min(...actions.map((a) => a.at))).toBeGreaterThanOrEqual(SLOW);
    } finally {
      spy.mockRestore();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('a stage with every input in still answers a control request between two actions, not at the end of its step', async () => {
    // Step 2 is queued behind step 1 and its inputs are all in before it begins: the stage
    // never waits for a frame during it. A stage that went from one action to the next without
    // a turn of the event loop would read its socket only after DONE; the scheduler shares
    // this process, so step 1 would not even resolve before then.
    const SLOW = 60;
    const m = 4;
    const job = 'feed-ctl';
    const { pipe } = await loneStage({ sizes: SIZES, seed: 38, microbatches: m, job, servers: nats.server.url, loss: slowLoss(SLOW) });
    const done: { step: number; at: number }[] = [];
    const spy = vi.spyOn(Bus.prototype, 'publish').mockImplementation(async function (
      this: Bus,
      subject: string,
      body: Uint8Array,
      headers?: Record<string, string>,
    ) {
      if (subject === `troupe.${job}.sched.0.done`) done.push({ step: decodeMessage('done', body).step, at: performance.now() });
      return publishOriginal.call(this, subject, body, headers);
    });
    const admin = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'feed-ctl-test' });
    const { x, y } = data(8, SIZES[0]!, 3, 39);
    try {
      const first = pipe.trainStep(x, y);
      const second = pipe.trainStep(x, y);
      await first;
      const reply = decodeMessage('hello', await admin.request(ctlSubject(job, 0, CtlVerb.PING), encodeJson({}), 5_000));
      const answeredAt = performance.now();
      await second;
      expect(reply.rank).toBe(0);
      const done2 = done.find((d) => d.step === 2);
      expect(done2).toBeDefined();
      // Step 2 takes m x SLOW ms; the answer came within it, before its DONE.
      expect(answeredAt).toBeLessThan(done2!.at);
    } finally {
      spy.mockRestore();
      await admin.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it('refuses an unknown feed mode with a ConfigError naming it', async () => {
    const { model } = mlpAndReference(SIZES, 35, tf.train.sgd(0.1));
    await expect(
      createPipeline({
        model,
        stages: 1,
        microbatches: 2,
        feed: 'all' as never,
        optimizer: tf.train.sgd(0.1),
        loss: 'categoricalCrossentropy',
        nats: { servers: nats.server.url },
      }),
    ).rejects.toThrow(ConfigError);
    await expect(
      createPipeline({
        model,
        stages: 1,
        microbatches: 2,
        feed: 'all' as never,
        optimizer: tf.train.sgd(0.1),
        loss: 'categoricalCrossentropy',
        nats: { servers: nats.server.url },
      }),
    ).rejects.toThrow(/feed must be "step" or "bounded", got "all"/);
  });
});
