/** Which messages each action of a stage waits for. */
import { Phase } from '../protocol/phase.js';
import { slotOf } from '../protocol/key.js';
import type { Action } from './action.js';

/**
 * Slots (`PHASE:mb`) action `a` of stage `rank` of `p` needs before it can run.
 * F: INPUT at stage 0, FORWARD elsewhere, plus INPUT (labels) at the last stage.
 * B: BACKWARD from the next stage; the last stage's backward needs nothing new. W: nothing.
 */
export function needs(a: Action, rank: number, p: number, labels = true): string[] {
  const last = rank === p - 1;
  if (a.kind === 'W') return [];
  if (a.kind === 'F') {
    const out = [slotOf(rank === 0 ? Phase.INPUT : Phase.FORWARD, a.microbatch)];
    if (last && rank > 0 && labels) out.push(slotOf(Phase.INPUT, a.microbatch));
    return out;
  }
  return last ? [] : [slotOf(Phase.BACKWARD, a.microbatch)];
}

/** True when stage `rank` of `p` ever receives frames of `phase` in a step. */
export function receives(phase: Phase, rank: number, p: number, forwardOnly: boolean): boolean {
  switch (phase) {
    case Phase.INPUT:
      return rank === 0 || rank === p - 1;
    case Phase.FORWARD:
      return rank > 0;
    case Phase.BACKWARD:
      return rank < p - 1 && !forwardOnly;
    default:
      return false;
  }
}
