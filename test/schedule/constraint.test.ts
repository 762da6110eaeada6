import { describe, expect, it } from 'vitest';
import { feedBound, maxInFlight } from '../../src/schedule/constraint.js';
import { gpipe } from '../../src/schedule/gpipe.js';
import { oneFOneB } from '../../src/schedule/oneFOneB.js';
import { forwardOnlySchedule } from '../../src/schedule/schedules.js';

describe('feedBound', () => {
  it('is the held bound plus one prefetched input', () => {
    expect(feedBound(oneFOneB(3, 8)[0]!)).toBe(4);
    expect(maxInFlight(oneFOneB(3, 8)[0]!)).toBe(3);
    expect(feedBound(gpipe(2, 4)[0]!)).toBe(5);
    expect(feedBound(oneFOneB(1, 4)[0]!)).toBe(2);
    expect(feedBound(forwardOnlySchedule(2, 4)[0]!)).toBe(2);
  });
});
