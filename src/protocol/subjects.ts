/**
 * Every NATS subject Troupe uses, built here and nowhere else, and who may use which (the
 * permissions table nats.conf is generated from).
 *
 * ```
 * troupe.<job>.stage.<rank>.<PHASE>   frames for stage <rank>: INPUT, FORWARD, BACKWARD, UPDATE
 * troupe.<job>.ctl.<rank>.<verb>      requests to stage <rank>, answered with an ack: step, abort, stop, ...
 * troupe.<job>.sched.<rank>.<event>   events from stage <rank> to the scheduler: action, loss, done,
 *                                     updated, error, reject (the rank is the sender's, pinned by permission)
 * troupe.<job>.state.<rank>           a stage's weights and optimizer state sent to it (a STATE frame)
 * troupe.<job>.snapshot.<rank>        a stage's weights and optimizer state sent by it (a STATE frame)
 * troupe.<job>.stats.<rank>           a stage's counters after every step (JSON)
 * troupe.<job>.hello                  a stage announcing itself when it starts (JSON)
 * troupe.<job>.output                 a prediction's outputs, from the last stage to the driver (frames)
 * troupe.<job>.inspect.<actor>        inspection events of one actor (@statelyai/inspect format)
 * troupe.<job>.present.<actor>        an actor's answer to `who`: its announcement, latest snapshot,
 *                                     and (the scheduler) the errors and refusals it kept
 * troupe.<job>.who                    an inspector asking every actor of the job to show itself
 * troupe.<job>.allreduce.<rank>       data-parallel replicas of stage <rank> summing gradients (frames)
 * troupe.pool.<name>.<kind>           a task pool's messages (pool/poolProtocol.ts)
 * troupe.serve.<runtime>.<module>.<op>  requests to a module runtime (serve/)
 * _INBOX.<user>.>                     replies to the requests of user <user>'s connections
 * ```
 *
 * `<job>` is one token of letters, digits, `_` and `-`; `<rank>` a non-negative integer.
 * A stage subscribes to `troupe.<job>.stage.<rank>.*` and `troupe.<job>.ctl.<rank>.*`;
 * the scheduler to `troupe.<job>.sched.*.*`.
 *
 * Data-parallel replicas: every subject above but `who` and `allreduce` takes the replica as a
 * token of its own after the job, `troupe.<job>.r<i>.stage.<rank>.<PHASE>` and so on (the
 * builders take the scope `<job>.r<i>` from `replicaScope` where they take a job), so that one
 * wildcard covers every replica: `troupe.<job>.>` everything of the job,
 * `troupe.<job>.*.inspect.*` every replica's actors. A job without replicas keeps the shorter
 * subjects; `who` is one subject per job, which every replica's actors answer.
 */
import { ConfigError } from '../errors.js';
import { Phase } from './phase.js';

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
  /** Your seal key (made by the stage itself; the reply goes to the driver alone). */
  KEY: 'key',
  /** The seal keys of your neighbours, whose frames you take. */
  PEERS: 'peers',
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
  return at(checkScope(job), tail.output());
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

/** Families an inspector follows in every scope of a job. */
export type WatchedFamily = 'inspect' | 'present' | 'sched' | 'stats';

/** The wildcards of one family (every actor, or rank and event) in the job itself and in every replica of it. */
export function everyScope(job: string, family: WatchedFamily): [string, string] {
  checkJobId(job);
  const t = family === 'sched' ? tail.sched('*', '*') : tail[family]('*');
  return [at(job, t), at(`${job}.*`, t)];
}

function checkRank(rank: number): number {
  if (!Number.isInteger(rank) || rank < 0) throw new ConfigError(`rank ${rank} is not a non-negative integer`);
  return rank;
}

/** A rank or verb in a subject, or a wildcard token in a permission. */
type Tok = number | string;

/**
 * What follows `troupe.<scope>.` in each family: the one place each shape is written, used by
 * the builders below (with checked values) and by the permissions table (with wildcards).
 */
const tail = {
  stage: (rank: Tok, phase: Tok) => `stage.${rank}.${phase}`,
  ctl: (rank: Tok, verb: Tok) => `ctl.${rank}.${verb}`,
  sched: (rank: Tok, event: Tok) => `sched.${rank}.${event}`,
  state: (rank: Tok) => `state.${rank}`,
  snapshot: (rank: Tok) => `snapshot.${rank}`,
  stats: (rank: Tok) => `stats.${rank}`,
  hello: () => 'hello',
  output: () => 'output',
  inspect: (actor: Tok) => `inspect.${actor}`,
  present: (actor: Tok) => `present.${actor}`,
  // Job-level: one per job, never in a replica's scope.
  who: () => 'who',
  allreduce: (rank: Tok) => `allreduce.${rank}`,
} as const;

const at = (scope: string, t: string) => `troupe.${scope}.${t}`;

/** Subject of frames of `phase` sent to stage `rank`. */
export function stageSubject(job: string, rank: number, phase: Phase): string {
  return at(checkScope(job), tail.stage(checkRank(rank), phase));
}

/** Wildcard a stage subscribes to for its frames. */
export function stageWildcard(job: string, rank: number): string {
  return at(checkScope(job), tail.stage(checkRank(rank), '*'));
}

/** Subject of control requests `verb` to stage `rank`. */
export function ctlSubject(job: string, rank: number, verb: CtlVerb): string {
  return at(checkScope(job), tail.ctl(checkRank(rank), verb));
}

/** Wildcard a stage subscribes to for control requests. */
export function ctlWildcard(job: string, rank: number): string {
  return at(checkScope(job), tail.ctl(checkRank(rank), '*'));
}

/** Subject of scheduler event `event` from stage `rank` (only that stage's user may publish on it). */
export function schedSubject(job: string, rank: number, event: SchedEvent): string {
  return at(checkScope(job), tail.sched(checkRank(rank), event));
}

/** Wildcard the scheduler subscribes to: every stage's events (of one kind, given `event`). */
export function schedWildcard(job: string, event: SchedEvent | '*' = '*'): string {
  return at(checkScope(job), tail.sched('*', event));
}

/** The sending stage's rank and the event of a scheduler event subject; null when it is not one. */
export function parseSchedSubject(subject: string): { rank: number; event: string } | null {
  const t = subject.split('.');
  const rank = t[t.length - 2];
  if (t.length < 5 || t[t.length - 3] !== 'sched' || rank === undefined || !/^(0|[1-9]\d{0,8})$/.test(rank)) return null;
  return { rank: Number(rank), event: t[t.length - 1]! };
}

/** Subject of state frames sent to stage `rank`. */
export function stateSubject(job: string, rank: number): string {
  return at(checkScope(job), tail.state(checkRank(rank)));
}

/** Subject of state frames stage `rank` sends. */
export function snapshotSubject(job: string, rank: number): string {
  return at(checkScope(job), tail.snapshot(checkRank(rank)));
}

/** Wildcard of every stage's snapshots. */
export function snapshotWildcard(job: string): string {
  return at(checkScope(job), tail.snapshot('*'));
}

/** Subject of stage `rank`'s counters. */
export function statsSubject(job: string, rank: number): string {
  return at(checkScope(job), tail.stats(checkRank(rank)));
}

/** Subject on which starting stages announce themselves. */
export function helloSubject(job: string): string {
  return at(checkScope(job), tail.hello());
}

function actorToken(actor: string): string {
  if (actor === '') throw new ConfigError('an inspected actor needs a non-empty name');
  return actor.replace(/[^A-Za-z0-9_-]/g, '_');
}

/** Subject of one actor's inspection events. */
export function inspectSubject(job: string, actor: string): string {
  return at(checkScope(job), tail.inspect(actorToken(actor)));
}

/** Subject of one actor's answers to `who`. */
export function presentSubject(job: string, actor: string): string {
  return at(checkScope(job), tail.present(actorToken(actor)));
}

/** Subject on which an inspector asks every actor of the job (every replica of it) to show itself. */
export function whoSubject(job: string): string {
  return at(jobOfScope(job), tail.who());
}

/** Where data-parallel replicas of stage `rank` of job `group` send their gradients (one subject per job, not per replica). */
export function allReduceSubject(group: string, rank: number): string {
  return at(checkJobId(group), tail.allreduce(checkRank(rank)));
}

/** A task pool's subject of `kind` (`task`, `caller.<id>`, ...: each token checked): `troupe.pool.<name>.<kind>...`. */
export function poolSubject(name: string, ...kind: readonly string[]): string {
  if (kind.length === 0) throw new ConfigError(`a subject of pool ${name} needs a kind`);
  return `troupe.pool.${checkJobId(name)}.${kind.map(checkJobId).join('.')}`;
}

/** Subject of a module runtime's op: `troupe.serve.<runtime>.<module>.<op>`. */
export function serveSubject(runtime: string, module: string, op: 'forward' | 'backward'): string {
  return `troupe.serve.${checkJobId(runtime)}.${checkJobId(module)}.${op}`;
}

/** The inspection scope of pool `name`'s workers (`troupe.pool-<name>.inspect.<actor>`). */
export function poolScope(name: string): string {
  return checkJobId(`pool-${checkJobId(name)}`);
}

/** The inspection scope of module runtime `name` (`troupe.serve-<name>.inspect.runtime`). */
export function serveScope(name: string): string {
  return checkJobId(`serve-${checkJobId(name)}`);
}

const USER = /^[A-Za-z0-9_@-]{1,128}$/;

/**
 * The prefix of the reply subjects of user `user`'s connections (`_INBOX.<user>`), which its
 * permissions allow it to subscribe to (and no other user's); undefined for a name that cannot
 * be a subject token (the client's default, `_INBOX`, is used then).
 */
export function inboxPrefix(user: string): string | undefined {
  return USER.test(user) ? `_INBOX.${user}` : undefined;
}

/** The last token of a subject (the phase, verb or event). */
export function lastToken(subject: string): string {
  return subject.slice(subject.lastIndexOf('.') + 1);
}

/** Stage users the permissions table defines (ranks 0..MAX_STAGE_USERS-1). */
export const MAX_STAGE_USERS = 16;

/** The NATS user of stage `rank`. */
export function stageRole(rank: number): string {
  return `stage${checkRank(rank)}`;
}

/** Every user the permissions table knows: the driver, a user per stage rank, pools, the inspector, admin. */
export function roles(): string[] {
  return ['driver', ...Array.from({ length: MAX_STAGE_USERS }, (_, r) => stageRole(r)), 'pool', 'inspector', 'admin'];
}

/** What one user may publish and subscribe to, as nats.conf writes it. */
export interface Permissions {
  readonly publish: readonly string[];
  readonly subscribe: readonly string[];
  /** May answer requests (publish once to a requester's reply subject). */
  readonly responses: boolean;
}

/** A job's subjects, each also in every replica's scope (`troupe.<job>.r<i>.<tail>`): as tight, the same pattern after the replica token. */
const inJob = (job: string, tails: readonly string[]) => tails.flatMap((t) => [at(job, t), at(`${job}.*`, t)]);
/** Job-level subjects (`who`, the all-reduce): no replica token. */
const ofJob = (job: string, tails: readonly string[]) => tails.map((t) => at(job, t));

/**
 * What `role` may do in job `job`: the least each one needs. `'*'` (the default) stands for
 * any job, as the static nats.conf for hand-run fleets has it; a job id confines every user
 * to that job's subjects (the configuration `startNatsServer({ job })` and `troupe up` make).
 * A stage may send activations to the next stage only, gradients to the previous one only,
 * and events, states and counters under its own rank; requests get their replies under the
 * requester's user (`inboxPrefix`).
 */
export function permissionsOf(role: string, job = '*'): Permissions {
  if (job !== '*') checkJobId(job);
  const inbox = (user: string) => `${inboxPrefix(user)!}.>`;
  if (role === 'driver') {
    return {
      // Feeds inputs and updates, sends plans and states, reads events, snapshots and outputs;
      // shows its scheduler and (troupe up) its job actor to inspectors.
      publish: inJob(job, [
        tail.stage('*', Phase.INPUT),
        tail.stage('*', Phase.UPDATE),
        tail.ctl('*', '*'),
        tail.state('*'),
        tail.inspect('scheduler'),
        tail.present('scheduler'),
        tail.inspect('job'),
        tail.present('job'),
      ]),
      subscribe: [
        ...inJob(job, [tail.sched('*', '*'), tail.snapshot('*'), tail.stats('*'), tail.hello(), tail.output()]),
        ...ofJob(job, [tail.who()]),
        inbox('driver'),
      ],
      responses: false,
    };
  }
  const stage = /^stage(0|[1-9]\d*)$/.exec(role);
  if (stage) {
    const r = Number(stage[1]);
    return {
      publish: [
        ...inJob(job, [
          tail.stage(r + 1, Phase.FORWARD),
          ...(r > 0 ? [tail.stage(r - 1, Phase.BACKWARD)] : []),
          tail.sched(r, '*'),
          tail.snapshot(r),
          tail.stats(r),
          tail.hello(),
          tail.inspect(`stage-${r}`),
          // Its answer to an inspector's "who is there".
          tail.present(`stage-${r}`),
          // A prediction's outputs, from whichever stage is last.
          tail.output(),
        ]),
        // Data-parallel replicas of the same stage sum their gradients here.
        ...ofJob(job, [tail.allreduce(r)]),
      ],
      subscribe: [...inJob(job, [tail.stage(r, '*'), tail.ctl(r, '*'), tail.state(r)]), ...ofJob(job, [tail.allreduce(r), tail.who()])],
      responses: true,
    };
  }
  if (role === 'pool') {
    // Task pools and module runtimes: their own subjects, requests and replies.
    return {
      publish: ['troupe.pool.>', 'troupe.serve.>', 'troupe.*.inspect.>', 'troupe.*.present.>'],
      subscribe: ['troupe.pool.>', 'troupe.serve.>', 'troupe.*.who', inbox('pool')],
      responses: true,
    };
  }
  if (role === 'inspector') {
    // Asks who is there, and hears what the inspector shows: inspection events, answers, events and counters (no frames, plans or states).
    return {
      publish: ofJob(job, [tail.who()]),
      subscribe: inJob(job, [tail.inspect('*'), tail.present('*'), tail.sched('*', '*'), tail.stats('*')]),
      responses: false,
    };
  }
  // Operators and test harnesses: everything.
  if (role === 'admin') return { publish: ['>'], subscribe: ['>'], responses: false };
  throw new ConfigError(`no NATS user "${role}": the users are ${roles().join(', ')}`);
}
