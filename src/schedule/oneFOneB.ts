/** 1F1B (PipeDream-flush): warm up with forwards, then alternate one forward and one backward. */
import type { Action, Schedule } from './action.js';
import { checkSize } from './gpipe.js';

/**
 * The 1F1B schedule for `p` stages and `m` microbatches. Stage r runs min(p-r-1, m)
 * warm-up forwards, then pairs F, B, then the remaining backwards, so it never holds more
 * than p - r microbatches' activations.
 *
 * ```
 * p=2 m=4   t: 0   1   2   3   4   5   6   7   8   9
 * stage 0:     F0  F1  .   B0  F2  B1  F3  B2  .   B3
 * stage 1:     .   F0  B0  F1  B1  F2  B2  F3  B3
 * ```
 */
export function oneFOneB(p: number, m: number): Schedule {
  checkSize(p, m);
  const out: Action[][] = [];
  for (let stage = 0; stage < p; stage++) {
    const warmup = Math.min(p - stage - 1, m);
    const row: Action[] = [];
    for (let i = 0; i < warmup; i++) row.push({ stage, kind: 'F', microbatch: i });
    for (let i = 0; i < m - warmup; i++) {
      row.push({ stage, kind: 'F', microbatch: warmup + i });
      row.push({ stage, kind: 'B', microbatch: i });
    }
    for (let i = m - warmup; i < m; i++) row.push({ stage, kind: 'B', microbatch: i });
    out.push(row);
  }
  return out;
}
