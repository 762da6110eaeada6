/** Running a schedule in dependency order: the walk both the validator and the simulator make. */
import { formatAction, type Action, type Schedule } from './action.js';

/**
 * The actions action `a` waits for on other stages: F(s,i) needs F(s-1,i); B(s,i) needs
 * B(s+1,i); W needs only its own stage's B, which comes before it in the stage's list.
 */
export function dependencies(a: Action, p: number): Action[] {
  if (a.kind === 'F') return a.stage > 0 ? [{ stage: a.stage - 1, kind: 'F', microbatch: a.microbatch }] : [];
  if (a.kind === 'W') return [];
  return a.stage < p - 1 ? [{ stage: a.stage + 1, kind: 'B', microbatch: a.microbatch }] : [];
}

/**
 * Runs every lane's list in order, each action once its dependencies have run. A lane is a
 * stage's list, or a device's when a device hosts several stages (`stages` then counts the
 * stages, not the lanes). `run` gets the action, the lane and the end times of its
 * dependencies, and returns its own end time. Returns the action each lane is stuck at
 * (empty when the schedule runs to the end).
 */
export function walk(s: Schedule, run: (a: Action, lane: number, depEnds: number[]) => number, stages = s.length): Action[] {
  const p = stages;
  const ends = new Map<string, number>();
  const cursor = s.map(() => 0);
  let progressed = true;
  while (progressed) {
    progressed = false;
    for (let st = 0; st < s.length; st++) {
      const row = s[st]!;
      while (cursor[st]! < row.length) {
        const a = row[cursor[st]!]!;
        const deps = dependencies(a, p).map((d) => ends.get(formatAction(d)));
        if (deps.some((e) => e === undefined)) break;
        ends.set(formatAction(a), run(a, st, deps as number[]));
        cursor[st]!++;
        progressed = true;
      }
    }
  }
  return s.flatMap((row, st) => (cursor[st]! < row.length ? [row[cursor[st]!]!] : []));
}
