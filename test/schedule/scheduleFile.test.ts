import { describe, expect, it } from 'vitest';
import { ScheduleError } from '../../src/errors.js';
import { formatSchedule } from '../../src/schedule/action.js';
import { oneFOneB } from '../../src/schedule/oneFOneB.js';
import { parseScheduleTable } from '../../src/schedule/scheduleFile.js';

describe('schedule tables', () => {
  it('parse into the same schedule the generator makes', () => {
    const s = parseScheduleTable('# 1F1B, p=2, m=3\n0: F0 F1 B0 F2 B1 B2\n\n1: F0 B0 F1 B1 F2 B2  # last stage\n');
    expect(formatSchedule(s)).toEqual(formatSchedule(oneFOneB(2, 3)));
  });

  it.each([
    ['0: F0 B0\n2: F0 B0', /line 2: stage 2 where stage 1 comes next/],
    ['0: F0 X0', /line 1: "0X0" is not an action like 1F0/],
    ['stage zero: F0', /line 1: "stage zero: F0" is not "<stage>: <actions>"/],
    ['# nothing', /no stage lines/],
    ['0: F0 F1 B0 B1\n1: F0 B0', /action 1F1 is missing/],
    ['0: B0 F0 F1 B1\n1: F0 B0 F1 B1', /action 0B0 comes before 0F0/],
    // Stage 0 waits at B0 for stage 1's B0; stage 1 waits at F1 for stage 0's F1.
    ['0: F0 B0 F1 B1\n1: F0 F1 B1 B0', /deadlocks \(m=2\): 0B0 waits for 1B0; 1F1 waits for 0F1/],
  ])('refuses %j naming the fault', (text, message) => {
    expect(() => parseScheduleTable(text)).toThrow(ScheduleError);
    expect(() => parseScheduleTable(text)).toThrow(message);
  });
});
