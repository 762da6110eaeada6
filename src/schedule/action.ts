/** Schedule actions as data: `1F0` is stage 1, forward, microbatch 0. */
import { ScheduleError } from '../errors.js';

/**
 * Kinds of action: F (forward), B (backward) and W (weight gradients). A stage whose list has
 * W actions splits its backward, zero-bubble style: B computes only the input gradients and W
 * the weight gradients later; without W actions, B computes both.
 */
export const ActionKind = { F: 'F', B: 'B', W: 'W' } as const;
export type ActionKind = (typeof ActionKind)[keyof typeof ActionKind];

/** One action of one stage. */
export interface Action {
  readonly stage: number;
  readonly kind: ActionKind;
  readonly microbatch: number;
}

/** A schedule: for each stage, its actions in the order it runs them. */
export type Schedule = readonly (readonly Action[])[];

/** `1F0` */
export function formatAction(a: Action): string {
  return `${a.stage}${a.kind}${a.microbatch}`;
}

/** Parses `1F0`; throws a ScheduleError on anything else. */
export function parseAction(s: string): Action {
  const m = /^(\d+)([FBW])(\d+)$/.exec(s);
  if (!m) throw new ScheduleError(`"${s}" is not an action like 1F0`);
  return { stage: Number(m[1]), kind: m[2] as ActionKind, microbatch: Number(m[3]) };
}

/** One stage's list without the stage number, as sent to it: `F0 F1 B0`. */
export function formatStageActions(actions: readonly Action[]): string {
  return actions.map((a) => `${a.kind}${a.microbatch}`).join(' ');
}

/** Parses a stage's list sent as `F0 F1 B0`. */
export function parseStageActions(s: string, stage: number): Action[] {
  if (s.trim() === '') return [];
  return s
    .trim()
    .split(/\s+/)
    .map((t) => parseAction(`${stage}${t}`));
}

/** Whether a stage's list splits its backward into B and W. */
export function splitsBackward(actions: readonly Action[]): boolean {
  return actions.some((a) => a.kind === 'W');
}

/** Draws a schedule as a table, one row per stage: `0: 0F0 0F1 0B0 ...`. */
export function formatSchedule(s: Schedule): string[] {
  return s.map((row, i) => `${i}: ${row.map(formatAction).join(' ')}`);
}
