/**
 * The job actor: the life of a fleet driver (`troupe up`). It prepares (NATS, the scheduler),
 * waits for every worker, loads the stages, trains step by step, keeps the stages' state now
 * and then (every step with a checkpoint directory; every `keepEvery` steps with restarts; at
 * the end always), evaluates held-out data and finishes. A lost worker or NATS connection
 * starts a recovery, which can start over at any moment: the round it abandons is stopped
 * (its actor's signal aborts) before the next one sends anything.
 *
 * ```
 * preparing -> awaitingWorkers -> loading -> stepping <-> keeping -> evaluating -> finishing -> done
 *                      |              |          |            |           |            |
 *                      +--------------+----------+------------+-----------+------------+
 *                        WORKER_LOST / NATS_LOST with restarts left
 *                                           |
 *                      recovering (again on WORKER_LOST / NATS_LOST) -> stepping | evaluating | finishing
 *
 * a failed step, keep, load or round -> troubled -(a death within the grace)-> recovering
 *                                               \-(none: a census of remote workers)-> recovering | failed
 * INTERRUPT, anywhere -> interrupted
 * ```
 *
 * A recovery restarts the lost workers (those of this process), waits for every rank, fails
 * the interrupted step, loads every stage with the kept state and steps on from it: the steps
 * since are replayed on the same batches, so the run ends with the weights of an unbroken one.
 * The actors (`prepare`, `awaitWorkers`, `load`, `step`, `keep`, `evaluate`, `finish`,
 * `recover`) and the actions that print or touch processes are provided by the host
 * (src/fleet/driver.ts).
 */
import { and, assign, fromPromise, setup } from 'xstate';
import { StageError, StateError, TransportError } from '../src/errors.js';

/** A worker the run lost: its process exited, its stage went silent, or another process took its place. */
export interface WorkerLoss {
  /** The worker: its slot among the fleet's processes (replica * devices + device). */
  readonly worker: number;
  /** What happened, as the run's output says it (`worker 1 exited with SIGKILL`). */
  readonly why: string;
  /** The process is this driver's to start again (false: a remote worker, or its replacement already joined). */
  readonly respawn: boolean;
  /** The stage ranks it hosted. */
  readonly ranks: readonly number[];
}

/** What a recovery round is told. */
export interface RecoverInput {
  /** The state every stage is loaded with: that of this step. */
  readonly kept: number;
  /** Why the running step (if any) fails: the first lost worker's rank, or a lost connection. */
  readonly cause: { readonly rank: number; readonly code: 'WORKER_DIED' | 'NATS_RECONNECT'; readonly message: string };
  /** The nats-server this driver started died: start it again first. */
  readonly serverDown: boolean;
}

/** What a step actor is asked. */
export interface StepInput {
  readonly step: number;
  /** The next step may begin while this one runs (no keep between them). */
  readonly ahead: boolean;
}

/** What the job machine starts with. */
export interface JobInput {
  /** The last step taken before this run (0, or the checkpoint's step on resume). */
  readonly step: number;
  /** The last step to train. */
  readonly total: number;
  /** With restarts, the stages' state is kept every this many steps (the keeps may revise it). */
  readonly keepEvery: number;
  /** A checkpoint directory: the state is kept (and saved) after every step. */
  readonly checkpoint: boolean;
  readonly restartLimit: number;
  /** There are held-out data to evaluate at the end. */
  readonly evaluate: boolean;
}

export interface JobContext extends JobInput {
  /** The last step done. */
  step: number;
  /** The step whose state is kept: a recovery loads it and replays the steps since. */
  kept: number;
  /** Losses recovered from (worker restarts, replacements, nats-server restarts). */
  restarts: number;
  /** Losses noted but not yet restarted (the next recovery round restarts them). */
  lost: WorkerLoss[];
  /** The first loss (or lost connection) of the recovery under way: the running step fails with it. */
  cause: RecoverInput['cause'] | null;
  /** The nats-server this driver started died and is not running again yet. */
  serverDown: boolean;
  /** A NATS connection was lost and came back: frames in flight may be lost. */
  outage: string | null;
  /** What the run was doing when the current trouble began (`step 5`, `the held-out evaluation`). */
  at: string;
  /** Recovery rounds started since the last finished recovery (0: none under way; 2 and more: one started over). */
  round: number;
  evaluated: boolean;
  /** What went wrong last (the host keeps the error object, to throw it if the run fails). */
  error: JobError | null;
}

/** An error as the machine judges it: its class, message, and a stage's rank and reason. */
export interface JobError {
  readonly name: string;
  readonly message: string;
  readonly rank?: number;
  readonly reason?: string;
}

export type JobEvent =
  | { type: 'WORKER_LOST'; loss: WorkerLoss }
  /** A NATS connection was lost (`server`: the nats-server this driver started died). */
  | { type: 'NATS_LOST'; why: string; server: boolean }
  | { type: 'INTERRUPT' };

function errorOf(e: unknown): JobError {
  const base = { name: e instanceof Error ? e.name : 'Error', message: e instanceof Error ? e.message : String(e) };
  return e instanceof StageError ? { ...base, rank: e.rank, ...(e.reason ? { reason: e.reason } : {}) } : base;
}

/** The stage a failed step names as silent (the liveness watchdog's STAGE_SILENT), or -1. */
function silentRank(e: JobError | null): number {
  return e?.reason === 'STAGE_SILENT' ? e.rank! : -1;
}

/** A stage reconnected to NATS during the step: its frames in flight may be lost. */
function lostFrames(e: JobError | null): boolean {
  return e?.reason === 'NATS_RECONNECT';
}

/** A lost worker the run cannot restart. */
function lostError(c: JobContext, why: string): StateError {
  return new StateError(`${why} during the run${c.restartLimit > 0 ? ` (restart limit ${c.restartLimit} reached)` : ''}`);
}

/** A lost NATS connection the run cannot recover from. */
function outageError(c: JobContext, why: string, server: boolean): TransportError {
  const restarts =
    c.restartLimit > 0
      ? ` (restart limit ${c.restartLimit} reached)`
      : `: frames in flight may be lost; troupe up --restarts replays such a step${server ? ' on a nats-server started again' : ''}`;
  return new TransportError(`${why} during ${c.at}${restarts}`);
}

/** Notes an error: the machine's summary of it in the context, the object with the host. */
const note = <E>(error: (a: { context: JobContext; event: E }) => unknown) => [
  { type: 'keepError' as const, params: (a: { context: JobContext; event: E }) => ({ error: error(a) }) },
  { type: 'noteError' as const, params: (a: { context: JobContext; event: E }) => ({ error: error(a) }) },
];
/** An invoked actor's failure: its error noted. */
const noteFailure = note<{ error: unknown }>(({ event }) => event.error);

/** Whether the state is to be kept after step `s`. */
function keepDue(c: JobContext, s: number): boolean {
  return c.checkpoint || s >= c.total || (c.restartLimit > 0 && s - c.kept >= c.keepEvery);
}

/** The job machine; the host provides its actors and its printing actions. */
export const jobMachine = setup({
  types: {
    context: {} as JobContext,
    events: {} as JobEvent,
    input: {} as JobInput,
    output: {} as { step: number; restarts: number },
  },
  actors: {
    /** NATS (started or joined), the driver's connection, the schedulers. */
    prepare: fromPromise<void>(async () => {
      throw new Error('job machine: prepare is not provided');
    }),
    /** Starts the workers (or says how) and waits until every rank of every replica is up. */
    awaitWorkers: fromPromise<void>(async () => {
      throw new Error('job machine: awaitWorkers is not provided');
    }),
    /** Loads the kept state (the initial weights, or a checkpoint) into every stage. */
    load: fromPromise<void>(async () => {
      throw new Error('job machine: load is not provided');
    }),
    /** Trains one step (its batch is known from its number); resolves to its loss and metric. */
    step: fromPromise<{ loss: number; metric: number | null }, StepInput>(async () => {
      throw new Error('job machine: step is not provided');
    }),
    /**
     * Takes every stage's state of step `step` into the driver (and its checkpoint directory);
     * resolves to the cadence of the next keeps when the host revises it (null: unchanged).
     */
    keep: fromPromise<{ keepEvery: number | null }, { step: number }>(async () => {
      throw new Error('job machine: keep is not provided');
    }),
    /** Evaluates the held-out data. */
    evaluate: fromPromise<void>(async () => {
      throw new Error('job machine: evaluate is not provided');
    }),
    /** The trained weights into the driver's model, the stages' counters, the saved model. */
    finish: fromPromise<void>(async () => {
      throw new Error('job machine: finish is not provided');
    }),
    /** One recovery round: the server if it died, every rank up, the step failed, the kept state loaded. */
    recover: fromPromise<void, RecoverInput>(async () => {
      throw new Error('job machine: recover is not provided');
    }),
    /**
     * Asks every rank who it is: the workers that answer nothing, or answer as another process
     * than the one known (a replacement), are lost. Only workers this driver does not watch
     * (remote ones) are counted: its own are reported by their exits.
     */
    census: fromPromise<WorkerLoss[]>(async () => []),
  },
  actions: {
    /** Starts the lost workers of this process again (the round's first act) and says so. */
    restartWorkers: (_, _params: { losses: readonly WorkerLoss[]; at: string; round: number; restarts: number; limit: number; outage: string | null }) => {},
    /** Kills the worker hosting a silent stage: its exit is then a loss like any other. */
    killSilent: (_, _params: { rank: number; why: string }) => {},
    /** Takes a step's result into the run's record. */
    recordStep: (_, _params: { step: number; loss: number; metric: number | null }) => {},
    /** After a recovery: drops what the replayed steps will redo, says how long it took. */
    recovered: (_, _params: { kept: number; at: string }) => {},
    /** The host keeps the error (its class and cause): the run throws it if it fails. */
    keepError: (_, _params: { error: unknown }) => {},
    noteError: assign({ error: (_, params: { error: unknown }) => errorOf(params.error) }),
  },
  guards: {
    restartsOn: ({ context }) => context.restartLimit > 0,
    restartsLeft: ({ context }) => context.restarts + context.lost.length < context.restartLimit,
    trainingLeft: ({ context }) => context.step < context.total,
    keepNow: ({ context }) => keepDue(context, context.step),
    toEvaluate: ({ context }) => context.evaluate && !context.evaluated,
  },
  delays: {
    /** How long a failure waits for the death that may have caused it (an exit is seen a little later than its effects). */
    grace: 2_000,
  },
}).createMachine({
  id: 'job',
  context: ({ input }) => ({
    ...input,
    kept: input.step,
    restarts: 0,
    lost: [],
    cause: null,
    serverDown: false,
    outage: null,
    at: 'the start',
    round: 0,
    evaluated: false,
    error: null,
  }),
  initial: 'preparing',
  output: ({ context }) => ({ step: context.step, restarts: context.restarts }),
  on: {
    INTERRUPT: '.interrupted',
  },
  states: {
    preparing: {
      invoke: {
        src: 'prepare',
        onDone: 'live',
        onError: { target: 'failed', actions: noteFailure },
      },
    },
    /** Everything between preparing and the end: where losses are recovered from. */
    live: {
      initial: 'awaitingWorkers',
      on: {
        WORKER_LOST: [
          {
            guard: and(['restartsOn', 'restartsLeft']),
            target: '.recovering',
            reenter: true,
            actions: assign(({ context, event }) => ({
              lost: [...context.lost, event.loss],
              cause: context.cause ?? { rank: event.loss.ranks[0] ?? 0, code: 'WORKER_DIED' as const, message: `${event.loss.why}; its step is replayed` },
              round: context.round + 1,
            })),
          },
          {
            target: '#job.failed',
            actions: note<{ loss: WorkerLoss }>(({ context, event }) => lostError(context, event.loss.why)),
          },
        ],
        NATS_LOST: [
          {
            guard: ({ context, event }) => context.restartLimit > 0 && (!event.server || context.restarts < context.restartLimit),
            target: '.recovering',
            reenter: true,
            actions: assign(({ context, event }) => ({
              outage: event.why,
              serverDown: context.serverDown || event.server,
              // A dead server is a restart like a dead worker's.
              restarts: context.restarts + (event.server ? 1 : 0),
              cause: context.cause ?? { rank: 0, code: 'NATS_RECONNECT' as const, message: `${event.why}; the step is replayed` },
              round: context.round + 1,
            })),
          },
          // Without restarts: a lost connection fails the run, at once and naming the cause: a
          // dead server rather than the disconnect it causes, whichever is told first.
          { guard: ({ context, event }) => !event.server && context.serverDown, target: '.troubled' },
          {
            target: '.troubled',
            actions: [
              ...note<{ why: string; server: boolean }>(({ context, event }) => outageError(context, event.why, event.server)),
              assign({ serverDown: ({ context, event }) => context.serverDown || event.server }),
            ],
          },
        ],
      },
      states: {
        awaitingWorkers: {
          invoke: { src: 'awaitWorkers', onDone: 'loading', onError: { target: '#job.failed', actions: noteFailure } },
        },
        loading: {
          invoke: { src: 'load', onDone: 'resume', onError: { target: 'troubled', actions: noteFailure } },
        },
        /** Where training goes on from: the next step, the held-out evaluation, or the end. */
        resume: {
          always: [{ guard: 'trainingLeft', target: 'stepping' }, { guard: 'toEvaluate', target: 'evaluating' }, { target: 'finishing' }],
        },
        stepping: {
          entry: assign({ at: ({ context }) => `step ${context.step + 1}` }),
          invoke: {
            src: 'step',
            input: ({ context }) => ({ step: context.step + 1, ahead: context.step + 1 < context.total && !keepDue(context, context.step + 1) }),
            onDone: {
              target: 'stepped',
              actions: [
                { type: 'recordStep', params: ({ context, event }) => ({ step: context.step + 1, loss: event.output.loss, metric: event.output.metric }) },
                assign({ step: ({ context }) => context.step + 1 }),
              ],
            },
            onError: { target: 'troubled', actions: noteFailure },
          },
        },
        stepped: {
          always: [{ guard: 'keepNow', target: 'keeping' }, { target: 'stepping' }],
        },
        keeping: {
          entry: assign({ at: ({ context }) => `step ${context.step}` }),
          invoke: {
            src: 'keep',
            input: ({ context }) => ({ step: context.step }),
            onDone: {
              target: 'resume',
              actions: assign({ kept: ({ context }) => context.step, keepEvery: ({ context, event }) => event.output.keepEvery ?? context.keepEvery }),
            },
            onError: { target: 'troubled', actions: noteFailure },
          },
        },
        evaluating: {
          entry: assign({ at: 'the held-out evaluation' }),
          invoke: {
            src: 'evaluate',
            onDone: { target: 'finishing', actions: assign({ evaluated: true }) },
            onError: { target: 'troubled', actions: noteFailure },
          },
        },
        finishing: {
          entry: assign({ at: 'the summary' }),
          invoke: { src: 'finish', onDone: '#job.done', onError: { target: 'troubled', actions: noteFailure } },
        },
        /**
         * Something failed: a lost worker or connection may be the cause, and its news may come
         * a moment after its effect. A silent stage's worker is killed (with a restart left), a stage
         * that reconnected is an outage; otherwise the run waits for the grace, then fails.
         */
        troubled: {
          initial: 'judging',
          states: {
            judging: {
              always: [
                // Only with a restart left: killing a worker that cannot be restarted would fail the run on the kill, not the silence.
                { guard: and(['restartsOn', 'restartsLeft', ({ context }) => silentRank(context.error) >= 0]), target: 'killing' },
                {
                  guard: ({ context }) => context.restartLimit > 0 && lostFrames(context.error),
                  target: '#job.live.recovering',
                  actions: assign(({ context }) => ({
                    outage: `stage ${context.error!.rank} lost its NATS connection`,
                    cause: { rank: context.error!.rank!, code: 'NATS_RECONNECT' as const, message: 'a stage lost its NATS connection; the step is replayed' },
                    round: context.round + 1,
                  })),
                },
                { target: 'waiting' },
              ],
            },
            killing: {
              entry: { type: 'killSilent', params: ({ context }) => ({ rank: silentRank(context.error), why: context.error!.message.split('\n')[0]! }) },
              after: { grace: '#job.failed' },
            },
            waiting: {
              after: { grace: [{ guard: 'restartsOn', target: 'census' }, { target: '#job.failed' }] },
            },
            /** No news of a loss: a remote worker may be gone or replaced without a word. */
            census: {
              invoke: {
                src: 'census',
                onDone: [
                  {
                    guard: ({ context, event }) => event.output.length > 0 && context.restarts + event.output.length <= context.restartLimit,
                    target: '#job.live.recovering',
                    actions: assign(({ context, event }) => ({
                      lost: [...context.lost, ...event.output],
                      cause: { rank: event.output[0]!.ranks[0] ?? 0, code: 'WORKER_DIED' as const, message: `${event.output[0]!.why}; its step is replayed` },
                      round: context.round + 1,
                    })),
                  },
                  {
                    guard: ({ event }) => event.output.length > 0,
                    target: '#job.failed',
                    actions: note<{ output: WorkerLoss[] }>(({ context, event }) => lostError(context, event.output.map((l) => l.why).join('; '))),
                  },
                  { target: '#job.failed' },
                ],
                onError: '#job.failed',
              },
            },
          },
        },
        recovering: {
          entry: [
            {
              type: 'restartWorkers',
              params: ({ context }) => ({
                losses: context.lost,
                at: context.at,
                round: context.round,
                restarts: context.restarts + context.lost.length,
                limit: context.restartLimit,
                outage: context.outage,
              }),
            },
            assign(({ context }) => ({ restarts: context.restarts + context.lost.length, lost: [], outage: null })),
          ],
          on: {
            // A loss while recovering starts the round over (as `live` would), without naming a new cause.
            WORKER_LOST: {
              guard: and(['restartsOn', 'restartsLeft']),
              target: 'recovering',
              reenter: true,
              actions: assign(({ context, event }) => ({ lost: [...context.lost, event.loss], round: context.round + 1 })),
            },
          },
          invoke: {
            src: 'recover',
            input: ({ context }) => ({ kept: context.kept, cause: context.cause!, serverDown: context.serverDown }),
            onDone: {
              target: 'resume',
              actions: [
                { type: 'recovered', params: ({ context }) => ({ kept: context.kept, at: context.at }) },
                assign(({ context }) => ({ step: context.kept, cause: null, serverDown: false, round: 0, error: null })),
              ],
            },
            onError: { target: 'troubled', actions: noteFailure },
          },
        },
      },
    },
    done: { type: 'final' },
    failed: { type: 'final' },
    interrupted: { type: 'final' },
  },
});
