/**
 * A schedule simulator: given per-action costs, the timeline each stage would follow, the
 * step time, the bubble and the peak activations per stage. Every stage runs its list in
 * order; an action starts when its stage is free and its dependencies (walk.ts) have
 * ended, plus a transfer cost between stages.
 */
import { ScheduleError } from '../errors.js';
import { formatAction, splitsBackward, type Action, type Schedule } from './action.js';
import { maxInFlight } from './constraint.js';
import type { PlacedSchedule } from './interleaved.js';
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
  /**
   * An unsplit backward sends its input gradients after its B part, while it still adds its
   * weight gradients (W), as Troupe's stages do: the previous stage's backward may start
   * `W` earlier. Default false: at its end, as the papers count (1F1B's (m+p-1)(F+B+W)).
   */
  readonly inputGradientsFirst?: boolean;
}

/** What action `a` costs on a stage whose list does or does not split its backward. */
function costOf(a: Action, costs: ActionCosts, split: boolean): number {
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
  /** Devices: one per stage, or fewer when devices host several stages. */
  readonly devices: number;
  readonly microbatches: number;
  /** Per device (per stage when each device hosts one), its actions in time. */
  readonly timeline: readonly (readonly Placed[])[];
  readonly stepTime: number;
  /** Idle share of all device time: 1 - busy / (devices x step time). */
  readonly bubble: number;
  /** Most microbatches each stage holds for a backward. */
  readonly peakActivations: readonly number[];
}

/**
 * Simulates `s` (per-stage lists, or a placed schedule whose devices run their lists one
 * action at a time); throws a ScheduleError naming the stuck actions if it cannot finish.
 * `costs` are the same on every stage, or a function of the stage (measured stages differ:
 * stage 0 computes no input gradients, the last stage its loss); a stage's `comm` is what a
 * message to it takes.
 */
export function simulate(s: Schedule | PlacedSchedule, costs: ActionCosts | ((stage: number) => ActionCosts) = { F: 1, B: 2 }): Simulation {
  const placed: PlacedSchedule = Array.isArray(s) ? { stages: s as Schedule } : (s as PlacedSchedule);
  const rows = placed.stages;
  const lanes = placed.devices ?? rows;
  const p = rows.length;
  const of = rows.map((_, st) => (typeof costs === 'function' ? costs(st) : costs));
  const free = lanes.map(() => 0);
  const split = rows.map(splitsBackward);
  const timeline: Placed[][] = lanes.map(() => []);
  const stuck = walk(
    lanes,
    (a, lane, depEnds) => {
      const c = of[a.stage]!;
      const start = Math.max(free[lane]!, ...depEnds.map((e) => e + (c.comm ?? 0)));
      const end = start + costOf(a, c, split[a.stage]!);
      timeline[lane]!.push({ action: a, start, end });
      free[lane] = end;
      // What depends on a backward (the previous stage's) waits for its input gradients only.
      return a.kind === 'B' && c.inputGradientsFirst ? start + c.B : end;
    },
    p,
  );
  if (stuck.length) throw new ScheduleError(`the schedule cannot finish: stuck at ${stuck.map(formatAction).join(', ')}`);
  const stepTime = Math.max(0, ...free);
  const busy = timeline.flat().reduce((n, x) => n + (x.end - x.start), 0);
  const m = new Set(rows.flat().map((a) => a.microbatch)).size;
  return {
    stages: p,
    devices: lanes.length,
    microbatches: m,
    timeline,
    stepTime,
    bubble: stepTime > 0 ? 1 - busy / (lanes.length * stepTime) : 0,
    peakActivations: rows.map(maxInFlight),
  };
}
