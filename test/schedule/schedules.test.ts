import { describe, expect, it } from 'vitest';
import { ConfigError, ScheduleError } from '../../src/errors.js';
import { Phase } from '../../src/protocol/phase.js';
import { formatAction, formatSchedule, formatStageActions, parseAction, parseStageActions, type Action, type Schedule } from '../../src/schedule/action.js';
import { inFlightBounds, maxInFlight, releasedBy } from '../../src/schedule/constraint.js';
import { simulate } from '../../src/schedule/simulate.js';
import { zeroBubbleH1 } from '../../src/schedule/zeroBubble.js';
import { formatDeviceSchedule, interleaved1F1B, loopedBFS, stageRows } from '../../src/schedule/interleaved.js';
import { gpipe } from '../../src/schedule/gpipe.js';
import { microbatchOffsets, microbatchSizes } from '../../src/schedule/microbatch.js';
import { needs, receives } from '../../src/schedule/needs.js';
import { oneFOneB } from '../../src/schedule/oneFOneB.js';
import { ScheduleName, buildPlacedSchedule, buildSchedule, forwardOnlySchedule, isScheduleName } from '../../src/schedule/schedules.js';
import { dependencies, validatePlaced, validateSchedule } from '../../src/schedule/validate.js';

/** Builds a schedule from hand-written rows like ['F0 F1 B0 B1', ...]. */
function rows(...lines: string[]): Action[][] {
  return lines.map((l, stage) => parseStageActions(l, stage));
}

function scheduleError(fn: () => unknown, re: RegExp): void {
  expect(fn).toThrow(ScheduleError);
  expect(fn).toThrow(re);
}

/**
 * Start tick of every action when each action takes one tick, a stage runs its list in
 * order, and an action starts once the actions it depends on have finished. An oracle
 * written here, independent of validate.ts.
 */
function timeline(s: Schedule): Map<string, number> {
  const p = s.length;
  const end = new Map<string, number>();
  const start = new Map<string, number>();
  const cursor = s.map(() => 0);
  const free = s.map(() => 0);
  for (let guard = 0; guard < 10_000; guard++) {
    let moved = false;
    for (let st = 0; st < p; st++) {
      const a = s[st]![cursor[st]!];
      if (!a) continue;
      const deps: string[] = [];
      if (a.kind === 'F' && st > 0) deps.push(`${st - 1}F${a.microbatch}`);
      if (a.kind === 'B' && st < p - 1) deps.push(`${st + 1}B${a.microbatch}`);
      if (!deps.every((d) => end.has(d))) continue;
      const t = Math.max(free[st]!, ...deps.map((d) => end.get(d)!));
      start.set(formatAction(a), t);
      end.set(formatAction(a), t + 1);
      free[st] = t + 1;
      cursor[st]!++;
      moved = true;
    }
    if (!moved) break;
  }
  return start;
}

describe('GPipe tables', () => {
  it('p=1 m=3', () => {
    expect(formatSchedule(gpipe(1, 3))).toEqual(['0: 0F0 0F1 0F2 0B0 0B1 0B2']);
  });

  it('p=3 m=1', () => {
    expect(formatSchedule(gpipe(3, 1))).toEqual(['0: 0F0 0B0', '1: 1F0 1B0', '2: 2F0 2B0']);
  });

  it('p=2 m=4', () => {
    expect(formatSchedule(gpipe(2, 4))).toEqual(['0: 0F0 0F1 0F2 0F3 0B0 0B1 0B2 0B3', '1: 1F0 1F1 1F2 1F3 1B0 1B1 1B2 1B3']);
  });

  it('p=3 m=4', () => {
    expect(formatSchedule(gpipe(3, 4))).toEqual([
      '0: 0F0 0F1 0F2 0F3 0B0 0B1 0B2 0B3',
      '1: 1F0 1F1 1F2 1F3 1B0 1B1 1B2 1B3',
      '2: 2F0 2F1 2F2 2F3 2B0 2B1 2B2 2B3',
    ]);
  });

  it('p=4 m=2 (m < p)', () => {
    expect(formatSchedule(gpipe(4, 2))).toEqual(['0: 0F0 0F1 0B0 0B1', '1: 1F0 1F1 1B0 1B1', '2: 2F0 2F1 2B0 2B1', '3: 3F0 3F1 3B0 3B1']);
  });

  it('p=4 m=8', () => {
    expect(gpipe(4, 8).map(formatStageActions)).toEqual([
      'F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7',
      'F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7',
      'F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7',
      'F0 F1 F2 F3 F4 F5 F6 F7 B0 B1 B2 B3 B4 B5 B6 B7',
    ]);
    expect(gpipe(4, 8).every((row, st) => row.every((a) => a.stage === st))).toBe(true);
  });

  it('runs the documented p=2 m=3 timeline', () => {
    // gpipe.ts: stage 0 F0 F1 F2 at 0-2 and B0 B1 B2 at 5-7; stage 1 F0 F1 F2 at 1-3 and B0 B1 B2 at 4-6.
    const t = timeline(gpipe(2, 3));
    expect(['0F0', '0F1', '0F2', '0B0', '0B1', '0B2'].map((a) => t.get(a))).toEqual([0, 1, 2, 5, 6, 7]);
    expect(['1F0', '1F1', '1F2', '1B0', '1B1', '1B2'].map((a) => t.get(a))).toEqual([1, 2, 3, 4, 5, 6]);
  });
});

describe('1F1B tables (stage r: min(p-r-1, m) warm-up F, then F/B pairs, then the remaining B)', () => {
  it('p=1 m=3: no warm-up, strict alternation', () => {
    expect(formatSchedule(oneFOneB(1, 3))).toEqual(['0: 0F0 0B0 0F1 0B1 0F2 0B2']);
  });

  it('p=3 m=1', () => {
    expect(formatSchedule(oneFOneB(3, 1))).toEqual(['0: 0F0 0B0', '1: 1F0 1B0', '2: 2F0 2B0']);
  });

  it('p=2 m=4', () => {
    expect(formatSchedule(oneFOneB(2, 4))).toEqual(['0: 0F0 0F1 0B0 0F2 0B1 0F3 0B2 0B3', '1: 1F0 1B0 1F1 1B1 1F2 1B2 1F3 1B3']);
  });

  it('p=3 m=4', () => {
    expect(formatSchedule(oneFOneB(3, 4))).toEqual([
      '0: 0F0 0F1 0F2 0B0 0F3 0B1 0B2 0B3',
      '1: 1F0 1F1 1B0 1F2 1B1 1F3 1B2 1B3',
      '2: 2F0 2B0 2F1 2B1 2F2 2B2 2F3 2B3',
    ]);
  });

  it('p=4 m=2 (m < p: warm-up capped at m, no steady state on stages 0 and 1)', () => {
    expect(formatSchedule(oneFOneB(4, 2))).toEqual(['0: 0F0 0F1 0B0 0B1', '1: 1F0 1F1 1B0 1B1', '2: 2F0 2F1 2B0 2B1', '3: 3F0 3B0 3F1 3B1']);
  });

  it('p=4 m=8', () => {
    expect(oneFOneB(4, 8).map(formatStageActions)).toEqual([
      'F0 F1 F2 F3 B0 F4 B1 F5 B2 F6 B3 F7 B4 B5 B6 B7',
      'F0 F1 F2 B0 F3 B1 F4 B2 F5 B3 F6 B4 F7 B5 B6 B7',
      'F0 F1 B0 F2 B1 F3 B2 F4 B3 F5 B4 F6 B5 F7 B6 B7',
      'F0 B0 F1 B1 F2 B2 F3 B3 F4 B4 F5 B5 F6 B6 F7 B7',
    ]);
  });

  it('p=3 m=3 (m = p)', () => {
    expect(oneFOneB(3, 3).map(formatStageActions)).toEqual(['F0 F1 F2 B0 B1 B2', 'F0 F1 B0 F2 B1 B2', 'F0 B0 F1 B1 F2 B2']);
  });

  it('runs the documented p=2 m=4 timeline', () => {
    // oneFOneB.ts: stage 0 F0 F1 . B0 F2 B1 F3 B2 . B3; stage 1 . F0 B0 F1 B1 F2 B2 F3 B3.
    const t = timeline(oneFOneB(2, 4));
    expect(['0F0', '0F1', '0B0', '0F2', '0B1', '0F3', '0B2', '0B3'].map((a) => t.get(a))).toEqual([0, 1, 3, 4, 5, 6, 7, 9]);
    expect(['1F0', '1B0', '1F1', '1B1', '1F2', '1B2', '1F3', '1B3'].map((a) => t.get(a))).toEqual([1, 2, 3, 4, 5, 6, 7, 8]);
  });

  it('both schedules finish in 2(m + p - 1) ticks with unit-time actions', () => {
    for (let p = 1; p <= 5; p++) {
      for (let m = 1; m <= 9; m++) {
        for (const s of [gpipe(p, m), oneFOneB(p, m)]) {
          const t = timeline(s);
          expect(t.size).toBe(2 * p * m);
          expect(Math.max(...t.values()) + 1).toBe(2 * (m + p - 1));
        }
      }
    }
  });
});

describe('validateSchedule', () => {
  it('accepts every built-in schedule for p in 1..5, m in 1..9', () => {
    for (let p = 1; p <= 5; p++) {
      for (let m = 1; m <= 9; m++) {
        expect(() => validateSchedule(gpipe(p, m), p, m)).not.toThrow();
        expect(() => validateSchedule(oneFOneB(p, m), p, m)).not.toThrow();
        expect(() => validateSchedule(forwardOnlySchedule(p, m), p, m, { forwardOnly: true })).not.toThrow();
        expect(buildSchedule(ScheduleName.GPIPE, p, m)).toEqual(gpipe(p, m));
        expect(buildSchedule(ScheduleName.ONE_F_ONE_B, p, m)).toEqual(oneFOneB(p, m));
      }
    }
  });

  it('accepts a valid schedule that is not built in (backwards in reverse order)', () => {
    expect(() => validateSchedule(rows('F0 F1 F2 B2 B1 B0', 'F0 F1 F2 B2 B1 B0'), 2, 3)).not.toThrow();
  });

  it('refuses a wrong number of stages', () => {
    scheduleError(() => validateSchedule(gpipe(2, 2), 3, 2), /schedule has 2 stages, expected 3/);
  });

  it('refuses a missing action', () => {
    scheduleError(() => validateSchedule(rows('F0 F1 B0 B1', 'F0 F1 B0'), 2, 2), /^action 1B1 is missing$/);
    scheduleError(() => validateSchedule(rows('F0 B0', 'F0 F1 B0 B1'), 2, 2), /^action 0F1 is missing$/);
    scheduleError(() => validateSchedule(rows('', 'F0 B0'), 2, 1), /^action 0F0 is missing$/);
  });

  it('refuses a duplicated action', () => {
    scheduleError(() => validateSchedule(rows('F0 F1 F1 B0 B1', 'F0 F1 B0 B1'), 2, 2), /^action 0F1 appears twice$/);
    scheduleError(() => validateSchedule(rows('F0 F1 B0 B1', 'F0 F1 B0 B1 B0'), 2, 2), /^action 1B0 appears twice$/);
  });

  it('refuses a B before its F', () => {
    scheduleError(() => validateSchedule(rows('F0 F1 B0 B1', 'B0 F0 F1 B1'), 2, 2), /^action 1B0 comes before 1F0$/);
    // Dropping an F while keeping its B is caught the same way.
    scheduleError(() => validateSchedule(rows('F0 B0 B1', 'F0 F1 B0 B1'), 2, 2), /^action 0B1 comes before 0F1$/);
  });

  it('refuses a microbatch out of range', () => {
    scheduleError(() => validateSchedule(rows('F0 F1 F2 B0 B1 B2', 'F0 F1 B0 B1'), 2, 2), /^action 0F2: microbatch out of range 0\.\.1$/);
    const negative: Action[][] = rows('F0 B0', 'F0 B0');
    negative[1]!.push({ stage: 1, kind: 'F', microbatch: -1 });
    scheduleError(() => validateSchedule(negative, 2, 1), /^action 1F-1: microbatch out of range 0\.\.0$/);
    const fraction: Action[][] = rows('F0 B0', 'F0 B0');
    fraction[0]!.splice(1, 0, { stage: 0, kind: 'F', microbatch: 0.5 });
    scheduleError(() => validateSchedule(fraction, 2, 1), /^action 0F0\.5: microbatch out of range/);
  });

  it("refuses a stage listing another stage's action", () => {
    const s = rows('F0 B0', 'F0 B0');
    s[0]!.splice(1, 0, { stage: 1, kind: 'F', microbatch: 0 });
    scheduleError(() => validateSchedule(s, 2, 1), /^action 1F0 is listed under stage 0$/);
  });

  it('refuses a backward in a forward-only schedule, and a forward-only one in training', () => {
    scheduleError(() => validateSchedule(gpipe(2, 2), 2, 2, { forwardOnly: true }), /^action 0B0: backward in a forward-only schedule$/);
    scheduleError(() => validateSchedule(forwardOnlySchedule(2, 2), 2, 2), /^action 0B0 is missing$/);
  });

  it('refuses a 2-stage schedule that deadlocks, naming the stuck actions', () => {
    // Stage 0 wants B0 (needs 1B0) before F1; stage 1 wants F1 (needs 0F1) before B0.
    const s = rows('F0 B0 F1 B1', 'F0 F1 B0 B1');
    scheduleError(() => validateSchedule(s, 2, 2), /^schedule deadlocks \(m=2\): 0B0 waits for 1B0; 1F1 waits for 0F1$/);
  });

  it('refuses a 3-stage deadlock that blocks a stage downstream too', () => {
    const s = rows('F0 B0 F1 B1', 'F0 F1 B0 B1', 'F0 F1 B0 B1');
    scheduleError(() => validateSchedule(s, 3, 2), /^schedule deadlocks \(m=2\): 0B0 waits for 1B0; 1F1 waits for 0F1; 2F1 waits for 1F1$/);
  });

  it('takes other orders unless they make a cycle', () => {
    // Stage 0 runs F1 before F0: stage 1 just waits for F0; no cycle.
    expect(() => validateSchedule(rows('F1 F0 B0 B1', 'F0 F1 B0 B1'), 2, 2)).not.toThrow();
    // The last stage runs B1 before B0: stage 0's B0 waits a tick longer; no cycle.
    expect(() => validateSchedule(rows('F0 F1 B0 B1', 'F0 F1 B1 B0'), 2, 2)).not.toThrow();
    // Stage 1 wants F1 first while stage 0 has F1 only after B0, which needs stage 1's B0: a cycle.
    scheduleError(() => validateSchedule(rows('F0 B0 F1 B1', 'F1 F0 B0 B1'), 2, 2), /^schedule deadlocks \(m=2\): 0B0 waits for 1B0; 1F1 waits for 0F1$/);
  });

  it("dependencies: F waits for the previous stage's F, B for the next stage's B", () => {
    const d = (s: string, p: number): string[] => dependencies(parseAction(s), p).map(formatAction);
    expect(d('0F3', 3)).toEqual([]);
    expect(d('1F3', 3)).toEqual(['0F3']);
    expect(d('2F3', 3)).toEqual(['1F3']);
    expect(d('0B3', 3)).toEqual(['1B3']);
    expect(d('1B3', 3)).toEqual(['2B3']);
    expect(d('2B3', 3)).toEqual([]);
    expect(d('0F0', 1)).toEqual([]);
    expect(d('0B0', 1)).toEqual([]);
  });
});

describe('actions as text', () => {
  it('formats and parses actions', () => {
    expect(formatAction({ stage: 12, kind: 'B', microbatch: 30 })).toBe('12B30');
    expect(parseAction('1F0')).toEqual({ stage: 1, kind: 'F', microbatch: 0 });
    expect(parseAction('12B30')).toEqual({ stage: 12, kind: 'B', microbatch: 30 });
    for (const bad of ['', 'F0', '1F', '1X0', '1f0', '1F0 ', '-1F0', '1F-1', '1F0B1']) {
      expect(() => parseAction(bad)).toThrow(ScheduleError);
      expect(() => parseAction(bad)).toThrow(`"${bad}" is not an action like 1F0`);
    }
  });

  it("formats and parses a stage's list", () => {
    const row = oneFOneB(3, 4)[1]!;
    expect(formatStageActions(row)).toBe('F0 F1 B0 F2 B1 F3 B2 B3');
    expect(parseStageActions('F0 F1 B0 F2 B1 F3 B2 B3', 1)).toEqual(row);
    expect(parseStageActions('  F0   B0 ', 2)).toEqual([
      { stage: 2, kind: 'F', microbatch: 0 },
      { stage: 2, kind: 'B', microbatch: 0 },
    ]);
    expect(parseStageActions('', 0)).toEqual([]);
    expect(parseStageActions('   ', 0)).toEqual([]);
    expect(() => parseStageActions('F0 X1', 0)).toThrow(/"0X1" is not an action/);
    expect(formatSchedule([[], []])).toEqual(['0: ', '1: ']);
  });
});

describe('in-flight bounds', () => {
  it('1F1B holds at most p - rank microbatches, capped by m', () => {
    for (let p = 1; p <= 5; p++) {
      for (let m = 1; m <= 9; m++) {
        expect(inFlightBounds(oneFOneB(p, m))).toEqual(Array.from({ length: p }, (_, r) => Math.min(p - r, m)));
      }
    }
  });

  it('GPipe holds all m on every stage', () => {
    for (let p = 1; p <= 5; p++) {
      for (let m = 1; m <= 9; m++) {
        expect(inFlightBounds(gpipe(p, m))).toEqual(Array.from({ length: p }, () => m));
      }
    }
  });

  it('forward-only holds 1', () => {
    expect(inFlightBounds(forwardOnlySchedule(3, 5))).toEqual([1, 1, 1]);
    expect(maxInFlight(parseStageActions('F0 F1 F2', 0))).toBe(1);
  });

  it('counts the peak of hand-written lists', () => {
    expect(maxInFlight(parseStageActions('F0 B0 F1 B1', 0))).toBe(1);
    expect(maxInFlight(parseStageActions('F0 F1 B0 F2 F3 B1 B2 B3', 0))).toBe(3);
    expect(maxInFlight(parseStageActions('F0 F1 F2 B0 B1 B2', 0))).toBe(3);
    expect(maxInFlight([])).toBe(0);
    // Concrete tables from above: p=4 m=8 gives 4, 3, 2, 1; p=4 m=2 gives 2, 2, 2, 1.
    expect(inFlightBounds(oneFOneB(4, 8))).toEqual([4, 3, 2, 1]);
    expect(inFlightBounds(oneFOneB(4, 2))).toEqual([2, 2, 2, 1]);
  });
});

describe('microbatchSizes', () => {
  it('matches hand-computed splits', () => {
    expect(microbatchSizes(10, 4)).toEqual([3, 3, 2, 2]);
    expect(microbatchSizes(8, 4)).toEqual([2, 2, 2, 2]);
    expect(microbatchSizes(7, 1)).toEqual([7]);
    expect(microbatchSizes(5, 5)).toEqual([1, 1, 1, 1, 1]);
    expect(microbatchSizes(32, 3)).toEqual([11, 11, 10]);
    expect(microbatchSizes(9, 8)).toEqual([2, 1, 1, 1, 1, 1, 1, 1]);
  });

  it('sums to the batch, differs by at most 1, larger ones first', () => {
    for (let batch = 1; batch <= 40; batch++) {
      for (let m = 1; m <= batch; m++) {
        const s = microbatchSizes(batch, m);
        expect(s).toHaveLength(m);
        expect(s.reduce((a, b) => a + b, 0)).toBe(batch);
        expect(Math.max(...s) - Math.min(...s)).toBeLessThanOrEqual(1);
        expect(Math.min(...s)).toBeGreaterThanOrEqual(1);
        expect(s.every((x, i) => Number.isInteger(x) && (i === 0 || x <= s[i - 1]!))).toBe(true);
        expect(s.filter((x) => x > Math.floor(batch / m))).toHaveLength(batch % m);
      }
    }
  });

  it('refuses a batch smaller than m', () => {
    expect(() => microbatchSizes(3, 4)).toThrow(ConfigError);
    expect(() => microbatchSizes(3, 4)).toThrow(/a batch of 3 examples cannot be split into 4 microbatches/);
  });

  it.each([
    [0, 1, /batch size 0/],
    [-4, 2, /batch size -4/],
    [2.5, 1, /batch size 2.5/],
    [NaN, 1, /batch size NaN/],
    [4, 0, /microbatches 0/],
    [4, 1.5, /microbatches 1.5/],
    [4, -1, /microbatches -1/],
    [4, Infinity, /microbatches Infinity/],
  ])('refuses batch %s, m %s', (batch, m, re) => {
    expect(() => microbatchSizes(batch, m)).toThrow(ConfigError);
    expect(() => microbatchSizes(batch, m)).toThrow(re);
  });

  it("microbatchOffsets gives each microbatch's first example", () => {
    expect(microbatchOffsets([3, 3, 2, 2])).toEqual([0, 3, 6, 8]);
    expect(microbatchOffsets([5])).toEqual([0]);
    expect(microbatchOffsets([])).toEqual([]);
  });
});

describe('buildSchedule and sizes', () => {
  it('knows gpipe and 1f1b', () => {
    expect(isScheduleName('gpipe')).toBe(true);
    expect(isScheduleName('1f1b')).toBe(true);
    expect(formatSchedule(buildSchedule('1f1b', 2, 2))).toEqual(['0: 0F0 0F1 0B0 0B1', '1: 1F0 1B0 1F1 1B1']);
  });

  it.each(['', 'GPIPE', '1F1B', 'pipedream', 'interleaved-1f1b', 'toString', 'constructor', '__proto__'])(
    'refuses the unknown name %j with a ConfigError',
    (name) => {
      expect(isScheduleName(name)).toBe(false);
      expect(() => buildSchedule(name, 2, 2)).toThrow(ConfigError);
      expect(() => buildSchedule(name, 2, 2)).toThrow(`unknown schedule "${name}"; known: gpipe, 1f1b`);
    },
  );

  it.each([
    [0, 2, /stage count 0 must be a positive integer/],
    [-1, 2, /stage count -1/],
    [1.5, 2, /stage count 1.5/],
    [2, 0, /microbatch count 0 must be a positive integer/],
    [2, 2.5, /microbatch count 2.5/],
    [2, NaN, /microbatch count NaN/],
  ])('refuses p=%s m=%s with a ScheduleError', (p, m, re) => {
    for (const build of [gpipe, oneFOneB, forwardOnlySchedule]) {
      expect(() => build(p, m)).toThrow(ScheduleError);
      expect(() => build(p, m)).toThrow(re);
    }
    expect(() => buildSchedule('gpipe', p, m)).toThrow(ScheduleError);
  });

  it('forwardOnlySchedule: every stage runs F0..F(m-1)', () => {
    expect(formatSchedule(forwardOnlySchedule(3, 2))).toEqual(['0: 0F0 0F1', '1: 1F0 1F1', '2: 2F0 2F1']);
  });
});

describe('needs and receives', () => {
  const F = (mb: number): Action => ({ stage: 0, kind: 'F', microbatch: mb });
  const B = (mb: number): Action => ({ stage: 0, kind: 'B', microbatch: mb });

  it('single stage: F needs its INPUT (data and labels), B needs nothing', () => {
    expect(needs(F(2), 0, 1)).toEqual(['INPUT:2']);
    expect(needs(B(2), 0, 1)).toEqual([]);
  });

  it('first stage of several: F needs INPUT, B needs BACKWARD', () => {
    expect(needs(F(1), 0, 3)).toEqual(['INPUT:1']);
    expect(needs(B(1), 0, 3)).toEqual(['BACKWARD:1']);
  });

  it('middle stage: F needs FORWARD, B needs BACKWARD', () => {
    expect(needs(F(4), 1, 3)).toEqual(['FORWARD:4']);
    expect(needs(B(4), 1, 3)).toEqual(['BACKWARD:4']);
  });

  it('last stage: F needs FORWARD and INPUT (labels), B needs nothing', () => {
    expect(needs(F(0), 2, 3)).toEqual(['FORWARD:0', 'INPUT:0']);
    expect(needs(B(0), 2, 3)).toEqual([]);
    expect(needs(F(5), 1, 2)).toEqual(['FORWARD:5', 'INPUT:5']);
  });

  it('receives: the table of phases per stage', () => {
    const table = (p: number, forwardOnly: boolean): string[][] =>
      Array.from({ length: p }, (_, r) => Object.values(Phase).filter((ph) => receives(ph, r, p, forwardOnly)));
    expect(table(1, false)).toEqual([['INPUT']]);
    expect(table(1, true)).toEqual([['INPUT']]);
    expect(table(2, false)).toEqual([
      ['INPUT', 'BACKWARD'],
      ['INPUT', 'FORWARD'],
    ]);
    expect(table(3, false)).toEqual([
      ['INPUT', 'BACKWARD'],
      ['FORWARD', 'BACKWARD'],
      ['INPUT', 'FORWARD'],
    ]);
    expect(table(3, true)).toEqual([['INPUT'], ['FORWARD'], ['INPUT', 'FORWARD']]);
  });

  it('every slot a built-in schedule needs is of a phase its stage receives, and each is needed once', () => {
    for (let p = 1; p <= 5; p++) {
      for (const m of [1, 2, 5]) {
        const cases: Array<[Schedule, boolean]> = [
          [gpipe(p, m), false],
          [oneFOneB(p, m), false],
          [forwardOnlySchedule(p, m), true],
        ];
        for (const [s, forwardOnly] of cases) {
          s.forEach((row, r) => {
            const slots = row.flatMap((a) => needs(a, r, p));
            expect(new Set(slots).size).toBe(slots.length);
            for (const slot of slots) {
              const phase = slot.split(':')[0] as Phase;
              expect(receives(phase, r, p, forwardOnly), `p=${p} rank=${r} ${slot}`).toBe(true);
            }
            // And every phase received is needed by some action (no frame arrives unused).
            for (const ph of Object.values(Phase)) {
              if (receives(ph, r, p, forwardOnly)) expect(slots.some((sl) => sl.startsWith(`${ph}:`))).toBe(true);
            }
          });
        }
      }
    }
  });
});

describe('ZB-H1 (zero bubble with 1F1B peak memory): B and W split, W filling bubbles', () => {
  it('p=2 m=4: the table, checked by hand against unit-time ticks (13 ticks; 1F1B takes 15)', () => {
    // stage 0: t0 F0, t1 F1, t2 waits for 1B0, t3 B0, t4 W0, t5 B1, t6 F2, t7 W1, t8 F3, t9 B2, t10 W2, t11 B3, t12 W3
    // stage 1: t1 F0, t2 B0, t3 F1, t4 B1, t5 W0, t6 W1, t7 F2, t8 B2, t9 F3, t10 B3, t11 W2, t12 W3
    expect(formatSchedule(zeroBubbleH1(2, 4))).toEqual([
      '0: 0F0 0F1 0B0 0W0 0B1 0F2 0W1 0F3 0B2 0W2 0B3 0W3',
      '1: 1F0 1B0 1F1 1B1 1W0 1W1 1F2 1B2 1F3 1B3 1W2 1W3',
    ]);
    expect(simulate(zeroBubbleH1(2, 4), { F: 1, B: 1, W: 1 }).stepTime).toBe(13);
  });

  it('p=4 m=4: the table', () => {
    expect(formatSchedule(zeroBubbleH1(4, 4))).toEqual([
      '0: 0F0 0F1 0F2 0F3 0B0 0W0 0B1 0W1 0B2 0W2 0B3 0W3',
      '1: 1F0 1F1 1F2 1B0 1F3 1B1 1W0 1B2 1W1 1B3 1W2 1W3',
      '2: 2F0 2F1 2B0 2F2 2B1 2F3 2B2 2W0 2B3 2W1 2W2 2W3',
      '3: 3F0 3B0 3F1 3B1 3F2 3B2 3F3 3B3 3W0 3W1 3W2 3W3',
    ]);
  });

  it("is valid, holds no more than 1F1B's peak p, and comes within two ticks of the paper's 3m + p - 1", () => {
    for (let p = 1; p <= 4; p++) {
      for (let m = p; m <= 16; m++) {
        const s = zeroBubbleH1(p, m);
        expect(() => validateSchedule(s, p, m)).not.toThrow();
        expect(Math.max(...inFlightBounds(s))).toBeLessThanOrEqual(Math.max(...inFlightBounds(oneFOneB(p, m))));
        const zb = simulate(s, { F: 1, B: 1, W: 1 }).stepTime;
        expect(zb, `p=${p} m=${m}`).toBeGreaterThanOrEqual(3 * m + p - 1);
        expect(zb, `p=${p} m=${m}`).toBeLessThanOrEqual(3 * m + p + 1);
        if (p > 1) expect(zb).toBeLessThan(simulate(oneFOneB(p, m), { F: 1, B: 1, W: 1 }).stepTime);
      }
    }
  });

  it('holds a microbatch from its F to its W: releasedBy and maxInFlight follow the split', () => {
    const row = parseStageActions('F0 F1 B0 F2 B1 W0 W1 B2 W2', 0);
    expect(releasedBy(row)).toBe('W');
    expect(maxInFlight(row)).toBe(3);
    expect(releasedBy(parseStageActions('F0 B0', 0))).toBe('B');
    expect(releasedBy(parseStageActions('F0 F1', 0))).toBe('F');
  });

  it('W needs only its own B: no messages, no other stage', () => {
    expect(dependencies({ stage: 0, kind: 'W', microbatch: 2 }, 3)).toEqual([]);
    expect(needs({ stage: 1, kind: 'W', microbatch: 2 }, 1, 3)).toEqual([]);
    expect(buildSchedule('zbh1', 3, 6)).toEqual(zeroBubbleH1(3, 6));
  });

  it('the validator refuses a W before its B, a missing W, and W in evaluation', () => {
    scheduleError(() => validateSchedule(rows('F0 W0 B0', 'F0 B0 W0'), 2, 1), /action 0W0 comes before 0B0/);
    scheduleError(() => validateSchedule(rows('F0 F1 B0 W0 B1', 'F0 B0 F1 B1'), 2, 2), /action 0W1 is missing \(stage 0 splits its backward/);
    scheduleError(() => validateSchedule(rows('F0 W0'), 1, 1, { forwardOnly: true }), /0W0: backward in a forward-only schedule/);
  });
});

describe('devices hosting several stages: interleaved 1F1B and looped BFS', () => {
  it("interleaved d=2 v=2 m=4: the device orders, checked by hand against Megatron-LM's rules", () => {
    // Device 0 hosts stages 0 and 2. Forwards in rounds of d=2 microbatches per chunk:
    // 0F0 0F1 2F0 2F1 0F2 0F3 2F2 2F3; backwards through the chunks in reverse: 2B0 2B1 0B0 0B1 2B2 2B3 0B2 0B3.
    // Warm-up 2(d-0-1) + (v-1)d = 4 forwards, then F/B pairs, then the last 4 backwards.
    const s = interleaved1F1B(2, 4, 2);
    expect(formatDeviceSchedule(s.devices!)).toEqual([
      '0: 0F0 0F1 2F0 2F1 0F2 2B0 0F3 2B1 2F2 0B0 2F3 0B1 2B2 2B3 0B2 0B3',
      '1: 1F0 1F1 3F0 3B0 3F1 3B1 1F2 1B0 1F3 1B1 3F2 3B2 3F3 3B3 1B2 1B3',
    ]);
    // Each stage's own list is its device's order filtered to it.
    expect(formatStageActions(s.stages[2]!)).toBe('F0 F1 B0 B1 F2 F3 B2 B3');
    expect(formatStageActions(s.stages[3]!)).toBe('F0 B0 F1 B1 F2 B2 F3 B3');
  });

  it('looped BFS d=2 v=2 m=2: every forward of each chunk, then the backwards in reverse chunk order', () => {
    expect(formatDeviceSchedule(loopedBFS(2, 2, 2).devices!)).toEqual(['0: 0F0 0F1 2F0 2F1 2B0 2B1 0B0 0B1', '1: 1F0 1F1 3F0 3F1 3B0 3B1 1B0 1B1']);
  });

  it("the bubble of interleaved 1F1B is 1F1B's divided by v: ((d-1)/v) / (m + (d-1)/v), simulated", () => {
    for (const [d, m, v] of [
      [2, 4, 2],
      [2, 8, 2],
      [4, 8, 2],
      [4, 8, 4],
      [3, 6, 3],
      [4, 4, 2],
    ] as const) {
      const sim = simulate(interleaved1F1B(d, m, v), { F: 1, B: 2 });
      const k = (d - 1) / v;
      expect(sim.devices).toBe(d);
      expect(sim.bubble, `d=${d} m=${m} v=${v}`).toBeCloseTo(k / (m + k), 10);
      // One stage per device (v = 1) is plain 1F1B.
      expect(interleaved1F1B(d, m, 1).stages).toEqual(oneFOneB(d, m));
    }
  });

  it('every built-in placed schedule is valid and its devices run to the end', () => {
    for (let d = 1; d <= 4; d++) {
      for (const v of [2, 3]) {
        for (let m = d; m <= 12; m += d) {
          expect(() => validatePlaced(interleaved1F1B(d, m, v), d * v, m)).not.toThrow();
          expect(() => validatePlaced(loopedBFS(d, m, v), d * v, m)).not.toThrow();
          expect(buildPlacedSchedule('interleaved', d * v, m, v)).toEqual(interleaved1F1B(d, m, v));
        }
      }
    }
  });

  it('refuses a device order that deadlocks though every stage list is valid, naming the device and action', () => {
    // Device 0 runs 0B0 before 2B0, but 0B0 needs 1B0, which needs 2B0.
    const devices = [
      rows('F0 B0').flat().concat(parseStageActions('F0 B0', 2)),
      [...parseStageActions('F0', 1), ...parseStageActions('F0 B0', 3), ...parseStageActions('B0', 1)],
    ];
    const placed = { stages: stageRows(devices, 4), devices };
    expect(() => validateSchedule(placed.stages, 4, 1)).not.toThrow();
    scheduleError(() => validatePlaced(placed, 4, 1), /devices' order deadlocks \(m=1\): device 0 at 0B0 waits for 1B0/);
  });

  it("refuses an action on the wrong device, a stage list that is not its device's order, and bad sizes", () => {
    const s = interleaved1F1B(2, 2, 2);
    const swapped = [s.devices![1]!, s.devices![0]!];
    scheduleError(() => validatePlaced({ stages: s.stages, devices: swapped }, 4, 2), /is listed on device 0; stage 1 runs on device 1/);
    const reordered = { stages: s.stages.map((r, i) => (i === 0 ? [...r].reverse() : r)), devices: s.devices! };
    expect(() => validatePlaced(reordered, 4, 2)).toThrow(ScheduleError);
    scheduleError(() => interleaved1F1B(2, 3, 2), /multiple of the device count \(2\)/);
    expect(() => buildPlacedSchedule('interleaved', 5, 4, 2)).toThrow(/5 stages cannot be spread over devices of 2/);
    expect(() => buildPlacedSchedule('1f1b', 4, 4, 2)).toThrow(/runs one stage per device/);
  });
});
