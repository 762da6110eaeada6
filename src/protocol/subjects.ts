/**
 * Every NATS subject Troupe uses, built here and nowhere else.
 *
 * ```
 * troupe.<job>.stage.<rank>.<PHASE>   frames for stage <rank>: INPUT, FORWARD, BACKWARD, UPDATE
 * troupe.<job>.ctl.<rank>.<verb>      requests to stage <rank>, answered with an ack: step, abort, stop
 * troupe.<job>.sched.<event>          events from stages to the scheduler: action, loss, done,
 *                                     updated, error, reject
 * troupe.<job>.state.<rank>           a stage's weights and optimizer state sent to it (a frame)
 * troupe.<job>.snapshot.<rank>        a stage's weights and optimizer state sent by it (a frame)
 * troupe.<job>.stats.<rank>           a stage's counters after every step (JSON)
 * troupe.<job>.hello                  a stage announcing itself when it starts (JSON)
 * troupe.<job>.inspect.<actor>        inspection events of one actor
 * ```
 *
 * `<job>` is one token of letters, digits, `_` and `-`; `<rank>` a non-negative integer.
 * A stage subscribes to `troupe.<job>.stage.<rank>.*` and `troupe.<job>.ctl.<rank>.*`;
 * the scheduler to `troupe.<job>.sched.*`.
 */
import { ConfigError } from '../errors.js';
import type { Phase } from './phase.js';

const TOKEN = /^[A-Za-z0-9_-]{1,64}$/;

/** Control verbs a stage answers. */
export const CtlVerb = {
  STEP: 'step',
  ABORT: 'abort',
  STOP: 'stop',
  /** Who are you: rank, process, backend, device. */
  PING: 'ping',
  /** Apply the state frame just sent on `troupe.<job>.state.<rank>`. */
  LOAD: 'load',
  /** Publish your state on `troupe.<job>.snapshot.<rank>`. */
  DUMP: 'dump',
  /** Your counters. */
  STATS: 'stats',
  /** Liveness: your state and the messages you wait for. */
  PROBE: 'probe',
} as const;
export type CtlVerb = (typeof CtlVerb)[keyof typeof CtlVerb];

/** Events stages publish to the scheduler. */
export const SchedEvent = {
  ACTION: 'action',
  LOSS: 'loss',
  DONE: 'done',
  UPDATED: 'updated',
  ERROR: 'error',
  REJECT: 'reject',
} as const;
export type SchedEvent = (typeof SchedEvent)[keyof typeof SchedEvent];

/** Where the last stage sends its outputs in a predict step: `troupe.<job>.output`. */
export function outputSubject(job: string): string {
  return `troupe.${checkJobId(job)}.output`;
}

/** Throws a ConfigError unless `job` can be a subject token. */
export function checkJobId(job: string): string {
  if (!TOKEN.test(job)) {
    throw new ConfigError(`job id "${job}" must be 1-64 letters, digits, "_" or "-"`);
  }
  return job;
}

function checkRank(rank: number): number {
  if (!Number.isInteger(rank) || rank < 0) throw new ConfigError(`rank ${rank} is not a non-negative integer`);
  return rank;
}

/** Subject of frames of `phase` sent to stage `rank`. */
export function stageSubject(job: string, rank: number, phase: Phase): string {
  return `troupe.${checkJobId(job)}.stage.${checkRank(rank)}.${phase}`;
}

/** Wildcard a stage subscribes to for its frames. */
export function stageWildcard(job: string, rank: number): string {
  return `troupe.${checkJobId(job)}.stage.${checkRank(rank)}.*`;
}

/** Subject of control requests `verb` to stage `rank`. */
export function ctlSubject(job: string, rank: number, verb: CtlVerb): string {
  return `troupe.${checkJobId(job)}.ctl.${checkRank(rank)}.${verb}`;
}

/** Wildcard a stage subscribes to for control requests. */
export function ctlWildcard(job: string, rank: number): string {
  return `troupe.${checkJobId(job)}.ctl.${checkRank(rank)}.*`;
}

/** Subject of a scheduler event. */
export function schedSubject(job: string, event: SchedEvent): string {
  return `troupe.${checkJobId(job)}.sched.${event}`;
}

/** Wildcard the scheduler subscribes to. */
export function schedWildcard(job: string): string {
  return `troupe.${checkJobId(job)}.sched.*`;
}

/** Subject of state frames sent to stage `rank`. */
export function stateSubject(job: string, rank: number): string {
  return `troupe.${checkJobId(job)}.state.${checkRank(rank)}`;
}

/** Subject of state frames stage `rank` sends. */
export function snapshotSubject(job: string, rank: number): string {
  return `troupe.${checkJobId(job)}.snapshot.${checkRank(rank)}`;
}

/** Wildcard of every stage's snapshots. */
export function snapshotWildcard(job: string): string {
  return `troupe.${checkJobId(job)}.snapshot.*`;
}

/** Subject of stage `rank`'s counters. */
export function statsSubject(job: string, rank: number): string {
  return `troupe.${checkJobId(job)}.stats.${checkRank(rank)}`;
}

/** Subject on which starting stages announce themselves. */
export function helloSubject(job: string): string {
  return `troupe.${checkJobId(job)}.hello`;
}

/** Subject of one actor's inspection events. */
export function inspectSubject(job: string, actor: string): string {
  if (actor === '') throw new ConfigError('an inspected actor needs a non-empty name');
  return `troupe.${checkJobId(job)}.inspect.${actor.replace(/[^A-Za-z0-9_-]/g, '_')}`;
}

/** The last token of a subject (the phase, verb or event). */
export function lastToken(subject: string): string {
  return subject.slice(subject.lastIndexOf('.') + 1);
}
