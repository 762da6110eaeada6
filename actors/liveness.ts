/**
 * The scheduler's liveness watch, an actor it invokes while a step is active: it probes every
 * stage at once and every heartbeat, and tells the scheduler each answer (PROBED) and the time
 * at each heartbeat (TICK, with when an action last ended and what each stage has done). The
 * scheduler machine judges silence and stalls from these; this actor only asks and tells.
 */
import { fromCallback } from 'xstate';
import type { ProbeReply } from '../src/protocol/messages.js';

/** What the watch of one step needs. */
export interface LivenessInput {
  readonly stages: number;
  readonly heartbeatMs: number;
  /** How long a probe may wait for its answer (the liveness timeout). */
  readonly timeoutMs: number;
}

/** The step's progress as the host hears it: when an action last ended, and each stage's actions reported done. */
export interface StepProgress {
  readonly lastAction: number;
  readonly ran: readonly (readonly string[])[];
}

export type LivenessEvent =
  /** A heartbeat at `now` (ms, the watch's clock); the first comes as the watch begins. */
  | { type: 'TICK'; now: number; lastAction: number; ran: readonly (readonly string[])[] }
  /** Stage `rank` answered a probe at `at`. */
  | { type: 'PROBED'; rank: number; reply: ProbeReply; at: number };

/** What the watch is sent: stop probing (the step's silence or stall is found). */
export type LivenessCommand = { type: 'UNWATCH' };

/**
 * The watch, given how to probe a stage and how the step progresses.
 *
 * @example
 * schedulerMachine.provide({ actors: { liveness: livenessProbes({ probe: (r, ms) => ask(r, ms), progress: () => tracker.progress() }) } })
 */
export function livenessProbes(o: { probe(rank: number, timeoutMs: number): Promise<ProbeReply>; progress(): StepProgress; now?: () => number }) {
  return fromCallback<LivenessCommand, LivenessInput, LivenessEvent>(({ input, sendBack, receive }) => {
    const now = o.now ?? (() => performance.now());
    const asking = new Set<number>();
    let stopped = false;
    const probe = async (rank: number) => {
      if (asking.has(rank)) return; // its last probe is still out
      asking.add(rank);
      try {
        const reply = await o.probe(rank, input.timeoutMs);
        if (!stopped) sendBack({ type: 'PROBED', rank, reply, at: now() });
      } catch {
        // No answer (a timeout, no responders): the scheduler judges the silence.
      } finally {
        asking.delete(rank);
      }
    };
    const tick = () => {
      if (stopped) return;
      const { lastAction, ran } = o.progress();
      sendBack({ type: 'TICK', now: now(), lastAction, ran });
      for (let r = 0; r < input.stages && !stopped; r++) void probe(r);
    };
    // A first probe now: a stage's whereabouts are known even in steps shorter than a heartbeat.
    tick();
    const timer = setInterval(tick, input.heartbeatMs);
    const stop = () => {
      stopped = true;
      clearInterval(timer);
    };
    receive((e) => {
      if (e.type === 'UNWATCH') stop();
    });
    return stop;
  });
}
