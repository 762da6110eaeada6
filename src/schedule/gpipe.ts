/** GPipe (fill-drain): every stage runs all forwards, then all backwards. */
import { ScheduleError } from '../errors.js';
import type { Action, Schedule } from './action.js';

/**
 * GPipe's fill-drain schedule for `p` stages and `m` microbatches. Every stage holds all m
 * microbatches' activations at the turn from forward to backward.
 *
 * ```
 * p=2 m=3   t: 0   1   2   3   4   5   6   7
 * stage 0:     F0  F1  F2  .   .   B0  B1  B2
 * stage 1:     .   F0  F1  F2  B0  B1  B2
 * ```
 */
export function gpipe(p: number, m: number): Schedule {
  checkSize(p, m);
  const out: Action[][] = [];
  for (let stage = 0; stage < p; stage++) {
    const row: Action[] = [];
    for (let i = 0; i < m; i++) row.push({ stage, kind: 'F', microbatch: i });
    for (let i = 0; i < m; i++) row.push({ stage, kind: 'B', microbatch: i });
    out.push(row);
  }
  return out;
}

/** Throws a ScheduleError unless p and m are positive integers. */
export function checkSize(p: number, m: number): void {
  if (!Number.isInteger(p) || p < 1) throw new ScheduleError(`stage count ${p} must be a positive integer`);
  if (!Number.isInteger(m) || m < 1) throw new ScheduleError(`microbatch count ${m} must be a positive integer`);
}
