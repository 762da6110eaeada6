/** Schedules by name, and the forward-only form used for evaluation. */
import { ConfigError } from '../errors.js';
import type { Schedule } from './action.js';
import { checkSize, gpipe } from './gpipe.js';
import { oneFOneB } from './oneFOneB.js';
import { validateSchedule } from './validate.js';
import { zeroBubbleH1 } from './zeroBubble.js';

/** Names of the built-in schedules. */
export const ScheduleName = { GPIPE: 'gpipe', ONE_F_ONE_B: '1f1b', ZB_H1: 'zbh1' } as const;
export type ScheduleName = (typeof ScheduleName)[keyof typeof ScheduleName];

const BUILDERS: Record<ScheduleName, (p: number, m: number) => Schedule> = {
  gpipe,
  '1f1b': oneFOneB,
  zbh1: zeroBubbleH1,
};

/** True when `s` names a built-in schedule. */
export function isScheduleName(s: string): s is ScheduleName {
  return Object.prototype.hasOwnProperty.call(BUILDERS, s);
}

/**
 * Builds and validates the named schedule, or validates a given one (a table of actions per
 * stage) against p and m; throws a ConfigError listing the known names for an unknown one.
 */
export function buildSchedule(name: string | Schedule, p: number, m: number): Schedule {
  if (typeof name !== 'string') {
    validateSchedule(name, p, m);
    return name;
  }
  if (!isScheduleName(name)) {
    throw new ConfigError(`unknown schedule "${name}"; known: ${Object.keys(BUILDERS).join(', ')}`);
  }
  const s = BUILDERS[name](p, m);
  validateSchedule(s, p, m);
  return s;
}

/** Evaluation: every stage runs F0..F(m-1), holding nothing for a backward. */
export function forwardOnlySchedule(p: number, m: number): Schedule {
  checkSize(p, m);
  return Array.from({ length: p }, (_, stage) => Array.from({ length: m }, (_, i) => ({ stage, kind: 'F' as const, microbatch: i })));
}
