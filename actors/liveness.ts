/**
 * The scheduler's liveness watch, an actor it invokes while a step is active: it probes every
 * stage at once and every heartbeat, and tells the scheduler each answer (PROBED) and the time
 * at each heartbeat (TICK, with when an action last ended and what each stage has done). The
 * scheduler machine judges silence and stalls from these, with the functions at the end of
 * this file; the actor only asks and tells.
 */
import { fromCallback } from 'xstate';
import type { ProbeReply } from '../src/protocol/messages.js';
import type { SchedulerContext, SchedulerEvent } from './schedulerMachine.js';
import { firstStuck, stepGrid } from './stepGrid.js';

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

// The judgement, in the scheduler machine's guards and actions.

/** The step's grid now, from a TICK's progress and the last probes. */
function gridOf(c: SchedulerContext, ran: readonly (readonly string[])[]): string {
  const r = c.req!;
  return stepGrid({ step: r.step, microbatches: r.microbatches, forwardOnly: r.forwardOnly, actions: r.actions ?? [], ran, probes: c.watch.probes });
}

/** The first stage silent past the liveness timeout at `now` (-1: none). */
export function silentStage(c: SchedulerContext, now: number): number {
  const w = c.watch;
  if (w.from === null) return -1;
  for (let r = 0; r < c.stages; r++) if (now - (w.heard[r] ?? w.from) >= w.livenessTimeoutMs) return r;
  return -1;
}

export type Tick = Extract<SchedulerEvent, { type: 'TICK' }>;

export type WatchCode = 'STAGE_SILENT' | 'STEP_STALLED';

/** What a silence or a stall found at a TICK fails: the stage, and the message with the grid. */
export function watchFailure(c: SchedulerContext, e: Tick, code: WatchCode): { rank: number; message: string } {
  const step = c.req!.step;
  if (code === 'STEP_STALLED') {
    return {
      rank: firstStuck(c.req!.actions ?? [], e.ran),
      message: `step ${step} made no progress for ${Math.round(e.now - e.lastAction)} ms\n${gridOf(c, e.ran)}`,
    };
  }
  const r = silentStage(c, e.now);
  const seen = c.watch.probes[r];
  const where = seen
    ? `last seen in step ${seen.step}, state ${seen.state}${seen.action ? ` at ${seen.action}` : ''}` +
      `${seen.awaiting.length ? `, waiting for ${seen.awaiting.join(', ')}` : ''}`
    : 'never answered a probe';
  return {
    rank: r,
    message: `stage ${r} answered no liveness probe for ${Math.round(e.now - (c.watch.heard[r] ?? c.watch.from!))} ms; ${where}\n${gridOf(c, e.ran)}`,
  };
}

/** Every stage answers, but no action has ended for too long: a stuck step. */
export function stalledAt(c: SchedulerContext, e: Tick): boolean {
  return c.watch.stallTimeoutMs !== null && e.now - e.lastAction >= c.watch.stallTimeoutMs;
}

/** The STAGE_ERROR a silence or a stall found at a TICK raises. */
export function failedByWatch(c: SchedulerContext, e: Tick, code: WatchCode): SchedulerEvent {
  const f = watchFailure(c, e, code);
  return { type: 'STAGE_ERROR', rank: f.rank, step: c.req!.step, failure: { key: `rank ${f.rank}`, code, message: f.message } };
}
