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
    const m = new InspectorModel(2);
    for (const step of [1, 2, 3]) m.applyAction({ rank: 0, step, action: 'F0', t0: step, ms: 1 });
    expect([...m.steps.keys()].sort()).toEqual([2, 3]);
  });

  it('keeps the first error and counts the rest', () => {
    const m = new InspectorModel();
    m.applyError({ rank: 1, step: 2, key: 'j/2/1B0', code: 'COMPUTE', message: 'first' });
    const u = m.applyError({ rank: 0, step: 2, key: 'j/2/0F1', code: 'COMPUTE', message: 'second' });
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
    expect(JSON.stringify(s.deep)).toContain('[…]');
    expect(s.err).toEqual({ name: 'Error', message: 'boom', code: 'SHAPE' });
    expect(s.nan).toBe('NaN');
  });
});
