/** The consume constraint: how many microbatches a stage holds at most, derived from its action list. */
import { splitsBackward, type Action, type ActionKind, type Schedule } from './action.js';

/**
 * The action that frees a microbatch's activations on a stage with this list: its forward
 * in evaluation, its W when the backward is split, else its B.
 */
export function releasedBy(actions: readonly Action[]): ActionKind {
  if (!actions.some((a) => a.kind === 'B')) return 'F';
  return splitsBackward(actions) ? 'W' : 'B';
}

/**
 * Peak number of microbatches whose activations a stage holds (forward done, release not
 * yet: B, or W when the backward is split) while it walks `actions`. In a forward-only list
 * nothing is held past its forward, so the bound is 1.
 */
export function maxInFlight(actions: readonly Action[]): number {
  let held = 0;
  let peak = 0;
  const release = releasedBy(actions);
  for (const a of actions) {
    if (a.kind === 'F') held += 1;
    peak = Math.max(peak, held);
    if (a.kind === release) held -= 1;
  }
  return peak;
}

/** The bound of every stage. */
export function inFlightBounds(s: Schedule): number[] {
  return s.map(maxInFlight);
}

/**
 * How the scheduler hands stage 0 its inputs. `step`: all of a step's microbatches as the
 * step begins (PyTorch's schedules likewise give stage 0 the whole batch); stage 0's walk of
 * its list in order keeps the activations it holds within `maxInFlight` either way, and the
 * inputs waiting in its inbox are the step's input bytes, which the driver holds anyway.
 * `bounded`: `feedBound` inputs, then one more as each microbatch is released; for inputs too
 * large to queue a whole batch of on stage 0. It costs a message from stage 0 per microbatch
 * and a scheduler round trip before each input.
 */
export type FeedMode = 'step' | 'bounded';

export function isFeedMode(v: unknown): v is FeedMode {
  return v === 'step' || v === 'bounded';
}

/**
 * How many INPUT microbatches the scheduler may have handed stage 0 beyond those it has
 * finished: the activations it holds stay within `maxInFlight` because it runs its list in
 * order, and one more input waits in its inbox so it never idles a round trip to the
 * scheduler between a backward and its next forward (as hivemind's runtime prefetches).
 */
export function feedBound(actions: readonly Action[]): number {
  return maxInFlight(actions) + 1;
}
