/** Schedules by name, and the forward-only form used for evaluation. */
import { ConfigError } from '../errors.js';
import type { Schedule } from './action.js';
import { checkSize, gpipe } from './gpipe.js';
import { interleaved1F1B, loopedBFS, type PlacedSchedule } from './interleaved.js';
import { oneFOneB } from './oneFOneB.js';
import { validatePlaced } from './validate.js';
import { zeroBubbleH1 } from './zeroBubble.js';

/** Names of the built-in schedules. */
export const ScheduleName = { GPIPE: 'gpipe', ONE_F_ONE_B: '1f1b', ZB_H1: 'zbh1', INTERLEAVED: 'interleaved', LOOPED_BFS: 'loopedbfs' } as const;
export type ScheduleName = (typeof ScheduleName)[keyof typeof ScheduleName];

/** Builders of one stage per device (p stages). */
const FLAT: Record<string, (p: number, m: number) => Schedule> = { gpipe, '1f1b': oneFOneB, zbh1: zeroBubbleH1 };
/** Builders for devices hosting v stages each (d devices). */
const PLACED: Record<string, (d: number, m: number, v: number) => PlacedSchedule> = { interleaved: interleaved1F1B, loopedbfs: loopedBFS };

/** True when `s` names a built-in schedule. */
export function isScheduleName(s: string): s is ScheduleName {
  return Object.prototype.hasOwnProperty.call(FLAT, s) || Object.prototype.hasOwnProperty.call(PLACED, s);
}

/** True when the named schedule places several stages on a device (it takes `virtualStages`). */
function isPlacedScheduleName(s: string): boolean {
  return Object.prototype.hasOwnProperty.call(PLACED, s);
}

/**
 * Builds and validates the named schedule for `p` stages (p / v devices of `virtualStages`
 * stages each), or validates a given one (a table of actions per stage, or a placed schedule)
 * against p and m. Throws a ConfigError listing the known names for an unknown one.
 */
export function buildPlacedSchedule(name: string | Schedule | PlacedSchedule, p: number, m: number, virtualStages = 1): PlacedSchedule {
  if (!Number.isInteger(virtualStages) || virtualStages < 1) throw new ConfigError(`virtualStages must be a positive integer, got ${String(virtualStages)}`);
  if (typeof name !== 'string') {
    const placed: PlacedSchedule = Array.isArray(name) ? { stages: name as Schedule } : (name as PlacedSchedule);
    validatePlaced(placed, p, m);
    return placed;
  }
  if (!isScheduleName(name)) throw new ConfigError(`unknown schedule "${name}"; known: ${Object.values(ScheduleName).join(', ')}`);
  let placed: PlacedSchedule;
  if (isPlacedScheduleName(name)) {
    if (p % virtualStages !== 0) throw new ConfigError(`${p} stages cannot be spread over devices of ${virtualStages} virtual stages each`);
    placed = PLACED[name]!(p / virtualStages, m, virtualStages);
  } else {
    if (virtualStages !== 1)
      throw new ConfigError(`schedule "${name}" runs one stage per device; with virtualStages ${virtualStages} use interleaved or loopedbfs`);
    placed = { stages: FLAT[name]!(p, m) };
  }
  validatePlaced(placed, p, m);
  return placed;
}

/** The per-stage lists of `buildPlacedSchedule` (one stage per device). */
export function buildSchedule(name: string | Schedule, p: number, m: number): Schedule {
  return buildPlacedSchedule(name, p, m).stages;
}

/** Evaluation: every stage runs F0..F(m-1), holding nothing for a backward. */
export function forwardOnlySchedule(p: number, m: number): Schedule {
  checkSize(p, m);
  return Array.from({ length: p }, (_, stage) => Array.from({ length: m }, (_, i) => ({ stage, kind: 'F' as const, microbatch: i })));
}
