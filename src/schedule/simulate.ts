/**
 * A schedule simulator: given per-action costs, the timeline each stage would follow, the
 * step time, the bubble and the peak activations per stage. Every stage runs its list in
 * order; an action starts when its stage is free and its dependencies (walk.ts) have
 * ended, plus a transfer cost between stages.
 */
import { ScheduleError } from '../errors.js';
import { formatAction, splitsBackward, type Action, type Schedule } from './action.js';
import { maxInFlight } from './constraint.js';
import { walk } from './walk.js';

/**
 * Time units per action kind (the same on every stage) and per message between stages. `B`
 * is the input-gradient part of a backward and `W` the weight-gradient part: a stage whose
 * list has W actions pays them apart, any other stage pays B + W for its B.
 */
export interface ActionCosts {
  readonly F: number;
  readonly B: number;
  readonly W?: number;
  readonly comm?: number;
}

/** What action `a` costs on a stage whose list does or does not split its backward. */
export function costOf(a: Action, costs: ActionCosts, split: boolean): number {
  if (a.kind === 'F') return costs.F;
  if (a.kind === 'W') return costs.W ?? 0;
  return split ? costs.B : costs.B + (costs.W ?? 0);
}

/** One action placed in time. */
export interface Placed {
  readonly action: Action;
  readonly start: number;
  readonly end: number;
}

/** What the simulator predicts for one step. */
export interface Simulation {
  readonly stages: number;
  readonly microbatches: number;
  /** Per stage, its actions in time. */
  readonly timeline: readonly (readonly Placed[])[];
  readonly stepTime: number;
  /** Idle share of all stage time: 1 - busy / (stages x step time). */
  readonly bubble: number;
  /** Most microbatches each stage holds for a backward. */
  readonly peakActivations: readonly number[];
}

/** Simulates `s`; throws a ScheduleError naming the stuck actions if it cannot finish. */
export function simulate(s: Schedule, costs: ActionCosts = { F: 1, B: 2 }): Simulation {
  const p = s.length;
  const comm = costs.comm ?? 0;
  const free = s.map(() => 0);
  const split = s.map(splitsBackward);
  const timeline: Placed[][] = s.map(() => []);
  const stuck = walk(s, (a, st, depEnds) => {
    const start = Math.max(free[st]!, ...depEnds.map((e) => e + comm));
    const end = start + costOf(a, costs, split[st]!);
    timeline[st]!.push({ action: a, start, end });
    free[st] = end;
    return end;
  });
  if (stuck.length) throw new ScheduleError(`the schedule cannot finish: stuck at ${stuck.map(formatAction).join(', ')}`);
  const stepTime = Math.max(0, ...free);
  const busy = timeline.flat().reduce((n, x) => n + (x.end - x.start), 0);
  const m = new Set(s.flat().map((a) => a.microbatch)).size;
  return { stages: p, microbatches: m, timeline, stepTime, bubble: stepTime > 0 ? 1 - busy / (p * stepTime) : 0, peakActivations: s.map(maxInFlight) };
}
