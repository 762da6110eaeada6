import { describe, expect, it } from 'vitest';
import { ScheduleError } from '../../src/errors.js';
import { parseStageActions } from '../../src/schedule/action.js';
import { drawSvg, drawTerminal } from '../../src/schedule/draw.js';
import { gpipe } from '../../src/schedule/gpipe.js';
import { oneFOneB } from '../../src/schedule/oneFOneB.js';
import { simulate } from '../../src/schedule/simulate.js';

describe('simulate', () => {
  it.each([2, 3, 4].flatMap((p) => [2, 4, 8].map((m) => ({ p, m }))))('p=$p m=$m: GPipe and 1F1B take (m+p-1)(F+B) and idle (p-1)/(m+p-1)', ({ p, m }) => {
    for (const s of [gpipe(p, m), oneFOneB(p, m)]) {
      const sim = simulate(s, { F: 1, B: 2 });
      expect(sim.stepTime).toBe((m + p - 1) * 3);
      expect(sim.bubble).toBeCloseTo((p - 1) / (m + p - 1), 12);
    }
    expect(simulate(gpipe(p, m)).peakActivations).toEqual(new Array(p).fill(m));
    expect(simulate(oneFOneB(p, m)).peakActivations).toEqual(Array.from({ length: p }, (_, r) => Math.min(m, p - r)));
  });

  it('places GPipe p=2 m=2 by hand', () => {
    const sim = simulate(gpipe(2, 2), { F: 1, B: 2 });
    const at = sim.timeline.map((row) => row.map((x) => `${x.action.kind}${x.action.microbatch}@${x.start}`));
    // stage 1 starts F0 once stage 0's F0 ends; B0 on stage 0 waits for stage 1's B0.
    expect(at).toEqual([
      ['F0@0', 'F1@1', 'B0@5', 'B1@7'],
      ['F0@1', 'F1@2', 'B0@3', 'B1@5'],
    ]);
  });

  it('adds the transfer cost on every stage-to-stage dependency', () => {
    const plain = simulate(oneFOneB(2, 2), { F: 1, B: 2 });
    const slow = simulate(oneFOneB(2, 2), { F: 1, B: 2, comm: 1 });
    // Critical path F0 -> F0' -> B0' -> B0 ... crosses stages 4 times here: 2 per microbatch chain.
    expect(slow.stepTime).toBeGreaterThan(plain.stepTime);
    expect(slow.timeline[1]![0]!.start).toBe(2);
  });

  it("lets the previous stage's backward start once an unsplit backward has its input gradients, before its weight gradients", () => {
    // 1F1B p=2 m=2, F = B = W = 1: stage 1's backward takes 2 (B + W) but sends after 1.
    const sim = simulate(oneFOneB(2, 2), { F: 1, B: 1, W: 1, inputGradientsFirst: true });
    const at = sim.timeline.map((row) => row.map((x) => `${x.action.kind}${x.action.microbatch}@${x.start}-${x.end}`));
    expect(at).toEqual([
      ['F0@0-1', 'F1@1-2', 'B0@3-5', 'B1@6-8'],
      ['F0@1-2', 'B0@2-4', 'F1@4-5', 'B1@5-7'],
    ]);
    expect(sim.stepTime).toBe(8);
    // As the papers count it (the gradients leave at the backward's end): 9.
    expect(simulate(oneFOneB(2, 2), { F: 1, B: 1, W: 1 }).stepTime).toBe(9);
  });

  it('takes costs per stage: the slowest stage sets the pace', () => {
    // GPipe p=2 m=2 with stage 1 twice as slow: F 1 / 2, B 2 / 4.
    const sim = simulate(gpipe(2, 2), (st) => (st === 0 ? { F: 1, B: 2 } : { F: 2, B: 4 }));
    const at = sim.timeline.map((row) => row.map((x) => `${x.action.kind}${x.action.microbatch}@${x.start}`));
    expect(at).toEqual([
      ['F0@0', 'F1@1', 'B0@9', 'B1@13'],
      ['F0@1', 'F1@3', 'B0@5', 'B1@9'],
    ]);
    expect(sim.stepTime).toBe(15);
  });

  it('refuses a schedule that cannot finish, naming the stuck actions', () => {
    // Stage 0 wants B0 (needs stage 1's B0) before F0; stage 1 wants F0 (needs stage 0's F0) first.
    const stuck = [parseStageActions('B0 F0', 0), parseStageActions('F0 B0', 1)];
    expect(() => simulate(stuck)).toThrow(ScheduleError);
    expect(() => simulate(stuck)).toThrow(/stuck at 0B0, 1F0/);
  });
});

describe('drawing', () => {
  it('draws one terminal row per stage with a cell per time unit', () => {
    const text = drawTerminal(simulate(gpipe(2, 2), { F: 1, B: 2 }));
    // Cells of 3 characters; stage 0 idles in time units 2-4, stage 1 at 0 and 7-8.
    expect(text.split('\n')).toEqual([' 0 |' + 'F0 F1 ' + '   '.repeat(3) + 'B0 ·· B1 ·· ', ' 1 |' + '   F0 F1 B0 ·· B1 ·· ' + '   '.repeat(2)]);
  });

  it('draws an SVG with a box per action and the bubble in the caption', () => {
    const svg = drawSvg(simulate(oneFOneB(3, 4)));
    expect(svg.match(/<rect /g)).toHaveLength(3 * 4 * 2);
    expect(svg).toContain('bubble 33.3%');
  });
});
