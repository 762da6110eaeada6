/**
 * The scheduler actor: runs one step at a time across the stages, and the steps called
 * meanwhile after it. It starts the step on every stage, feeds INPUT within the schedule's
 * consume constraint, collects per-microbatch losses, closes a training step with UPDATE,
 * and on the first stage error, a timeout, a silent stage or a stalled step aborts the step
 * on every stage and reports that error instead of hanging.
 *
 * ```
 * idle -RUN-> active: starting -> feeding -(all fed)-> draining -(losses + done)-> updating -> finished -> idle
 *                       \__________\____________________\___ STAGE_ERROR / timeout / CANCEL -> aborting -> settling -> idle
 * RUN while a step runs: queued. The first queued step begins early (planEarly: its plans,
 *   then its first inputs) once every stage holds the running step's plan; its events that
 *   come before it starts are held and handed over when it does.
 * settling: the steps queued behind a failed one are dropped (dropStep), a begun one aborted
 *   on every stage first; steps called meanwhile wait, then run.
 * active invokes `liveness`: TICK every heartbeat, PROBED for each probe answer. A stage
 *   silent for livenessTimeoutMs (STAGE_SILENT) or a step that ends no action for
 *   stallTimeoutMs (STEP_STALLED) fails as that stage's STAGE_ERROR, with the step's grid.
 * ```
 * A step may also have begun before START (its plans and first inputs sent while the previous
 * step's update was applied): `beginStep` then says how many microbatches are already fed.
 *
 * Once every stage but one is done (at once with one stage), that last one is sent its UPDATE
 * early (`grantUpdate`): it applies it as its own list ends, without a round trip through the
 * scheduler on the step's critical path. No stage still applies an update unless every stage
 * finished its list: the others get theirs when the last DONE is in. A lone stage's plan
 * grants it already (`grantInPlan`): the grant is noted and no UPDATE is sent.
 */
import { and, assign, enqueueActions, fromCallback, fromPromise, not, raise, sendTo, setup, stateIn } from 'xstate';
import { appliesUpdate, refusalFailsStep, type ProbeReply } from '../src/protocol/messages.js';
import { failedByWatch, silentStage, stalledAt, watchFailure, type LivenessCommand, type LivenessEvent, type LivenessInput } from './liveness.js';
import type { StageFailure } from './stageMachine.js';

/** One step to run. */
export interface StepRequest {
  readonly step: number;
  readonly microbatches: number;
  readonly forwardOnly: boolean;
  /** Send UPDATE once drained (false: evaluation, prediction, or an accumulating step). */
  readonly update: boolean;
  /** Microbatches fed beyond those stage 0 has finished: its schedule's bound plus one prefetched. */
  readonly feedBound: number;
  /** The stage-0 action that finishes a microbatch for the feed: F (evaluation), B, or W (split backward). */
  readonly releasedBy: 'F' | 'B' | 'W';
  /** Milliseconds the whole step may take before it is aborted. */
  readonly timeoutMs: number;
  /** The plans grant the UPDATE (one stage, a step that updates): the grant is noted, no UPDATE is sent. */
  readonly grantInPlan: boolean;
  /** Each stage's action list, as its plan gives it (`F0 F1 B0 ...`): the grid a stall or a silence reports. */
  readonly actions?: readonly string[];
  /** The plans give device positions (stages share devices): after this step, if it applies no UPDATE, the next one does not begin early. */
  readonly ordered?: boolean;
}

/** Outcome of a step. */
export interface StepOutcome {
  readonly step: number;
  /** Shares of the batch-mean loss per microbatch; they add up to the step's loss. */
  readonly lossShares: readonly number[];
  readonly metricShares: readonly (number | null)[];
  readonly peakHeld: readonly number[];
  readonly rejected: number;
}

/** A frame a stage refused, with its key as the stage read it. */
interface RefusedFrame extends StageFailure {
  readonly step: number;
  readonly phase: string;
}

/** The first failure of a step. */
export interface StepFailure extends StageFailure {
  readonly rank: number;
}

/** A stage the liveness watch found silent, where it was last seen. */
export interface SilentStage {
  readonly rank: number;
  readonly step: number;
  readonly state: string | null;
  readonly action: string | null;
  readonly awaiting: readonly string[];
}

/** The first queued step's early beginning: plans out (`fed` null) or acked (`fed`: inputs sent), failed, or cancelled. */
interface EarlyStart {
  readonly step: number;
  readonly fed: number | null;
  readonly failed: string | null;
  /** Why the step was cancelled (CANCEL) while it began: it is aborted on the stages once its plans are acked. */
  readonly cancelled: string | null;
  /** Its events that came before it started, handed over when it does. */
  readonly held: readonly StageEventOfStep[];
}

/** The liveness watch of the running step, and what it keeps across steps. */
interface Watch {
  readonly livenessTimeoutMs: number;
  readonly heartbeatMs: number;
  /** Null: a step never stalls. */
  readonly stallTimeoutMs: number | null;
  /** When the watch of the running step began (its first TICK), null before. */
  readonly from: number | null;
  /** When each stage last answered a probe in this step (null: not yet). */
  readonly heard: readonly (number | null)[];
  /** False once a silence or a stall is found: the watch is over for this step. */
  readonly watching: boolean;
  /** Each stage's last answer to a probe, kept across steps. */
  readonly probes: readonly (ProbeReply | null)[];
  /** Stages found silent, latest last. */
  readonly silent: readonly SilentStage[];
}

/** Input of the scheduler actor. */
export interface SchedulerInput {
  readonly stages: number;
  /** A stage that answers no probe for this long fails the step as STAGE_SILENT (default 30 s). */
  readonly livenessTimeoutMs?: number;
  /** How often every stage is probed during a step (default 1 s). */
  readonly heartbeatMs?: number;
  /** A step that ends no action for this long fails as STEP_STALLED (default: never). */
  readonly stallTimeoutMs?: number;
}

/**
 * The scheduler's context, with what belongs together grouped (`early`, `settle`, `watch`):
 * xstate's `assign` copies the context with `Object.assign({}, ...)`, which V8 runs many
 * times slower from about 20 top-level properties on (30 keys here made a step of the machine
 * 2.4 times as long: bench/machines.ts).
 */
export interface SchedulerContext {
  readonly stages: number;
  req: StepRequest | null;
  fed: number;
  stage0Done: number;
  losses: (number | null)[];
  metrics: (number | null)[];
  done: boolean[];
  updated: boolean[];
  peakHeld: number[];
  rejected: number;
  failure: StepFailure | null;
  /** The stage sent its UPDATE early, as the last one still running (-1: none). */
  granted: number;
  /** Steps called while one runs or settles, in order. */
  queue: StepRequest[];
  early: EarlyStart | null;
  /** While settling: the steps a failure drops, and the step that failed. */
  settle: { readonly dropping: readonly StepRequest[]; readonly failedStep: number } | null;
  watch: Watch;
}

export type SchedulerEvent =
  /** A step called: run at once when idle, else queued. */
  | { type: 'RUN'; req: StepRequest }
  /** Run `req` now (idle only): RUN without the queue. */
  | { type: 'START'; req: StepRequest }
  | { type: 'ACTION'; rank: number; step: number; action: string }
  | { type: 'LOSS'; step: number; microbatch: number; loss: number; metric: number | null }
  | { type: 'DONE'; rank: number; step: number; peakHeld: number }
  | { type: 'UPDATED'; rank: number; step: number }
  | { type: 'STAGE_ERROR'; rank: number; step: number; failure: StageFailure }
  /** A stage refused a frame; `refused` names it when its key could be read. */
  | { type: 'REJECT'; rank: number; refused?: RefusedFrame }
  /** Fail step `step` from outside (another replica's failed): running, it is aborted; queued, dropped. */
  | { type: 'CANCEL'; step: number; code: string; message: string }
  /** Every stage acked the early step's plans (`planEarly`), or one did not. */
  | { type: 'PLANNED'; step: number }
  | { type: 'PLAN_FAILED'; step: number; message: string }
  /** The cancelled early step was aborted on every stage (`abortEarly`). */
  | { type: 'EARLY_ABORTED'; step: number }
  | LivenessEvent;

/** The stage events that belong to a step. */
export type StageEventOfStep = Extract<SchedulerEvent, { type: 'ACTION' | 'LOSS' | 'DONE' | 'UPDATED' | 'STAGE_ERROR' | 'REJECT' }>;

const STAGE_EVENTS = new Set(['ACTION', 'LOSS', 'DONE', 'UPDATED', 'STAGE_ERROR']);

/** The step a stage event belongs to (a REJECT's when its frame's key was read), or null. */
function stepOf(e: SchedulerEvent): number | null {
  if (e.type === 'REJECT') return e.refused?.step ?? null;
  return STAGE_EVENTS.has(e.type) ? (e as { step: number }).step : null;
}

function allLossesIn(c: SchedulerContext): boolean {
  return c.losses.every((l) => l !== null);
}

/**
 * A stage refused one of this step's frames so that its slot will not be filled (refusalFailsStep:
 * an INPUT of the wrong tensors, a frame with a conflicting chunk): the step cannot finish, and
 * fails now rather than at its timeout.
 */
function refusesStepInput(c: Pick<SchedulerContext, 'req' | 'stages'>, e: SchedulerEvent): boolean {
  if (e.type !== 'REJECT' || !e.refused || !c.req) return false;
  return e.refused.step === c.req.step && refusalFailsStep(e.refused) && Number.isInteger(e.rank) && e.rank >= 0 && e.rank < c.stages;
}

/** A stage event of the running step, naming a real rank (rank -1 is the scheduler's own transport), a loss a real microbatch. */
function ofThisStep(c: SchedulerContext, e: SchedulerEvent): boolean {
  if (!STAGE_EVENTS.has(e.type) || c.req === null) return false;
  const ev = e as Exclude<StageEventOfStep, { type: 'REJECT' }>;
  if (ev.step !== c.req.step) return false;
  if (ev.type === 'LOSS') return Number.isInteger(ev.microbatch) && ev.microbatch >= 0 && ev.microbatch < c.req.microbatches;
  const minRank = ev.type === 'STAGE_ERROR' ? -1 : 0;
  return Number.isInteger(ev.rank) && ev.rank >= minRank && ev.rank < c.stages;
}

/** A stage event of the step that began early, before that step started: held until it does. */
function ofEarlyStep(c: SchedulerContext, e: SchedulerEvent): boolean {
  if (c.early === null || c.early.cancelled !== null) return false;
  const step = stepOf(e);
  return step === c.early.step && step !== c.req?.step;
}

/** Microbatches stage 0 may have been fed by now: its completed ones plus the schedule's bound. */
function feedLimit(c: SchedulerContext): number {
  return Math.max(c.fed, Math.min(c.req!.microbatches, c.stage0Done + c.req!.feedBound));
}

/** Feeds the microbatches the consume constraint now allows. */
const feed = {
  type: 'feedInputs',
  params: ({ context }: { context: SchedulerContext }) => ({ step: context.req!.step, from: context.fed, to: feedLimit(context) }),
} as const;

/**
 * The failure an aborted step reports. A stage granted its update early applies it if it
 * finished its list before the abort reached it (a timeout while its DONE was on the way):
 * the failure says so unless that stage's own error (not a timeout) is the cause.
 */
function abortedFailure(c: SchedulerContext): StepFailure {
  const f = c.failure!;
  if (c.granted < 0 || (f.rank === c.granted && f.code !== 'STEP_TIMEOUT')) return f;
  return {
    ...f,
    message:
      `${f.message} (stage ${c.granted} had its UPDATE early, as the last stage running: ` + 'if it finished its actions it applied it; restore a checkpoint)',
  };
}

/** A failure during UPDATE: some stages may have applied it, and no abort takes that back. */
function duringUpdate(c: SchedulerContext, f: StepFailure): StepFailure {
  return {
    ...f,
    message: `${f.message} (during UPDATE: stages ${c.updated.flatMap((u, r) => (u ? [r] : [])).join(', ') || 'none'} had applied it; restore a checkpoint)`,
  };
}

/**
 * Whether an ACTION event frees one of stage 0's microbatches for the feed (its backward, its
 * W when split, its forward when evaluating): the only ACTION events the machine acts on.
 */
export function freesForFeed(req: Pick<StepRequest, 'releasedBy'>, e: { readonly rank: number; readonly action: string }): boolean {
  return e.rank === 0 && e.action.startsWith(req.releasedBy);
}

/** Grants the last stage still running its UPDATE (see the machine's comment); a plan's grant is only noted. */
const grant = [
  { guard: and(['canGrant', 'grantInPlan']), actions: 'markGranted' },
  {
    guard: 'canGrant',
    actions: [
      'markGranted',
      { type: 'grantUpdate', params: ({ context }: { context: SchedulerContext }) => ({ step: context.req!.step, rank: context.granted }) },
    ],
  },
] as const;

/**
 * The first queued step begins early (its plans go out) as soon as it may: in the states
 * where every stage holds the running step's plan (past `starting`) and the step is not
 * failing (not `aborting`).
 */
const beginEarly = {
  guard: 'canBeginEarly',
  actions: ['markEarly', { type: 'planEarly', params: ({ context }: { context: SchedulerContext }) => context.queue[0]! }],
} as const;

/** Holds an event of the early step until that step starts. */
const holdEarly = { guard: 'ofEarlyStep', actions: 'holdEvent' } as const;

/** The per-step part of the context as a step begins. */
function beginning(c: SchedulerContext, req: StepRequest): Partial<SchedulerContext> {
  return {
    req,
    fed: 0,
    stage0Done: 0,
    losses: new Array<number | null>(req.microbatches).fill(null),
    metrics: new Array<number | null>(req.microbatches).fill(null),
    done: new Array<boolean>(c.stages).fill(false),
    updated: new Array<boolean>(c.stages).fill(false),
    peakHeld: new Array<number>(c.stages).fill(0),
    rejected: 0,
    failure: null,
    granted: -1,
    watch: { ...c.watch, from: null, heard: new Array<number | null>(c.stages).fill(null), watching: true },
  };
}

/** The actions that start a step (its request set by the one before): its held events handed over, and the host told. */
const starts = [
  'replayHeld',
  { type: 'stepStarts', params: ({ context }: { context: SchedulerContext }) => ({ step: context.req!.step, begunEarly: begunEarly(context) }) },
] as const;

/** The stages found silent in step `step`: an abort would only time out on them. */
function silentIn(c: SchedulerContext, step: number): number[] {
  return c.watch.silent.filter((x) => x.step === step).map((x) => x.rank);
}

/** The running step began early (its early beginning is not cleared yet as it starts). */
function begunEarly(c: SchedulerContext): boolean {
  return c.early !== null && c.early.step === c.req?.step && c.early.cancelled === null;
}

/** The scheduler machine; hosts `provide` the I/O actors and actions. */
export const schedulerMachine = setup({
  types: {
    context: {} as SchedulerContext,
    events: {} as SchedulerEvent,
    input: {} as SchedulerInput,
  },
  actors: {
    /**
     * Sends the step's plan to every stage and waits for every ack; resolves to how many
     * microbatches were already fed.
     */
    beginStep: fromPromise<number, StepRequest>(async () => {
      throw new Error('scheduler machine: beginStep is not provided');
    }),
    /** Aborts the step on every stage (but `skip`, found silent) and waits until each is idle again. */
    abortStep: fromPromise<void, { step: number; skip?: readonly number[] }>(async () => {
      throw new Error('scheduler machine: abortStep is not provided');
    }),
    /** The liveness watch of the running step (see liveness.ts); by default it watches nothing. */
    liveness: fromCallback<LivenessCommand, LivenessInput, LivenessEvent>(() => {}),
  },
  actions: {
    /** Publish the INPUT frames of microbatches [from, to). */
    feedInputs: (_, _params: { step: number; from: number; to: number }) => {},
    /** Publish UPDATE to every stage but `except` (the one granted it early; -1: none). */
    sendUpdate: (_, _params: { step: number; except: number }) => {},
    /** Publish UPDATE to stage `rank` early: the last stage still running applies it as its list ends. */
    grantUpdate: (_, _params: { step: number; rank: number }) => {},
    /** Hand the outcome to whoever asked for the step. */
    resolveStep: (_, _params: StepOutcome) => {},
    /** Hand the first failure to whoever asked for the step. */
    rejectStep: (_, _params: { step: number; failure: StepFailure }) => {},
    /** A step starts (from RUN, START or the queue): the host follows its progress. */
    stepStarts: (_, _params: { step: number; begunEarly: boolean }) => {},
    /** Send the queued step's plans to every stage; answer PLANNED or PLAN_FAILED. */
    planEarly: (_, _params: StepRequest) => {
      throw new Error('scheduler machine: planEarly is not provided');
    },
    /** Abort the cancelled early step on every stage; answer EARLY_ABORTED. */
    abortEarly: (_, _params: { step: number }) => {
      throw new Error('scheduler machine: abortEarly is not provided');
    },
    /** Tell whoever asked for step `step` that it was not run: step `failedStep` failed before it. */
    dropStep: (_, _params: { step: number; failedStep: number }) => {},
    /** Tell whoever asked for step `step` that it was not run: it was cancelled (`message` says why). */
    cancelStep: (_, _params: { step: number; message: string }) => {},
    /** A stage was found silent or the step stalled (the step fails): tell someone at once. */
    reportSilence: (_, _params: { message: string }) => {},
    markFed: assign({ fed: ({ context }) => feedLimit(context) }),
    markEarly: assign({ early: ({ context }) => ({ step: context.queue[0]!.step, fed: null, failed: null, cancelled: null, held: [] }) }),
    unwatch: assign({ watch: ({ context }) => ({ ...context.watch, watching: false }) }),
    markGranted: assign({ granted: ({ context }) => context.done.indexOf(false) }),
    countStage0: assign(({ context, event }) => (event.type === 'ACTION' && freesForFeed(context.req!, event) ? { stage0Done: context.stage0Done + 1 } : {})),
    keepFirstFailure: assign(({ context, event }) => {
      if (context.failure) return {};
      if (event.type === 'REJECT' && event.refused) {
        const { key, code, message } = event.refused;
        return { failure: { rank: event.rank, key, code, message: `refused ${event.refused.phase ?? 'a'} frame: ${message}` } };
      }
      if (event.type === 'CANCEL') return { failure: { rank: -1, key: `step ${event.step}`, code: event.code, message: event.message } };
      if (event.type !== 'STAGE_ERROR') return {};
      return { failure: { rank: event.rank, ...event.failure } };
    }),
    countReject: assign({ rejected: ({ context }) => context.rejected + 1 }),
    enqueue: assign({ queue: ({ context, event }) => (event.type === 'RUN' ? [...context.queue, event.req] : context.queue) }),
    holdEvent: assign({ early: ({ context, event }) => ({ ...context.early!, held: [...context.early!.held, event as StageEventOfStep] }) }),
    replayHeld: enqueueActions(({ context, enqueue }) => {
      if (!begunEarly(context)) return;
      enqueue.assign({ early: { ...context.early!, held: [] } });
      for (const e of context.early!.held) enqueue.raise(e);
    }),
    startFromEvent: assign(({ context, event }) => beginning(context, (event as Extract<SchedulerEvent, { type: 'RUN' | 'START' }>).req)),
    startFromQueue: assign(({ context }) => ({ ...beginning(context, context.queue[0]!), queue: context.queue.slice(1) })),
    /** The early step's plans are acked (it is still queued): its first inputs go out (feedInputs). */
    markEarlyFed: assign(({ context }) => ({ early: { ...context.early!, fed: Math.min(context.queue[0]!.microbatches, context.queue[0]!.feedBound) } })),
  },
  guards: {
    thisStep: ({ context, event }) => ofThisStep(context, event),
    ofEarlyStep: ({ context, event }) => ofEarlyStep(context, event),
    allFed: ({ context }) => context.fed >= context.req!.microbatches,
    drained: ({ context }) => allLossesIn(context) && context.done.every(Boolean),
    forwardOnly: ({ context }) => context.req!.forwardOnly,
    noUpdate: ({ context }) => !appliesUpdate(context.req!),
    allUpdated: ({ context }) => context.updated.every(Boolean),
    /** A training step with one stage left running, not yet granted its update. */
    canGrant: ({ context }) => context.granted < 0 && appliesUpdate(context.req!) && context.done.filter((d) => !d).length === 1,
    grantInPlan: ({ context }) => context.req!.grantInPlan,
    refusesStepInput: ({ context, event }) => refusesStepInput(context, event),
    hasQueued: ({ context }) => context.queue.length > 0,
    /**
     * The first queued step may begin: every stage holds the running step's plan, and the
     * running step applies an UPDATE or its stages share no device (after a step without one
     * each stage goes on by itself once its own list is done; a co-hosted stage may still be in it).
     */
    canBeginEarly: ({ context }) => context.early === null && context.queue.length > 0 && context.req !== null && (context.req.update || !context.req.ordered),
    /** The running step began early and its plans are acked (its first inputs out), or failed. */
    earlyReady: ({ context }) => context.early !== null && context.early.step === context.req?.step && context.early.fed !== null,
    earlyFailed: ({ context }) => context.early !== null && context.early.step === context.req?.step && context.early.failed !== null,
    earlyPlanning: ({ context }) => context.early !== null && context.early.step === context.req?.step,
    /** An answer about the early step, which is still queued, or cancelled. */
    earlyQueued: ({ context, event }) =>
      'step' in event && context.early?.step === event.step && context.early.cancelled === null && context.queue[0]?.step === event.step,
    earlyCancelled: ({ context, event }) => 'step' in event && context.early?.step === event.step && context.early.cancelled !== null,
    /** While settling: the early step is one the failure drops. */
    earlyDropped: ({ context }) =>
      context.early !== null && context.early.cancelled === null && (context.settle?.dropping ?? []).some((q) => q.step === context.early!.step),
    earlyDroppedPlanning: ({ context }) =>
      context.early !== null &&
      context.early.cancelled === null &&
      context.early.fed === null &&
      context.early.failed === null &&
      (context.settle?.dropping ?? []).some((q) => q.step === context.early!.step),
    cancelsRunning: ({ context, event }) => event.type === 'CANCEL' && context.req?.step === event.step,
    cancelsQueued: ({ context, event }) => event.type === 'CANCEL' && context.queue.some((q) => q.step === event.step) && context.early?.step !== event.step,
    cancelsEarly: ({ context, event }) => event.type === 'CANCEL' && context.queue.some((q) => q.step === event.step) && context.early?.step === event.step,
    unwatched: ({ context }) => !context.watch.watching,
    firstTick: ({ context }) => context.watch.from === null,
    stalled: ({ context, event }) => event.type === 'TICK' && context.watch.from !== null && stalledAt(context, event),
    stageSilent: ({ context, event }) => event.type === 'TICK' && silentStage(context, event.now) >= 0,
  },
  delays: {
    stepTimeout: ({ context }) => context.req?.timeoutMs ?? 60_000,
  },
}).createMachine({
  id: 'scheduler',
  context: ({ input }) => ({
    stages: input.stages,
    req: null,
    fed: 0,
    stage0Done: 0,
    losses: [],
    metrics: [],
    done: [],
    updated: [],
    peakHeld: [],
    rejected: 0,
    failure: null,
    granted: -1,
    queue: [],
    early: null,
    settle: null,
    watch: {
      livenessTimeoutMs: input.livenessTimeoutMs ?? 30_000,
      heartbeatMs: input.heartbeatMs ?? 1_000,
      stallTimeoutMs: input.stallTimeoutMs !== undefined && Number.isFinite(input.stallTimeoutMs) ? input.stallTimeoutMs : null,
      from: null,
      heard: [],
      watching: false,
      probes: new Array<ProbeReply | null>(input.stages).fill(null),
      silent: [],
    },
  }),
  initial: 'idle',
  on: {
    REJECT: { actions: 'countReject' },
    RUN: { actions: 'enqueue' },
    // The early step, still queued: its first inputs go. Cancelled meanwhile: it is aborted on every stage.
    PLANNED: [
      {
        guard: 'earlyCancelled',
        actions: [
          assign({ early: ({ context }) => ({ ...context.early!, fed: 0 }) }),
          { type: 'abortEarly', params: ({ context }) => ({ step: context.early!.step }) },
        ],
      },
      {
        guard: 'earlyQueued',
        actions: ['markEarlyFed', { type: 'feedInputs', params: ({ context }) => ({ step: context.early!.step, from: 0, to: context.early!.fed! }) }],
      },
    ],
    PLAN_FAILED: [
      {
        guard: 'earlyCancelled',
        actions: [
          assign({ early: ({ context }) => ({ ...context.early!, fed: 0 }) }),
          { type: 'abortEarly', params: ({ context }) => ({ step: context.early!.step }) },
        ],
      },
      {
        guard: 'earlyQueued',
        actions: assign({
          early: ({ context, event }) => ({ ...context.early!, failed: event.message }),
        }),
      },
    ],
    EARLY_ABORTED: {
      guard: 'earlyCancelled',
      actions: [{ type: 'cancelStep', params: ({ context }) => ({ step: context.early!.step, message: context.early!.cancelled! }) }, assign({ early: null })],
    },
    CANCEL: [
      // Begun early: out of the queue now; aborted on the stages once its plans are acked, then told.
      {
        guard: 'cancelsEarly',
        actions: [
          assign(({ context, event }) => {
            const e = event;
            return { queue: context.queue.filter((q) => q.step !== e.step), early: { ...context.early!, cancelled: e.message, held: [] } };
          }),
          enqueueActions(({ context, enqueue }) => {
            if (context.early!.fed !== null || context.early!.failed !== null) enqueue({ type: 'abortEarly', params: { step: context.early!.step } });
          }),
        ],
      },
      {
        guard: 'cancelsQueued',
        actions: [
          assign({ queue: ({ context, event }) => context.queue.filter((q) => q.step !== (event as { step: number }).step) }),
          { type: 'cancelStep', params: ({ event }) => ({ step: (event as { step: number }).step, message: (event as { message: string }).message }) },
        ],
      },
    ],
  },
  states: {
    idle: {
      always: { guard: 'hasQueued', target: 'active', actions: ['startFromQueue', ...starts] },
      on: {
        RUN: { target: 'active', actions: ['startFromEvent', ...starts] },
        START: { target: 'active', actions: ['startFromEvent', ...starts] },
      },
    },
    active: {
      initial: 'starting',
      invoke: {
        id: 'liveness',
        src: 'liveness',
        input: ({ context }) => ({ stages: context.stages, heartbeatMs: context.watch.heartbeatMs, timeoutMs: context.watch.livenessTimeoutMs }),
      },
      // The first queued step begins as soon as it may.
      on: {
        STAGE_ERROR: [holdEarly, { guard: 'thisStep', target: '.aborting', actions: 'keepFirstFailure' }],
        // A refused INPUT of this step: it cannot finish (see refusesStepInput).
        REJECT: [holdEarly, { guard: 'refusesStepInput', target: '.aborting', actions: ['countReject', 'keepFirstFailure'] }, { actions: 'countReject' }],
        CANCEL: { guard: 'cancelsRunning', target: '.aborting', actions: 'keepFirstFailure' },
        ACTION: [holdEarly, { guard: 'thisStep', actions: 'countStage0' }],
        LOSS: [
          holdEarly,
          {
            guard: 'thisStep',
            actions: assign(({ context, event }) => {
              const e = event;
              const losses = [...context.losses];
              const metrics = [...context.metrics];
              losses[e.microbatch] = e.loss;
              metrics[e.microbatch] = e.metric;
              return { losses, metrics };
            }),
          },
        ],
        DONE: [
          holdEarly,
          {
            guard: 'thisStep',
            actions: assign(({ context, event }) => {
              const e = event;
              const done = [...context.done];
              const peakHeld = [...context.peakHeld];
              done[e.rank] = true;
              peakHeld[e.rank] = e.peakHeld;
              return { done, peakHeld };
            }),
          },
        ],
        // In any state of the step: a stage granted its update early may report it before the last DONE is read.
        UPDATED: [
          holdEarly,
          {
            guard: 'thisStep',
            actions: assign(({ context, event }) => {
              const updated = [...context.updated];
              updated[event.rank] = true;
              return { updated };
            }),
          },
        ],
        PROBED: {
          guard: not('unwatched'),
          actions: assign(({ context, event }) => {
            const e = event;
            const heard = [...context.watch.heard];
            const probes = [...context.watch.probes];
            heard[e.rank] = e.at;
            probes[e.rank] = e.reply;
            return { watch: { ...context.watch, heard, probes } };
          }),
        },
        // A stall or a silence fails the step as that stage's error would (STAGE_ERROR: aborted, or failed as it is during UPDATE).
        TICK: [
          { guard: 'unwatched' },
          { guard: 'firstTick', actions: assign({ watch: ({ context, event }) => ({ ...context.watch, from: event.now }) }) },
          {
            guard: and(['stalled', not(stateIn('#scheduler.active.updating')), not(stateIn('#scheduler.active.aborting'))]),
            actions: [
              'unwatch',
              sendTo('liveness', { type: 'UNWATCH' }),
              { type: 'reportSilence', params: ({ context, event }) => ({ message: watchFailure(context, event, 'STEP_STALLED').message }) },
              raise(({ context, event }) => failedByWatch(context, event, 'STEP_STALLED')),
            ],
          },
          {
            guard: 'stageSilent',
            actions: [
              'unwatch',
              sendTo('liveness', { type: 'UNWATCH' }),
              assign({
                watch: ({ context, event }) => {
                  const w = context.watch;
                  const r = silentStage(context, event.now);
                  const seen = w.probes[r];
                  return {
                    ...w,
                    silent: [
                      ...w.silent,
                      { rank: r, step: context.req!.step, state: seen?.state ?? null, action: seen?.action ?? null, awaiting: seen?.awaiting ?? [] },
                    ],
                  };
                },
              }),
              { type: 'reportSilence', params: ({ context, event }) => ({ message: watchFailure(context, event, 'STAGE_SILENT').message }) },
              raise(({ context, event }) => failedByWatch(context, event, 'STAGE_SILENT')),
            ],
          },
        ],
      },
      states: {
        starting: {
          initial: 'choosing',
          states: {
            choosing: {
              always: [
                {
                  guard: 'earlyFailed',
                  target: '#scheduler.active.aborting',
                  actions: assign({
                    failure: ({ context }) => ({ rank: -1, key: `step ${context.req!.step}`, code: 'TRANSPORT', message: context.early!.failed! }),
                    early: null,
                  }),
                },
                // Begun early: its plans are acked and its first inputs out.
                { guard: 'earlyReady', target: '#scheduler.active.feeding', actions: assign({ fed: ({ context }) => context.early!.fed!, early: null }) },
                { guard: 'earlyPlanning', target: 'awaitingPlans' },
                { target: 'planning' },
              ],
            },
            // Begun early, its plans not acked yet.
            awaitingPlans: {
              on: {
                PLANNED: { target: '#scheduler.active.feeding', actions: assign({ fed: 0, early: null }) },
                PLAN_FAILED: {
                  target: '#scheduler.active.aborting',
                  actions: assign({
                    failure: ({ context, event }) => ({
                      rank: -1,
                      key: `step ${context.req!.step}`,
                      code: 'TRANSPORT',
                      message: event.message,
                    }),
                    early: null,
                  }),
                },
              },
            },
            planning: {
              invoke: {
                src: 'beginStep',
                input: ({ context }) => context.req!,
                // Every stage has this step's plan: the next one's may follow.
                onDone: { target: '#scheduler.active.feeding', actions: assign({ fed: ({ event }) => event.output }) },
                onError: {
                  target: '#scheduler.active.aborting',
                  actions: assign({
                    failure: ({ context, event }) => ({
                      rank: -1,
                      key: `step ${context.req!.step}`,
                      code: 'TRANSPORT',
                      message: String((event.error as Error)?.message ?? event.error),
                    }),
                  }),
                },
              },
            },
          },
        },
        feeding: {
          entry: [feed, 'markFed'],
          on: { ACTION: { guard: 'thisStep', actions: ['countStage0', feed, 'markFed'] } },
          always: [...grant, { guard: 'allFed', target: 'draining' }, beginEarly],
        },
        draining: {
          always: [{ guard: and(['drained', 'noUpdate']), target: 'finished' }, { guard: 'drained', target: 'updating' }, ...grant, beginEarly],
        },
        updating: {
          entry: { type: 'sendUpdate', params: ({ context }) => ({ step: context.req!.step, except: context.granted }) },
          on: {
            // Some stages may have applied the update already: an abort cannot take it back, so
            // the step fails as it is and says the stages' weights may now disagree.
            STAGE_ERROR: {
              guard: 'thisStep',
              target: '#scheduler.settling',
              actions: [
                'keepFirstFailure',
                { type: 'rejectStep', params: ({ context }) => ({ step: context.req!.step, failure: duringUpdate(context, context.failure!) }) },
              ],
            },
            // Cancelled from outside (replicas): no stage can have applied an update another
            // replica never sent gradients for, and stages may wait in the all-reduce: aborted.
            CANCEL: {
              guard: 'cancelsRunning',
              target: 'cancelling',
              actions: ['keepFirstFailure', assign({ failure: ({ context }) => duringUpdate(context, context.failure!) })],
            },
            // Every INPUT was taken before the update: a refusal now is a stray copy, only counted.
            REJECT: [holdEarly, { actions: 'countReject' }],
          },
          always: [{ guard: 'allUpdated', target: 'finished' }, beginEarly],
        },
        finished: {
          always: {
            target: '#scheduler.idle',
            actions: {
              type: 'resolveStep',
              params: ({ context }) => ({
                step: context.req!.step,
                lossShares: context.losses as number[],
                metricShares: context.metrics,
                peakHeld: context.peakHeld,
                rejected: context.rejected,
              }),
            },
          },
        },
        aborting: {
          invoke: {
            src: 'abortStep',
            // A stage found silent in this step would only time the abort out: it is not asked.
            input: ({ context }) => ({ step: context.req!.step, skip: silentIn(context, context.req!.step) }),
            onDone: {
              target: '#scheduler.settling',
              actions: { type: 'rejectStep', params: ({ context }) => ({ step: context.req!.step, failure: abortedFailure(context) }) },
            },
            onError: {
              target: '#scheduler.settling',
              actions: { type: 'rejectStep', params: ({ context }) => ({ step: context.req!.step, failure: abortedFailure(context) }) },
            },
          },
          on: { STAGE_ERROR: { actions: [] }, CANCEL: { guard: 'cancelsRunning' }, REJECT: { actions: 'countReject' } },
        },
        // Cancelled during UPDATE (replicas): aborted on every stage, and failed saying who had applied it.
        cancelling: {
          invoke: {
            src: 'abortStep',
            input: ({ context }) => ({ step: context.req!.step, skip: silentIn(context, context.req!.step) }),
            onDone: {
              target: '#scheduler.settling',
              actions: { type: 'rejectStep', params: ({ context }) => ({ step: context.req!.step, failure: context.failure! }) },
            },
            onError: {
              target: '#scheduler.settling',
              actions: { type: 'rejectStep', params: ({ context }) => ({ step: context.req!.step, failure: context.failure! }) },
            },
          },
          on: { STAGE_ERROR: { actions: [] }, CANCEL: { guard: 'cancelsRunning' }, REJECT: { actions: 'countReject' } },
        },
      },
      after: {
        stepTimeout: {
          // Already aborting (after a stage error): re-entering would start a second abortStep.
          // Updating: stages apply the update in a moment; an abort would leave them disagreeing.
          guard: and([not(stateIn('#scheduler.active.aborting')), not(stateIn('#scheduler.active.cancelling')), not(stateIn('#scheduler.active.updating'))]),
          target: '.aborting',
          actions: assign(({ context }) => ({
            failure: context.failure ?? {
              rank: context.done.findIndex((d) => !d),
              key: `step ${context.req!.step}`,
              code: 'STEP_TIMEOUT',
              message:
                `step ${context.req!.step} did not finish within ${context.req!.timeoutMs} ms; ` +
                `stages not done: ${context.done.flatMap((d, r) => (d ? [] : [r])).join(', ') || 'none'}; ` +
                `microbatches without loss: ${context.losses.flatMap((l, i) => (l === null ? [i] : [])).join(', ') || 'none'}`,
            },
          })),
        },
      },
    },
    // After a failure the steps queued behind it are dropped: a begun one is aborted on every
    // stage first (once its plans are acked), so no abort meant for it can take a later step's
    // plan. Steps called meanwhile are queued and run after.
    settling: {
      entry: assign(({ context }) => ({
        settle: { dropping: context.queue, failedStep: context.req!.step },
        queue: [],
        early: context.early && { ...context.early, held: [] },
      })),
      initial: 'choosing',
      states: {
        choosing: {
          always: [{ guard: 'earlyDroppedPlanning', target: 'awaitingPlans' }, { guard: 'earlyDropped', target: 'aborting' }, { target: 'dropped' }],
        },
        awaitingPlans: { on: { PLANNED: 'aborting', PLAN_FAILED: 'aborting' } },
        aborting: {
          invoke: {
            src: 'abortStep',
            // A stage found silent in the failed step would only time this abort out too.
            input: ({ context }) => ({ step: context.early!.step, skip: silentIn(context, context.settle!.failedStep) }),
            onDone: 'dropped',
            onError: 'dropped',
          },
        },
        dropped: {
          always: {
            target: '#scheduler.idle',
            actions: [
              enqueueActions(({ context, enqueue }) => {
                for (const q of context.settle!.dropping) enqueue({ type: 'dropStep', params: { step: q.step, failedStep: context.settle!.failedStep } });
              }),
              assign(({ context }) => ({ settle: null, early: context.early?.cancelled ? context.early : null })),
            ],
          },
        },
      },
    },
  },
});
