import { describe, expect, it } from 'vitest';
import { InspectorModel, stepView } from '../../src/inspect/model.js';
import { sanitize } from '../../src/inspect/sanitize.js';

describe('stepView', () => {
  it('measures the bubble as idle stage time over the span, beside (p-1)/(m+p-1)', () => {
    // 2 stages, 2 microbatches, span 10 ms, busy 3 + 3 + 2 + 2 = 10 ms of 20 stage-ms.
    const v = stepView(7, [
      { rank: 0, step: 7, action: 'F0', t0: 100, ms: 3 },
      { rank: 0, step: 7, action: 'F1', t0: 103, ms: 3 },
      { rank: 1, step: 7, action: 'F0', t0: 104, ms: 2 },
      { rank: 1, step: 7, action: 'F1', t0: 108, ms: 2 },
    ]);
    expect(v.span).toBe(10);
    expect(v.stages).toBe(2);
    expect(v.microbatches).toBe(2);
    expect(v.measuredBubble).toBeCloseTo(0.5, 12);
    expect(v.theoreticalBubble).toBeCloseTo(1 / 3, 12);
    expect(v.actions.map((a) => a.start)).toEqual([0, 3, 4, 8]);
  });

  it('keeps the newest steps only', () => {
    const m = new InspectorModel('j', 2);
    for (const step of [1, 2, 3]) m.applyAction({ rank: 0, step, action: 'F0', t0: step, ms: 1 }, 'j');
    expect([...m.steps.keys()].sort()).toEqual([2, 3]);
  });

  it('keeps the first error and counts the rest', () => {
    const m = new InspectorModel('j');
    m.applyError({ rank: 1, step: 2, key: 'j/2/1B0', code: 'COMPUTE', message: 'first' }, 'j');
    const u = m.applyError({ rank: 0, step: 2, key: 'j/2/0F1', code: 'COMPUTE', message: 'second' }, 'j');
    expect(u).toMatchObject({ kind: 'error', error: { key: 'j/2/1B0', message: 'first' }, count: 2 });
  });
});

describe('sanitize', () => {
  it('replaces tensor bytes, redacts secrets, drops functions and bounds size', () => {
    const ctx = {
      inbox: { 'FORWARD:0': { key: { step: 1 }, tensors: [{ name: 'a0', shape: [2, 3], data: new Float32Array(6) }] } },
      nats: { user: 'stage', password: 'hunter2', token: 'abc' },
      fn: () => 1,
      big: Array.from({ length: 60 }, (_, i) => i),
      deep: { a: { b: { c: { d: { e: { f: { g: 1 } } } } } } },
      err: Object.assign(new Error('boom'), { code: 'SHAPE' }),
      nan: Number.NaN,
    };
    const s = sanitize(ctx) as Record<string, any>;
    expect(s.inbox['FORWARD:0'].tensors[0].data).toBe('[Float32Array 6]');
    expect(s.nats).toEqual({ user: 'stage', password: '[redacted]', token: '[redacted]' });
    expect('fn' in s).toBe(false);
    expect(s.big).toHaveLength(51);
    expect(s.big[50]).toBe('… 10 more');
    // Ten levels, as @statelyai/inspect's depth limit: the context is level 1 here.
    expect(sanitize({ a: { b: { c: { d: { e: { f: { g: { h: { i: { j: { k: 1 } } } } } } } } } } })).toEqual({
      a: { b: { c: { d: { e: { f: { g: { h: { i: { j: '[Object]' } } } } } } } } },
    });
    expect(JSON.stringify(s.deep)).not.toContain('[Object]');
    expect(s.err).toEqual({ name: 'Error', message: 'boom', code: 'SHAPE' });
    expect(s.nan).toBe('NaN');
  });
});

describe('an inspector that opens late', () => {
  const actor = (sessionId: string, name: string, value: unknown, parentId?: string) => ({
    type: '@xstate.actor' as const,
    sessionId,
    name,
    parentId,
    rootId: sessionId,
    createdAt: '0',
    id: null,
    _version: '0.7.2',
    definition: JSON.stringify({ id: name, states: { idle: {}, running: {} } }),
    snapshot: { status: 'active', value, context: { step: 7 } },
  });

  it('draws the actors and the errors and refusals a presence answer brings, and counts on from there', () => {
    const m = new InspectorModel('j');
    // A snapshot of an actor it never saw announced: unknown, nothing drawn, who is asked.
    const snap = {
      type: '@xstate.snapshot' as const,
      sessionId: 'j:stage-0',
      rootId: 'j:stage-0',
      createdAt: '0',
      id: null,
      _version: '0.7.2',
      event: { type: 'FRAME' },
      snapshot: { status: 'active', value: 'running' },
    };
    expect(m.applyInspection(snap, 'j')).toBeNull();
    expect(m.unknownSeen).toBe(true);
    const first = { rank: 1, step: 3, key: 'j/3/1F0', code: 'COMPUTE', message: 'boom' };
    const reject = { rank: 0, subject: 'troupe.j.stage.0.INPUT', code: 'SHAPE', message: 'x: shape [3] is not [4]', step: null, microbatch: null, phase: null };
    const updates = m.applyPresence({
      scope: 'j',
      actor: 'scheduler',
      actors: [actor('j:scheduler', 'scheduler', { active: 'feeding' }), actor('j:scheduler/x:9', 'beginStep', null, 'j:scheduler')],
      shape: { step: 7, stages: 2, microbatches: 4 },
      errors: { count: 3, first, latest: [first] },
      rejects: { count: 5, latest: [reject] },
    });
    expect(updates.filter((u) => u.kind === 'actor').map((u) => u.kind === 'actor' && u.actor.name)).toEqual(['scheduler']); // children are not drawn
    expect(m.actors.get('j:scheduler')!.value).toEqual({ active: 'feeding' });
    expect(m.errors).toBe(3);
    expect(m.firstError).toEqual(first);
    expect(m.rejected).toBe(5);
    // Later ones add to the kept counts.
    m.applyReject(reject, 'j');
    expect(m.rejected).toBe(6);
    const replay = m.replay();
    expect(replay.find((u) => u.kind === 'error')).toMatchObject({ error: first, count: 3 });
    expect(replay.find((u) => u.kind === 'reject')).toMatchObject({ reject, count: 6 });
  });

  it("uses the step's real p and m for the theoretical bubble, not the counts of a step still running", () => {
    const m = new InspectorModel('j');
    m.applyPresence({ scope: 'j', actor: 'scheduler', actors: [], shape: { step: 5, stages: 4, microbatches: 8 } });
    const u = m.applyAction({ rank: 0, step: 6, action: 'F0', t0: 0, ms: 1 }, 'j');
    expect(u).toMatchObject({ kind: 'step', step: { stages: 4, microbatches: 8 } });
    expect(u!.kind === 'step' && u!.step.theoreticalBubble).toBeCloseTo(3 / 11, 12);
    // A replica other than the first draws no timeline.
    expect(m.applyAction({ rank: 0, step: 6, action: 'F0', t0: 0, ms: 1 }, 'j.r1')).toBeNull();
  });
});
