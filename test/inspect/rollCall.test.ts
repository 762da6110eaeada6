/** Answers to "who is there": what they must hold, and how often a host gives one. */
import { describe, expect, it } from 'vitest';
import { FrameError } from '../../src/errors.js';
import { decodePresence, RollCall } from '../../src/inspect/rollCall.js';
import { Bus } from '../../src/transport/bus.js';
import { countingLock } from '../helpers/countingLock.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const enc = (v: unknown) => new TextEncoder().encode(typeof v === 'string' ? v : JSON.stringify(v));

describe('presence messages', () => {
  it.each([
    ['not json', /not JSON/],
    [[1], /not a JSON object/],
    [{ scope: 'j', actors: [] }, /"scope" and "actor" must be strings/],
    [{ scope: 'j', actor: 'a', actors: [{ type: '@xstate.event' }] }, /"actors" must be a list of @xstate.actor events/],
    [{ scope: 'j', actor: 'a', actors: [], shape: { step: 1, stages: '2', microbatches: 4 } }, /"shape" must hold integer/],
    [{ scope: 'j', actor: 'a', actors: [], errors: { count: 1 } }, /"errors" must hold a count and the latest/],
  ])('refuses %j with a FrameError naming what is wrong', (body, why) => {
    expect(() => decodePresence(enc(body))).toThrow(FrameError);
    expect(() => decodePresence(enc(body))).toThrow(why);
  });
});

describe('RollCall', () => {
  it('answers who on its own subject, and a burst of requests with a few answers, the last one current', async () => {
    const bus = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const asker = await Bus.connect({ role: 'inspector', servers: nats.server.url });
    let state = 0;
    const roll = await RollCall.start({
      bus,
      scope: 'rc.r1',
      actor: 'stage-0',
      answer: () => ({ actors: [], shape: { step: state, stages: 2, microbatches: 4 } }),
    });
    const answers: number[] = [];
    const first = countingLock(1);
    const current = countingLock(1);
    const sub = asker.subscribe('troupe.rc.*.present.*', (m) => {
      expect(m.subject).toBe('troupe.rc.r1.present.stage-0');
      const step = decodePresence(m.data).shape!.step;
      answers.push(step);
      if (step === 0) first.count();
      if (step === 2) current.count();
    });
    try {
      await asker.flush();
      await asker.publish('troupe.rc.who', enc({}));
      await first.wait(5000);
      state = 1;
      const t0 = performance.now();
      for (let i = 0; i < 50; i++) await asker.publish('troupe.rc.who', enc({}));
      await asker.flush();
      state = 2;
      await asker.publish('troupe.rc.who', enc({}));
      await current.wait(5000);
      const ms = performance.now() - t0;
      // One answer at most per 200 ms, and one after the last request: what it says is current.
      expect(answers.length).toBeLessThanOrEqual(2 + Math.ceil(ms / 200));
      expect(answers.at(-1)).toBe(2);
    } finally {
      await sub.drain();
      await roll.close();
      await asker.close();
      await bus.close();
    }
  });
});
