/**
 * The scheduler actor: runs one step at a time across the stages. It starts the step on
 * every stage, feeds INPUT within the schedule's consume constraint, collects per-microbatch
 * losses, closes a training step with UPDATE, and on the first stage error or a timeout
 * aborts the step on every stage and reports that error instead of hanging.
 *
 * ```
 * idle -START-> starting -> feeding -(all fed)-> draining -(losses + done)-> updating -> finished -> idle
 *                 \__________\____________________\___________ STAGE_ERROR / timeout -> aborting -> idle
 * ```
 * A step may have begun before START (its plans and first inputs sent while the previous
 * step's update was applied): `beginStep` then says how many microbatches are already fed.
 *
 * Once every stage but one is done (at once with one stage), that last one is sent its UPDATE
 * early (`grantUpdate`): it applies it as its own list ends, without a round trip through the
 * scheduler on the step's critical path. No stage still applies an update unless every stage
 * finished its list: the others get theirs when the last DONE is in. A lone stage's plan
 * grants it already (`grantInPlan`): the grant is noted and no UPDATE is sent.
 */
import { and, assign, fromPromise, not, setup, stateIn } from 'xstate';
import { appliesUpdate, refusalFailsStep } from '../src/protocol/messages.js';
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
export interface RefusedFrame extends StageFailure {
  readonly step: number;
  readonly phase: string;
}

/** The first failure of a step. */
export interface StepFailure extends StageFailure {
  readonly rank: number;
}

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
}

export type SchedulerEvent =
  | { type: 'START'; req: StepRequest }
  | { type: 'ACTION'; rank: number; step: number; action: string }
  | { type: 'LOSS'; step: number; microbatch: number; loss: number; metric: number | null }
  | { type: 'DONE'; rank: number; step: number; peakHeld: number }
  | { type: 'UPDATED'; rank: number; step: number }
  | { type: 'STAGE_ERROR'; rank: number; step: number; failure: StageFailure }
  /** A stage refused a frame; `refused` names it when its key could be read. */
  | { type: 'REJECT'; rank: number; refused?: RefusedFrame };

type StepEvent = Extract<SchedulerEvent, { step: number }>;

const isStepEvent = (e: SchedulerEvent): e is StepEvent => 'step' in e;

function allLossesIn(c: SchedulerContext): boolean {
  return c.losses.every((l) => l !== null);
}

/**
 * A stage refused one of this step's INPUT frames as the wrong tensors for it (refusalFailsStep):
 * the step cannot finish, and fails now rather than at its timeout.
 */
export function refusesStepInput(c: Pick<SchedulerContext, 'req' | 'stages'>, e: SchedulerEvent): boolean {
  if (e.type !== 'REJECT' || !e.refused || !c.req) return false;
  return e.refused.step === c.req.step && refusalFailsStep(e.refused) && Number.isInteger(e.rank) && e.rank >= 0 && e.rank < c.stages;
}

/** A stage event names a real rank, a loss a real microbatch (rank -1 is the scheduler's own transport). */
function inRange(c: SchedulerContext, e: StepEvent): boolean {
  if (e.type === 'LOSS') return Number.isInteger(e.microbatch) && e.microbatch >= 0 && e.microbatch < c.req!.microbatches;
  const minRank = e.type === 'STAGE_ERROR' ? -1 : 0;
  return Number.isInteger(e.rank) && e.rank >= minRank && e.rank < c.stages;
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
  return { ...f, message: `${f.message} (stage ${c.granted} had its UPDATE early, as the last stage running: if it finished its actions it applied it; restore a checkpoint)` };
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

/** The scheduler machine; hosts `provide` the I/O actors and actions. */
export const schedulerMachine = setup({
  types: {
    context: {} as SchedulerContext,
    events: {} as SchedulerEvent,
    input: {} as { stages: number },
  },
  actors: {
    /**
     * Sends the step's plan to every stage and waits for every ack; resolves to how many
     * microbatches were already fed (a step started while the previous one applied its update).
     */
    beginStep: fromPromise<number, StepRequest>(async () => {
      throw new Error('scheduler machine: beginStep is not provided');
    }),
    /** Aborts the step on every stage and waits until each is idle again. */
    abortStep: fromPromise<void, { step: number }>(async () => {
      throw new Error('scheduler machine: abortStep is not provided');
    }),
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
    markFed: assign({ fed: ({ context }) => feedLimit(context) }),
    markGranted: assign({ granted: ({ context }) => context.done.indexOf(false) }),
    countStage0: assign(({ context, event }) => (event.type === 'ACTION' && freesForFeed(context.req!, event) ? { stage0Done: context.stage0Done + 1 } : {})),
    keepFirstFailure: assign(({ context, event }) => {
      if (context.failure) return {};
      if (event.type === 'REJECT' && event.refused) {
        const { key, code, message } = event.refused;
        return { failure: { rank: event.rank, key, code, message: `refused INPUT frame: ${message}` } };
      }
      if (event.type !== 'STAGE_ERROR') return {};
      return { failure: { rank: event.rank, ...event.failure } };
    }),
    countReject: assign({ rejected: ({ context }) => context.rejected + 1 }),
  },
  guards: {
    thisStep: ({ context, event }) => isStepEvent(event) && context.req !== null && event.step === context.req.step && inRange(context, event),
    allFed: ({ context }) => context.fed >= context.req!.microbatches,
    drained: ({ context }) => allLossesIn(context) && context.done.every(Boolean),
    forwardOnly: ({ context }) => context.req!.forwardOnly,
    noUpdate: ({ context }) => !appliesUpdate(context.req!),
    allUpdated: ({ context }) => context.updated.every(Boolean),
    /** A training step with one stage left running, not yet granted its update. */
    canGrant: ({ context }) => context.granted < 0 && appliesUpdate(context.req!) && context.done.filter((d) => !d).length === 1,
    grantInPlan: ({ context }) => context.req!.grantInPlan,
    refusesStepInput: ({ context, event }) => refusesStepInput(context, event),
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
  }),
  initial: 'idle',
  on: {
    REJECT: { actions: 'countReject' },
  },
  states: {
    idle: {
      on: {
        START: {
          target: 'active',
          actions: assign(({ context, event }) => ({
            req: event.req,
            fed: 0,
            stage0Done: 0,
            losses: new Array<number | null>(event.req.microbatches).fill(null),
            metrics: new Array<number | null>(event.req.microbatches).fill(null),
            done: new Array<boolean>(context.stages).fill(false),
            updated: new Array<boolean>(context.stages).fill(false),
            peakHeld: new Array<number>(context.stages).fill(0),
            rejected: 0,
            failure: null,
            granted: -1,
          })),
        },
      },
    },
    active: {
      initial: 'starting',
      on: {
        STAGE_ERROR: { guard: 'thisStep', target: '.aborting', actions: 'keepFirstFailure' },
        // A refused INPUT of this step: it cannot finish (see refusesStepInput).
        REJECT: [{ guard: 'refusesStepInput', target: '.aborting', actions: ['countReject', 'keepFirstFailure'] }, { actions: 'countReject' }],
        ACTION: { guard: 'thisStep', actions: 'countStage0' },
        LOSS: {
          guard: 'thisStep',
          actions: assign(({ context, event }) => {
            const losses = [...context.losses];
            const metrics = [...context.metrics];
            losses[event.microbatch] = event.loss;
            metrics[event.microbatch] = event.metric;
            return { losses, metrics };
          }),
        },
        DONE: {
          guard: 'thisStep',
          actions: assign(({ context, event }) => {
            const done = [...context.done];
            const peakHeld = [...context.peakHeld];
            done[event.rank] = true;
            peakHeld[event.rank] = event.peakHeld;
            return { done, peakHeld };
          }),
        },
        // In any state of the step: a stage granted its update early may report it before the last DONE is read.
        UPDATED: {
          guard: 'thisStep',
          actions: assign(({ context, event }) => {
            const updated = [...context.updated];
            updated[event.rank] = true;
            return { updated };
          }),
        },
      },
      states: {
        starting: {
          invoke: {
            src: 'beginStep',
            input: ({ context }) => context.req!,
            onDone: { target: 'feeding', actions: assign({ fed: ({ event }) => event.output }) },
            onError: {
              target: 'aborting',
              actions: assign({ failure: ({ context, event }) => ({ rank: -1, key: `step ${context.req!.step}`, code: 'TRANSPORT', message: String((event.error as Error)?.message ?? event.error) }) }),
            },
          },
        },
        feeding: {
          entry: [feed, 'markFed'],
          on: { ACTION: { guard: 'thisStep', actions: ['countStage0', feed, 'markFed'] } },
          always: [...grant, { guard: 'allFed', target: 'draining' }],
        },
        draining: {
          always: [
            { guard: and(['drained', 'noUpdate']), target: 'finished' },
            { guard: 'drained', target: 'updating' },
            ...grant,
          ],
        },
        updating: {
          entry: { type: 'sendUpdate', params: ({ context }) => ({ step: context.req!.step, except: context.granted }) },
          on: {
            // Some stages may have applied the update already: an abort cannot take it back, so
            // the step fails as it is and says the stages' weights may now disagree.
            STAGE_ERROR: {
              guard: 'thisStep',
              target: '#scheduler.idle',
              actions: [
                'keepFirstFailure',
                {
                  type: 'rejectStep',
                  params: ({ context }) => ({
                    step: context.req!.step,
                    failure: { ...context.failure!, message: `${context.failure!.message} (during UPDATE: stages ${context.updated.flatMap((u, r) => (u ? [r] : [])).join(', ') || 'none'} had applied it; restore a checkpoint)` },
                  }),
                },
              ],
            },
            // Every INPUT was taken before the update: a refusal now is a stray copy, only counted.
            REJECT: { actions: 'countReject' },
          },
          always: { guard: 'allUpdated', target: 'finished' },
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
            input: ({ context }) => ({ step: context.req!.step }),
            onDone: { target: '#scheduler.idle', actions: { type: 'rejectStep', params: ({ context }) => ({ step: context.req!.step, failure: abortedFailure(context) }) } },
            onError: {
              target: '#scheduler.idle',
              actions: { type: 'rejectStep', params: ({ context }) => ({ step: context.req!.step, failure: abortedFailure(context) }) },
            },
          },
          on: { STAGE_ERROR: { actions: [] }, REJECT: { actions: 'countReject' } },
        },
      },
      after: {
        stepTimeout: {
          // Already aborting (after a stage error): re-entering would start a second abortStep.
          // Updating: stages apply the update in a moment; an abort would leave them disagreeing.
          guard: and([not(stateIn('#scheduler.active.aborting')), not(stateIn('#scheduler.active.updating'))]),
          target: '.aborting',
          actions: assign(({ context }) => ({
            failure: context.failure ?? {
              rank: context.done.findIndex((d) => !d),
              key: `step ${context.req!.step}`,
              code: 'STEP_TIMEOUT',
              message: `step ${context.req!.step} did not finish within ${context.req!.timeoutMs} ms; stages not done: ${context.done.flatMap((d, r) => (d ? [] : [r])).join(', ') || 'none'}; microbatches without loss: ${context.losses.flatMap((l, i) => (l === null ? [i] : [])).join(', ') || 'none'}`,
            },
          })),
        },
      },
    },
  },
});
