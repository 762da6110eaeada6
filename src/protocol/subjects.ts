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
 * troupe.<job>.inspect.<actor>        inspection events of one actor (@statelyai/inspect format)
 * troupe.<job>.present.<actor>        an actor's answer to `who`: its announcement, latest snapshot,
 *                                     and (the scheduler) the errors and refusals it kept
 * troupe.<job>.who                    an inspector asking every actor of the job to show itself
 * ```
 *
 * `<job>` is one token of letters, digits, `_` and `-`; `<rank>` a non-negative integer.
 * A stage subscribes to `troupe.<job>.stage.<rank>.*` and `troupe.<job>.ctl.<rank>.*`;
 * the scheduler to `troupe.<job>.sched.*`.
 *
 * Data-parallel replicas: every subject above but `who` takes the replica as a token of its
 * own after the job, `troupe.<job>.r<i>.stage.<rank>.<PHASE>` and so on (the builders take
 * the scope `<job>.r<i>` from `replicaScope` where they take a job), so that one wildcard
 * covers every replica: `troupe.<job>.>` everything of the job, `troupe.<job>.*.inspect.*`
 * every replica's actors. A job without replicas keeps the shorter subjects; `who` is one
 * subject per job, which every replica's actors answer.
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
  return `troupe.${checkScope(job)}.output`;
}

/** Throws a ConfigError unless `job` can be a subject token. */
export function checkJobId(job: string): string {
  if (!TOKEN.test(job)) {
    throw new ConfigError(`job id "${job}" must be 1-64 letters, digits, "_" or "-"`);
  }
  return job;
}

const REPLICA = /^(.*)\.r(0|[1-9]\d{0,5})$/;

/**
 * Throws a ConfigError unless `scope` is a job id or a replica's scope `<job>.r<i>`: what
 * the builders below take where they say `job`.
 */
export function checkScope(scope: string): string {
  const m = REPLICA.exec(scope);
  checkJobId(m ? m[1]! : scope);
  return scope;
}

/**
 * The scope of replica `replica` of `replicas`: the job itself without replicas, else
 * `<job>.r<i>`, one more subject token (so `troupe.<job>.>` covers every replica).
 */
export function replicaScope(job: string, replica: number, replicas: number): string {
  checkJobId(job);
  if (!Number.isInteger(replicas) || replicas < 1 || !Number.isInteger(replica) || replica < 0 || replica >= replicas) {
    throw new ConfigError(`replica ${replica} of ${replicas} does not exist`);
  }
  return replicas > 1 ? `${job}.r${replica}` : job;
}

/** The job of a scope (`mnist.r1` -> `mnist`). */
export function jobOfScope(scope: string): string {
  const m = REPLICA.exec(checkScope(scope));
  return m ? m[1]! : scope;
}

/**
 * The scope of a Troupe subject of `job` (`troupe.mnist.r1.stats.0` -> `mnist.r1`,
 * `troupe.mnist.stats.0` -> `mnist`); null for a subject of another job.
 */
export function scopeOfSubject(job: string, subject: string): string | null {
  const head = `troupe.${job}.`;
  if (!subject.startsWith(head)) return null;
  const next = subject.slice(head.length).split('.')[0]!;
  return /^r(0|[1-9]\d*)$/.test(next) ? `${job}.${next}` : job;
}

/** The wildcards of `troupe.<job>.<tail>` in the job itself and in every replica of it. */
export function everyScope(job: string, tail: string): [string, string] {
  checkJobId(job);
  return [`troupe.${job}.${tail}`, `troupe.${job}.*.${tail}`];
}

function checkRank(rank: number): number {
  if (!Number.isInteger(rank) || rank < 0) throw new ConfigError(`rank ${rank} is not a non-negative integer`);
  return rank;
}

/** Subject of frames of `phase` sent to stage `rank`. */
export function stageSubject(job: string, rank: number, phase: Phase): string {
  return `troupe.${checkScope(job)}.stage.${checkRank(rank)}.${phase}`;
}

/** Wildcard a stage subscribes to for its frames. */
export function stageWildcard(job: string, rank: number): string {
  return `troupe.${checkScope(job)}.stage.${checkRank(rank)}.*`;
}

/** Subject of control requests `verb` to stage `rank`. */
export function ctlSubject(job: string, rank: number, verb: CtlVerb): string {
  return `troupe.${checkScope(job)}.ctl.${checkRank(rank)}.${verb}`;
}

/** Wildcard a stage subscribes to for control requests. */
export function ctlWildcard(job: string, rank: number): string {
  return `troupe.${checkScope(job)}.ctl.${checkRank(rank)}.*`;
}

/** Subject of a scheduler event. */
export function schedSubject(job: string, event: SchedEvent): string {
  return `troupe.${checkScope(job)}.sched.${event}`;
}

/** Wildcard the scheduler subscribes to. */
export function schedWildcard(job: string): string {
  return `troupe.${checkScope(job)}.sched.*`;
}

/** Subject of state frames sent to stage `rank`. */
export function stateSubject(job: string, rank: number): string {
  return `troupe.${checkScope(job)}.state.${checkRank(rank)}`;
}

/** Subject of state frames stage `rank` sends. */
export function snapshotSubject(job: string, rank: number): string {
  return `troupe.${checkScope(job)}.snapshot.${checkRank(rank)}`;
}

/** Wildcard of every stage's snapshots. */
export function snapshotWildcard(job: string): string {
  return `troupe.${checkScope(job)}.snapshot.*`;
}

/** Subject of stage `rank`'s counters. */
export function statsSubject(job: string, rank: number): string {
  return `troupe.${checkScope(job)}.stats.${checkRank(rank)}`;
}

/** Subject on which starting stages announce themselves. */
export function helloSubject(job: string): string {
  return `troupe.${checkScope(job)}.hello`;
}

function actorToken(actor: string): string {
  if (actor === '') throw new ConfigError('an inspected actor needs a non-empty name');
  return actor.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** Subject of one actor's inspection events. */
export function inspectSubject(job: string, actor: string): string {
  return `troupe.${checkScope(job)}.inspect.${actorToken(actor)}`;
}

/** Subject of one actor's answers to `who`. */
export function presentSubject(job: string, actor: string): string {
  return `troupe.${checkScope(job)}.present.${actorToken(actor)}`;
}

/** Subject on which an inspector asks every actor of the job (every replica of it) to show itself. */
export function whoSubject(job: string): string {
  return `troupe.${jobOfScope(job)}.who`;
}

/** The last token of a subject (the phase, verb or event). */
export function lastToken(subject: string): string {
  return subject.slice(subject.lastIndexOf('.') + 1);
}
