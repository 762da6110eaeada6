/** Checks that a schedule is complete and runs to the end without deadlock. */
import { ScheduleError } from '../errors.js';
import { formatAction, splitsBackward, type Action, type Schedule } from './action.js';
import { deviceOf, stageRows, type PlacedSchedule } from './interleaved.js';
import { dependencies, walk } from './walk.js';

export { dependencies } from './walk.js';

/** Options of `validateSchedule`. */
export interface ValidateOptions {
  /** Evaluation: forwards only, and no backward may appear. */
  readonly forwardOnly?: boolean;
}

/**
 * Throws a ScheduleError naming the action at fault unless every stage of `s` has exactly
 * one F (and, in training, one B) per microbatch, each B after its F, a stage with any W has
 * one W per microbatch after its B, and the stages can run their lists in order to the end.
 * Dependencies: F(s,i) needs F(s-1,i); B(s,i) needs F(s,i) and B(s+1,i); W(s,i) needs B(s,i).
 */
export function validateSchedule(s: Schedule, p: number, m: number, opts: ValidateOptions = {}): void {
  if (s.length !== p) throw new ScheduleError(`schedule has ${s.length} stages, expected ${p}`);
  s.forEach((row, stage) => checkRow(row, stage, m, opts.forwardOnly ?? false));
  checkRunsToEnd(s, m);
}

function checkRow(row: readonly Action[], stage: number, m: number, forwardOnly: boolean): void {
  const seen = new Set<string>();
  for (const a of row) {
    const name = formatAction(a);
    if (a.stage !== stage) throw new ScheduleError(`action ${name} is listed under stage ${stage}`);
    if (!Number.isInteger(a.microbatch) || a.microbatch < 0 || a.microbatch >= m) {
      throw new ScheduleError(`action ${name}: microbatch out of range 0..${m - 1}`);
    }
    if (forwardOnly && a.kind !== 'F') throw new ScheduleError(`action ${name}: backward in a forward-only schedule`);
    if (seen.has(name)) throw new ScheduleError(`action ${name} appears twice`);
    const before = a.kind === 'B' ? 'F' : a.kind === 'W' ? 'B' : null;
    if (before && !seen.has(`${stage}${before}${a.microbatch}`)) {
      throw new ScheduleError(`action ${name} comes before ${stage}${before}${a.microbatch}`);
    }
    seen.add(name);
  }
  const split = splitsBackward(row);
  for (let i = 0; i < m; i++) {
    if (!seen.has(`${stage}F${i}`)) throw new ScheduleError(`action ${stage}F${i} is missing`);
    if (!forwardOnly && !seen.has(`${stage}B${i}`)) throw new ScheduleError(`action ${stage}B${i} is missing`);
    if (split && !seen.has(`${stage}W${i}`))
      throw new ScheduleError(`action ${stage}W${i} is missing (stage ${stage} splits its backward: every B needs its W)`);
  }
}

function checkRunsToEnd(s: Schedule, m: number): void {
  const p = s.length;
  const stuck = walk(s, () => 0);
  if (stuck.length > 0) {
    const why = stuck.map((a) => `${formatAction(a)} waits for ${dependencies(a, p).map(formatAction).join(', ')}`);
    throw new ScheduleError(`schedule deadlocks (m=${m}): ${why.join('; ')}`);
  }
}

/**
 * Validates a schedule whose devices host several stages: every stage's list as
 * `validateSchedule` does, each device hosting only its own stages (round robin), each
 * stage's list being its device's order filtered to it, and the devices able to run their
 * lists in order (a device runs one action at a time) to the end.
 */
export function validatePlaced(s: PlacedSchedule, p: number, m: number, opts: ValidateOptions = {}): void {
  validateSchedule(s.stages, p, m, opts);
  if (!s.devices) return;
  const d = s.devices.length;
  if (d < 1 || p % d !== 0) throw new ScheduleError(`${p} stages cannot be spread evenly over ${d} devices`);
  s.devices.forEach((row, dev) => {
    for (const a of row)
      if (deviceOf(a.stage, d) !== dev)
        throw new ScheduleError(`action ${formatAction(a)} is listed on device ${dev}; stage ${a.stage} runs on device ${deviceOf(a.stage, d)}`);
  });
  const derived = stageRows(s.devices, p);
  derived.forEach((row, st) => {
    if (row.map(formatAction).join(' ') !== s.stages[st]!.map(formatAction).join(' ')) {
      throw new ScheduleError(`stage ${st}'s list is not its device's order: ${row.map(formatAction).join(' ')}`);
    }
  });
  const stuck = walk(s.devices, () => 0, p);
  if (stuck.length > 0) {
    const why = stuck.map((a) => `device ${deviceOf(a.stage, d)} at ${formatAction(a)} waits for ${dependencies(a, p).map(formatAction).join(', ')}`);
    throw new ScheduleError(`the devices' order deadlocks (m=${m}): ${why.join('; ')}`);
  }
}
