/**
 * Fuzzing a running job: 10,000 random and mutated messages on every subject a job listens
 * to, while it trains. Nothing crashes, every bad message is refused and counted once, and
 * the weights are those of single-process training.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { Phase, subjects } from '../../src/protocol/index.js';
import { Bus } from '../../src/transport/index.js';
import { decodeMessage } from '../../src/protocol/messages.js';
import { CtlVerb } from '../../src/protocol/subjects.js';
import { countingLock } from '../helpers/countingLock.js';
import { data, maxRelDiff, mlpAndReference } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const TOTAL = 10_000;

/** Seeded, so a failure can be replayed. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
}

interface Captured {
  readonly subject: string;
  readonly headers: Record<string, string>;
  readonly data: Uint8Array;
}

const HEADERS = ['Troupe-Job', 'Troupe-Step', 'Troupe-Mb', 'Troupe-Phase', 'Troupe-From', 'Troupe-Tensors', 'Troupe-Bytes', 'Troupe-Chunk'];

describe('fuzzing a running job', () => {
  it(`${TOTAL} random and mutated messages on every subject: no crash, each refused and counted, weights unchanged`, async () => {
    const SIZES = [8, 16, 16, 4];
    const { model, ref } = mlpAndReference(SIZES, 21, tf.train.sgd(0.05));
    const job = 'fuzz';
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 4,
      schedule: '1f1b',
      job,
      optimizer: tf.train.sgd(0.05),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const fuzzer = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'fuzzer' });
    const random = rng(7);
    const pick = <T>(xs: readonly T[]): T => xs[Math.floor(random() * xs.length)]!;
    const bytes = (n: number) => Uint8Array.from({ length: n }, () => Math.floor(random() * 256));
    // Real frames as templates for mutation.
    const captured: Captured[] = [];
    const capture = fuzzer.subscribe(`troupe.${job}.stage.*.*`, (m) => {
      if (captured.length >= 64) return;
      const headers: Record<string, string> = {};
      for (const h of HEADERS) if (m.header(h) !== undefined) headers[h] = m.header(h)!;
      captured.push({ subject: m.subject, headers, data: m.data.slice() });
    });
    // The stages' refusals, as the scheduler hears them (garbage on sched.reject is not one).
    const stageRejects = countingLock(1);
    let refusedFrames = 0;
    let expectedFrames = Infinity;
    const codes = new Map<string, number>();
    const rejects = fuzzer.subscribe(subjects.schedWildcard(job, 'reject'), (m) => {
      try {
        const r = decodeMessage('reject', m.data);
        codes.set(r.code, (codes.get(r.code) ?? 0) + 1);
        if (++refusedFrames === expectedFrames) stageRejects.count();
      } catch {
        // the fuzzer's own garbage on this subject
      }
    });
    await fuzzer.flush();
    const { x, y } = data(32, SIZES[0]!, 4, 3);

    const mutations: ((c: Captured) => Captured)[] = [
      (c) => {
        const h = { ...c.headers };
        delete h[pick(['Troupe-Job', 'Troupe-Step', 'Troupe-Mb', 'Troupe-Phase', 'Troupe-Tensors', 'Troupe-Bytes'])];
        return { ...c, headers: h };
      },
      (c) => ({ ...c, headers: { ...c.headers, 'Troupe-Step': pick(['0', '-1', 'x', '1e3', '']) } }),
      (c) => ({ ...c, headers: { ...c.headers, 'Troupe-Job': pick(['other', 'fuzz2', '', '*', 'a.b']) } }),
      (c) => ({ ...c, headers: { ...c.headers, 'Troupe-Phase': pick(['SIDEWAYS', 'forward', '', 'UPDATE', 'INPUT']) } }),
      (c) => ({
        ...c,
        data:
          c.data.byteLength > 4 && random() < 0.5
            ? c.data.subarray(0, c.data.byteLength - 1 - Math.floor(random() * 4))
            : new Uint8Array([...c.data, ...bytes(1 + Math.floor(random() * 8))]),
      }),
      (c) => ({
        ...c,
        headers: {
          ...c.headers,
          'Troupe-Tensors': pick([
            '',
            '[',
            '{}',
            '[{"name":"a0","dtype":"float64","shape":[1,2]}]',
            '[{"name":"a0","dtype":"float32","shape":[-1,16]}]',
            String(random()),
          ]),
        },
      }),
      (c) => ({ ...c, headers: { ...c.headers, 'Troupe-Mb': pick(['9999', '-3', 'one', '4']) } }),
      (c) => ({ ...c, headers: { ...c.headers, 'Troupe-Chunk': pick(['5/3', '0/0', 'x', '1/1/1', '-1/2']) } }),
      (c) => ({ ...c, headers: { ...c.headers, 'Troupe-Bytes': pick(['0', '-5', 'NaN', String(c.data.byteLength + 4)]) } }),
      () => ({
        subject: '',
        headers: Object.fromEntries(
          HEADERS.filter(() => random() < 0.6).map((h) => [h, String.fromCharCode(...bytes(1 + Math.floor(random() * 12)).map((b) => 33 + (b % 90)))]),
        ),
        data: bytes(Math.floor(random() * 300)),
      }),
    ];
    const stageSubjects = [0, 1].flatMap((r) => [Phase.INPUT, Phase.FORWARD, Phase.BACKWARD, Phase.UPDATE].map((ph) => subjects.stageSubject(job, r, ph)));
    const stateSubjects = [0, 1].map((r) => subjects.stateSubject(job, r));
    const schedSubjects = ['action', 'loss', 'done', 'updated', 'error', 'reject'].flatMap((e) => [0, 1].map((r) => `troupe.${job}.sched.${r}.${e}`));
    const ctlVerbs = [CtlVerb.STEP, CtlVerb.ABORT, CtlVerb.STOP, CtlVerb.LOAD, 'launch', 'rm'];
    const garbageJson = () =>
      pick(['', '{', 'null', '[]', '{"step":"3"}', '{"job":4}', '{"step":1,"microbatches":-1}', String.fromCharCode(...bytes(20).map((b) => 32 + (b % 95)))]);

    let sentFrames = 0;
    let sentEvents = 0;
    let ctlRequests = 0;
    let ctlRefused = 0;
    const ctlReplies: Promise<void>[] = [];
    const fuzz = async () => {
      for (let i = 0; i < TOTAL; i++) {
        const kind = random();
        if (kind < 0.7) {
          // A frame: a mutated real one when there is one, else garbage.
          const template = captured.length ? pick(captured) : { subject: '', headers: {}, data: bytes(16) };
          const m = pick(mutations)(template);
          const subject = random() < 0.85 ? pick(stageSubjects) : pick(stateSubjects);
          await fuzzer.publish(subject, m.data, m.headers);
          sentFrames++;
        } else if (kind < 0.9) {
          await fuzzer.publish(pick(schedSubjects), new TextEncoder().encode(garbageJson()));
          sentEvents++;
        } else {
          const r = pick([0, 1]);
          ctlRequests++;
          ctlReplies.push(
            fuzzer.request(`troupe.${job}.ctl.${r}.${pick(ctlVerbs)}`, new TextEncoder().encode(garbageJson()), 10_000).then((reply) => {
              const a = JSON.parse(new TextDecoder().decode(reply)) as { ok: boolean };
              if (!a.ok) ctlRefused++;
            }),
          );
        }
        if (i % 250 === 249) await fuzzer.flush();
      }
      await fuzzer.flush();
    };

    try {
      // One step first: its frames are the fuzzer's templates.
      await pipe.trainStep(x, y);
      await ref.trainOnBatch(x, y);
      await fuzzer.flush();
      expect(captured.length).toBeGreaterThan(0);
      // Train while the fuzzer runs; the reference takes as many steps on one process.
      const fuzzing = fuzz();
      let done = false;
      void fuzzing.finally(() => (done = true));
      let steps = 0;
      while (!done || steps < 2) {
        const r = await pipe.trainStep(x, y);
        const refLoss = (await ref.trainOnBatch(x, y)) as number;
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        steps++;
      }
      await fuzzing;
      await Promise.all(ctlReplies);
      expectedFrames = sentFrames;
      if (refusedFrames < expectedFrames) await stageRejects.wait(20_000);
      console.log(
        `fuzz: ${sentFrames} frames, ${sentEvents} events, ${ctlRequests} control requests during ${steps} steps; ` +
          `refusals by code: ${JSON.stringify(Object.fromEntries(codes))}`,
      );
      expect(sentFrames + sentEvents + ctlRequests).toBe(TOTAL);
      // Every bad message refused and counted once: frames by the stages, events by the scheduler, requests in their replies.
      expect(refusedFrames).toBe(sentFrames);
      // Mutated real frames are refused for what is wrong with them, not only as unreadable.
      expect([...codes.keys()].length).toBeGreaterThan(1);
      expect(pipe.stats().reduce((n, s) => n + s.rejected, 0)).toBe(sentFrames);
      expect(pipe.malformedEvents()).toBe(sentEvents);
      expect(ctlRefused).toBe(ctlRequests);
      // Nothing crashed, nothing was applied: the stages are healthy and the weights are single-process training's.
      await pipe.trainStep(x, y);
      await ref.trainOnBatch(x, y);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await capture.drain();
      await rejects.drain();
      await fuzzer.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  }, 120_000);
});
