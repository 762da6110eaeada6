/**
 * The stage actor: walks its action list for each step, waiting for the frame each action
 * needs, starts compute with `startRun` (the host answers ACTION_DONE or ACTION_FAILED),
 * and after its last action awaits UPDATE. A run is every action from the cursor on whose
 * frames are all in: one event starts it and one ends it, however many actions it holds.
 *
 * ```
 * booting -> idle -STEP-> running -(last action)-> awaitingUpdate -UPDATE-> updating -> idle
 *                          running: next -> waiting -FRAME-> next -> computing (a run) -> next ...
 * any step state -ABORT-> idle (the step's tensors dropped); compute error -> failed -ABORT-> idle
 * ABORT while computing waits for the action to end (the run stops there), while updating for
 * the update to end; then idle (even when it fails)
 * running, awaitingUpdate, updating -STEP-> (the plan is queued) ... idle -> running (the queued step)
 * running -UPDATE-> (granted: the last stage still running) ... (last action) -> updating, not awaitingUpdate
 * a plan that grants the UPDATE (a lone stage's): (last action) -> updating, no UPDATE comes
 * ```
 * Frames are judged on arrival (`admitFrame`): a refused one is reported and dropped, and
 * the stage carries on with its step. Frames of a queued step are judged against its plan
 * and kept apart (`early`) until it starts. An ABORT drops the queued step too. A frame whose
 * slot holds a frame with other bytes is a conflict: neither is kept (the slot takes no
 * more; a queued step is dropped) and the stage reports it as its step's error, which fails
 * the step (the scheduler aborts it).
 */
import { and, assign, fromPromise, raise, setup, type AnyActorRef, type Snapshot } from 'xstate';
import type { TroupeError } from '../src/errors.js';
import type { CutTensor } from '../src/compute/partition.js';
import type { Frame } from '../src/protocol/frame.js';
import { slotOf } from '../src/protocol/key.js';
import { appliesUpdate, type StepPlan } from '../src/protocol/messages.js';
import { formatAction, parseStageActions, type Action } from '../src/schedule/action.js';
import { releasedBy } from '../src/schedule/constraint.js';
import { needs } from '../src/schedule/needs.js';
import { admitFrame, conflictOf } from './admitFrame.js';
import { abortRefusal, stepRefusal, updateRefusal, type StateText } from './stageRefusals.js';

/** Input of a stage actor. */
export interface StageInput {
  readonly job: string;
  readonly rank: number;
  readonly stages: number;
  readonly inputs: readonly CutTensor[];
  readonly outputs: readonly CutTensor[];
  /** The stage shares its device with others (a plan may give its actions device positions). */
  readonly sharesDevice?: boolean;
}

/** What `execute` gets for one action of a run: the action and the frames it needs, in `needs` order. */
export interface ExecuteInput {
  readonly action: Action;
  /** The action's index in the stage's list. */
  readonly index: number;
  readonly frames: readonly Frame[];
  readonly plan: StepPlan;
}

/** A stage error as it travels: the key or action where it happened, and why. */
export interface StageFailure {
  readonly key: string;
  readonly code: string;
  readonly message: string;
}

export interface StageContext extends StageInput {
  step: number;
  plan: StepPlan | null;
  /** The plan of the step queued behind this one (sent while this one runs). */
  next: StepPlan | null;
  /** Frames of the queued step, by slot. */
  early: Record<string, Frame>;
  actions: Action[];
  cursor: number;
  /** While computing: how many actions from the cursor on the run holds (0 otherwise). */
  run: number;
  inbox: Record<string, Frame>;
  consumed: string[];
  held: number;
  peakHeld: number;
  abortRequested: boolean;
  /** UPDATE came while the step ran (the scheduler grants it to the last stage running), or the plan granted it: apply it as the list ends. */
  updateGranted: boolean;
  rejected: number;
  error: StageFailure | null;
}

export type StageEvent =
  | { type: 'STEP'; plan: StepPlan }
  | { type: 'FRAME'; frame: Frame }
  /** UPDATE of step `step` (for job `job`, as its frame named it): applied, taken as a grant, or refused (`rejectUpdate`). */
  | { type: 'UPDATE'; step: number; job?: string }
  /**
   * The run that began at action `index` of step `step` ended (sent by `actionRunner`) with
   * `count` of its actions done: all of them, or fewer when an ABORT stopped it between two.
   */
  | { type: 'ACTION_DONE'; step: number; index: number; count: number }
  /** Action `index + count` of the run that began at `index` failed; the `count` before it were done. */
  | { type: 'ACTION_FAILED'; step: number; index: number; count: number; error: unknown }
  /** The update of step `step` is applied (sent by `updateRunner`). */
  | { type: 'UPDATE_DONE'; step: number }
  | { type: 'UPDATE_FAILED'; step: number; error: unknown }
  | { type: 'ABORT' }
  /**
   * The scheduler asks to abort step `step`: one that is over is refused (`refuseControl`), a
   * queued one is dropped, a later one has nothing to abort, the stage's own step is aborted
   * (`abortStarts`, then ABORT).
   */
  | { type: 'ABORT_STEP'; step: number }
  /** Forget the queued step (the scheduler aborted it before it began). */
  | { type: 'DROP_NEXT' }
  | { type: 'STOP' }
  /** Weights of step `step` were loaded (resume): frames of that step and earlier are stale. */
  | { type: 'LOADED'; step: number };

function current(c: StageContext): Action | undefined {
  return c.actions[c.cursor];
}

/** Slots the current action still waits for. */
export function missing(c: StageContext): string[] {
  const a = current(c);
  return a ? needs(a, c.rank, c.stages, !c.plan?.predict).filter((s) => !c.inbox[s]) : [];
}

/** The per-step part of the context, as it is between steps. */
function noStep(): Pick<StageContext, 'plan' | 'actions' | 'cursor' | 'run' | 'inbox' | 'consumed' | 'held' | 'abortRequested' | 'updateGranted'> {
  return { plan: null, actions: [], cursor: 0, run: 0, inbox: {}, consumed: [], held: 0, abortRequested: false, updateGranted: false };
}

/** A plan that grants its UPDATE (to a lone stage), for a training step that applies one. */
function grantedByPlan(plan: StepPlan): boolean {
  return plan.granted && appliesUpdate(plan);
}

/** How many actions from the cursor on have every frame they need (each frame serves one action). */
export function runLength(c: StageContext): number {
  const train = !c.plan!.predict;
  const taken = new Set<string>();
  let n = 0;
  for (let i = c.cursor; i < c.actions.length; i++) {
    const slots = needs(c.actions[i]!, c.rank, c.stages, train);
    if (!slots.every((s) => c.inbox[s] !== undefined && !taken.has(s))) break;
    for (const s of slots) taken.add(s);
    n++;
  }
  return n;
}

/** The run's actions with their frames, for `startRun`. */
function runInputs({ context: c }: { context: StageContext }): ExecuteInput[] {
  const train = !c.plan!.predict;
  return c.actions.slice(c.cursor, c.cursor + c.run).map((action, i) => ({
    action,
    index: c.cursor + i,
    frames: needs(action, c.rank, c.stages, train).map((s) => c.inbox[s]!),
    plan: c.plan!,
  }));
}

const notProvided = (name: string) => () => {
  throw new Error(`stage machine: ${name} is not provided`);
};

type FrameEvent = Extract<StageEvent, { type: 'FRAME' }>;

/** What `reportConflict` gets: the step that fails, why, and the two frames (neither kept). */
function conflictParams({ context, event }: { context: StageContext; event: StageEvent }) {
  const frame = (event as FrameEvent).frame;
  const { held, error } = conflictOf(context, frame)!;
  return { step: frame.key.step, error, frames: [held, frame] as const };
}

/**
 * The transitions of a frame that conflicts with the one held for its slot: in the queued
 * step, that step is dropped; in the running one, the slot is emptied and takes no more. The
 * stage reports the step's failure (`reportConflict`); the scheduler aborts the step.
 */
const conflictingFrame = [
  { guard: 'conflictsQueued', actions: [{ type: 'reportConflict', params: conflictParams }, 'dropQueued'] },
  { guard: 'conflicts', actions: [{ type: 'reportConflict', params: conflictParams }, 'dropSlot'] },
] as const;

/** The transition that drops a frame `admitFrame` refuses, counting and reporting it. */
const refuseFrame = {
  guard: 'frameRefused',
  actions: [
    'countReject',
    {
      type: 'reportReject',
      params: ({ context, event }: { context: StageContext; event: StageEvent }) => {
        const frame = (event as Extract<StageEvent, { type: 'FRAME' }>).frame;
        return { error: admitFrame(context, frame)!, frame };
      },
    },
  ],
} as const;

type StepEvent = Extract<StageEvent, { type: 'STEP' }>;
type UpdateEvent = Extract<StageEvent, { type: 'UPDATE' }>;

/** A plan the stage refuses in state `state`: the refusal goes back in the reply to the plan's request. */
const refuseStep = (state: StateText) =>
  ({
    guard: { type: 'stepRefused', params: { state } },
    actions: {
      type: 'refuseControl',
      params: ({ context, event }: { context: StageContext; event: StageEvent }) => ({
        verb: 'step' as const,
        error: stepRefusal(context, (event as StepEvent).plan, state)!,
      }),
    },
  }) as const;

/** An UPDATE the stage refuses in state `state`: counted and reported like a refused frame. */
const refuseUpdate = (state: StateText) =>
  ({
    guard: { type: 'updateRefused', params: { state } },
    actions: [
      'countReject',
      {
        type: 'rejectUpdate',
        params: ({ context, event }: { context: StageContext; event: StageEvent }) => {
          const e = event as UpdateEvent;
          return { step: e.step, job: e.job ?? context.job, error: updateRefusal(context, e.step, e.job, state)! };
        },
      },
    ],
  }) as const;

/** An UPDATE while the step runs: the grant to the last stage still running, or refused. */
const grantWhileRunning = (state: StateText) => [refuseUpdate(state), { actions: 'takeGrant' }] as const;

/** The stage machine; hosts `provide` the actors and the report actions. */
export const stageMachine = setup({
  types: {
    context: {} as StageContext,
    events: {} as StageEvent,
    input: {} as StageInput,
  },
  actors: {
    boot: fromPromise<void, void>(async () => {}),
  },
  actions: {
    /** Apply the step's update; provide `updateRunner(apply)`, which answers UPDATE_DONE or UPDATE_FAILED. */
    startUpdate: (_, _params: { step: number }) => notProvided('startUpdate')(),
    /** Start the run's compute, its actions in order; provide `actionRunner(execute)`, which answers ACTION_DONE or ACTION_FAILED. */
    startRun: (_, _params: readonly ExecuteInput[]) => notProvided('startRun')(),
    /** Tell the scheduler a frame was refused. */
    reportReject: (_, _params: { error: TroupeError; frame: Frame }) => {},
    /** Tell the scheduler an UPDATE was refused (it is counted like a refused frame). */
    rejectUpdate: (_, _params: { step: number; job: string; error: TroupeError }) => {},
    /** Answer a control request (a plan, an abort) with the refusal: the requester reads it in the reply. */
    refuseControl: (_, _params: { verb: 'step' | 'abort'; error: TroupeError }) => {},
    /** The stage's own step is being aborted: release what waits outside the machine (device turns, an all-reduce). */
    abortStarts: (_, _params: { step: number }) => {},
    /** Tell the scheduler step `step` fails: a frame conflicted with the one held for its slot (neither is kept). */
    reportConflict: (_, _params: { step: number; error: TroupeError; frames: readonly [Frame, Frame] }) => {},
    /** Tell the scheduler the stage finished its action list. */
    reportDone: (_, _params: { step: number; peakHeld: number }) => {},
    /** Tell the scheduler the update is applied. */
    reportUpdated: (_, _params: { step: number }) => {},
    /** Tell the scheduler an action failed. */
    reportError: (_, _params: { step: number; failure: StageFailure }) => {},
    /** Drop the step's cached tensors and gradients. */
    resetCompute: () => {},
    /** Send the events the host held back (the stage is about to wait). */
    sendHeld: () => {},
    /** A step begins (from STEP, or queued): the host sets up its per-step state. */
    stepBegins: (_, _params: { plan: StepPlan; actions: readonly Action[] }) => {},
    stash: assign(({ context, event }) => {
      if (event.type !== 'FRAME') return {};
      const f = event.frame;
      const slot = slotOf(f.key.phase, f.key.microbatch);
      if (context.next && f.key.step === context.next.step) return { early: { ...context.early, [slot]: f } };
      return { inbox: { ...context.inbox, [slot]: f } };
    }),
    queueNext: assign({ next: ({ event }) => (event.type === 'STEP' ? event.plan : null), early: {} }),
    dropQueued: assign({ next: null, early: {} }),
    startQueued: assign(({ context }) => ({
      ...noStep(),
      step: context.next!.step,
      plan: context.next!,
      actions: parseStageActions(context.next!.actions, context.rank),
      inbox: context.early,
      updateGranted: grantedByPlan(context.next!),
      next: null,
      early: {},
      peakHeld: 0,
      error: null,
    })),
    countReject: assign({ rejected: ({ context }) => context.rejected + 1 }),
    takeGrant: assign({ updateGranted: true }),
    /** Empties the slot of a conflicting frame of the running step; later copies are refused as duplicates. */
    dropSlot: assign(({ context, event }) => {
      if (event.type !== 'FRAME') return {};
      const slot = slotOf(event.frame.key.phase, event.frame.key.microbatch);
      const { [slot]: _dropped, ...inbox } = context.inbox;
      return { inbox, consumed: [...context.consumed, slot] };
    }),
    /** Past the actions of the run that are done (the event's `count`); the run is over. */
    advance: assign(({ context, event }) => {
      const count = event.type === 'ACTION_DONE' || event.type === 'ACTION_FAILED' ? event.count : 0;
      const train = !context.plan!.predict;
      const training = !context.plan!.forwardOnly;
      const release = releasedBy(context.actions);
      const inbox = { ...context.inbox };
      const consumed = [...context.consumed];
      let { held, peakHeld } = context;
      for (let i = context.cursor; i < context.cursor + count; i++) {
        const a = context.actions[i]!;
        const used = needs(a, context.rank, context.stages, train);
        for (const s of used) delete inbox[s];
        consumed.push(...used);
        // A microbatch is held from its forward until the action that frees it: B, or W when the backward is split.
        held += a.kind === 'F' ? (training ? 1 : 0) : a.kind === release ? -1 : 0;
        peakHeld = Math.max(peakHeld, held);
      }
      return { inbox, consumed, cursor: context.cursor + count, run: 0, held, peakHeld };
    }),
    clearStep: assign(noStep),
  },
  guards: {
    stepRefused: ({ context, event }, { state }: { state: StateText }) => event.type === 'STEP' && stepRefusal(context, event.plan, state) !== null,
    updateRefused: ({ context, event }, { state }: { state: StateText }) =>
      event.type === 'UPDATE' && updateRefusal(context, event.step, event.job, state) !== null,
    abortRefused: ({ context, event }) => event.type === 'ABORT_STEP' && abortRefusal(context, event.step) !== null,
    /** An abort of the step queued behind this one. */
    abortsQueued: ({ context, event }) => event.type === 'ABORT_STEP' && context.next !== null && event.step === context.next.step,
    /** An abort of a step whose plan never came: nothing to abort. */
    abortsLater: ({ context, event }) => event.type === 'ABORT_STEP' && event.step > context.step,
    frameRefused: ({ context, event }) => event.type === 'FRAME' && admitFrame(context, event.frame) !== null,
    /** A frame of the running step whose slot holds one with other bytes. */
    conflicts: ({ context, event }) => event.type === 'FRAME' && conflictOf(context, event.frame) !== null,
    /** A frame of the queued step whose slot holds one with other bytes. */
    conflictsQueued: ({ context, event }) =>
      event.type === 'FRAME' && context.next !== null && event.frame.key.step === context.next.step && conflictOf(context, event.frame) !== null,
    aborting: ({ context }) => context.abortRequested,
    allDone: ({ context }) => context.cursor >= context.actions.length,
    forwardOnly: ({ context }) => context.plan?.forwardOnly ?? false,
    /** No UPDATE ends this step: evaluation, prediction, or a step whose gradients wait for the next (accumulation). */
    noUpdate: ({ context }) => context.plan !== null && !appliesUpdate(context.plan),
    ready: ({ context }) => missing(context).length === 0,
    /** The end of this step's update (not of another's). */
    thisUpdate: ({ context, event }) => (event.type === 'UPDATE_DONE' || event.type === 'UPDATE_FAILED') && event.step === context.step,
    updateGranted: ({ context }) => context.updateGranted,
    hasQueued: ({ context }) => context.next !== null,
    /** The end of the run the stage is computing (not of an aborted step's), with a count that fits it. */
    thisRun: ({ context, event }) =>
      (event.type === 'ACTION_DONE' || event.type === 'ACTION_FAILED') &&
      event.step === context.step &&
      event.index === context.cursor &&
      event.count >= 0 &&
      event.count <= context.run - (event.type === 'ACTION_FAILED' ? 1 : 0),
  },
}).createMachine({
  id: 'stage',
  context: ({ input }) => ({ ...input, ...noStep(), step: -1, next: null, early: {}, peakHeld: 0, rejected: 0, error: null }),
  initial: 'booting',
  on: {
    FRAME: [...conflictingFrame, refuseFrame, { actions: 'stash' }],
    STOP: { target: '.stopped', actions: 'resetCompute' },
    ABORT_STEP: [
      {
        guard: 'abortRefused',
        actions: {
          type: 'refuseControl',
          params: ({ context, event }) => ({
            verb: 'abort' as const,
            error: abortRefusal(context, event.step)!,
          }),
        },
      },
      { guard: 'abortsQueued', actions: 'dropQueued' },
      { guard: 'abortsLater' },
      { actions: [{ type: 'abortStarts', params: ({ context }) => ({ step: context.step }) }, raise({ type: 'ABORT' })] },
    ],
  },
  states: {
    booting: {
      on: { STEP: refuseStep('"booting"'), UPDATE: refuseUpdate('"booting"') },
      invoke: {
        src: 'boot',
        onDone: 'idle',
        onError: {
          target: 'failed',
          actions: assign({ error: ({ event }) => ({ key: 'boot', code: 'BOOT', message: String(event.error) }) }),
        },
      },
    },
    idle: {
      always: {
        guard: 'hasQueued',
        target: 'running',
        actions: ['startQueued', { type: 'stepBegins', params: ({ context }) => ({ plan: context.plan!, actions: context.actions }) }],
      },
      on: {
        LOADED: { actions: assign({ step: ({ event }) => event.step }) },
        UPDATE: refuseUpdate('"idle"'),
        STEP: [
          refuseStep('"idle"'),
          {
            target: 'running',
            actions: [
              assign(({ event, context }) => ({
                ...noStep(),
                step: event.plan.step,
                plan: event.plan,
                actions: parseStageActions(event.plan.actions, context.rank),
                updateGranted: grantedByPlan(event.plan),
                peakHeld: 0,
                error: null,
              })),
              { type: 'stepBegins', params: ({ context }) => ({ plan: context.plan!, actions: context.actions }) },
            ],
          },
        ],
      },
    },
    running: {
      initial: 'next',
      on: {
        ABORT: { target: 'idle', actions: ['resetCompute', 'clearStep', 'dropQueued'] },
        DROP_NEXT: { actions: 'dropQueued' },
      },
      states: {
        next: {
          always: [
            { guard: 'aborting', target: '#stage.idle', actions: ['resetCompute', 'clearStep', 'dropQueued'] },
            {
              guard: and(['allDone', 'updateGranted']),
              target: '#stage.updating',
              actions: { type: 'reportDone', params: ({ context }) => ({ step: context.step, peakHeld: context.peakHeld }) },
            },
            {
              guard: 'allDone',
              target: '#stage.awaitingUpdate',
              actions: { type: 'reportDone', params: ({ context }) => ({ step: context.step, peakHeld: context.peakHeld }) },
            },
            { guard: 'ready', target: 'computing' },
            { target: 'waiting' },
          ],
        },
        waiting: {
          // About to wait: the events of the actions just done go now.
          entry: 'sendHeld',
          on: {
            // A plan while the step runs is queued, to start after this step's end.
            STEP: [refuseStep('{"running":"waiting"}'), { actions: 'queueNext' }],
            UPDATE: grantWhileRunning('{"running":"waiting"}'),
            FRAME: [...conflictingFrame, refuseFrame, { actions: 'stash', target: 'next' }],
          },
        },
        computing: {
          entry: [assign({ run: ({ context }) => runLength(context) }), { type: 'startRun', params: runInputs }],
          on: {
            STEP: [refuseStep('{"running":"computing"}'), { actions: 'queueNext' }],
            UPDATE: grantWhileRunning('{"running":"computing"}'),
            ABORT: { actions: assign({ abortRequested: true }) },
            ACTION_DONE: { guard: 'thisRun', target: 'next', actions: 'advance' },
            ACTION_FAILED: [
              // An ABORT came while computing: the step is dropped anyway, so end idle, not failed.
              { guard: and(['thisRun', 'aborting']), target: '#stage.idle', actions: ['resetCompute', 'clearStep', 'dropQueued'] },
              {
                guard: 'thisRun',
                target: '#stage.failed',
                actions: [
                  // Past the actions done before the failure: the error names the one that failed.
                  'advance',
                  assign({
                    error: ({ context, event }) => failureOf(`${context.job}/${context.step}/${formatAction(current(context)!)}`, event.error),
                  }),
                  { type: 'reportError', params: ({ context }) => ({ step: context.step, failure: context.error! }) },
                ],
              },
            ],
          },
        },
      },
    },
    awaitingUpdate: {
      always: { guard: 'noUpdate', target: 'idle', actions: 'clearStep' },
      on: {
        UPDATE: [refuseUpdate('"awaitingUpdate"'), { target: 'updating' }],
        STEP: [refuseStep('"awaitingUpdate"'), { actions: 'queueNext' }],
        DROP_NEXT: { actions: 'dropQueued' },
        ABORT: { target: 'idle', actions: ['resetCompute', 'clearStep', 'dropQueued'] },
      },
    },
    updating: {
      // An update is not interrupted; an ABORT during it is honoured if the update fails.
      // Like a run, an event pair rather than an invoked actor: no child actor per step.
      entry: { type: 'startUpdate', params: ({ context }) => ({ step: context.step }) },
      on: {
        ABORT: { actions: assign({ abortRequested: true }) },
        STEP: [refuseStep('"updating"'), { actions: 'queueNext' }],
        UPDATE: refuseUpdate('"updating"'),
        DROP_NEXT: { actions: 'dropQueued' },
        UPDATE_DONE: {
          guard: 'thisUpdate',
          target: 'idle',
          actions: [{ type: 'reportUpdated', params: ({ context }) => ({ step: context.step }) }, 'clearStep'],
        },
        UPDATE_FAILED: [
          { guard: and(['thisUpdate', 'aborting']), target: 'idle', actions: ['resetCompute', 'clearStep', 'dropQueued'] },
          {
            guard: 'thisUpdate',
            target: 'failed',
            actions: [
              assign({
                error: ({ context, event }) => failureOf(`${context.job}/${context.step}/UPDATE`, event.error),
              }),
              { type: 'reportError', params: ({ context }) => ({ step: context.step, failure: context.error! }) },
            ],
          },
        ],
      },
    },
    failed: {
      on: {
        ABORT: { target: 'idle', actions: ['resetCompute', 'clearStep', 'dropQueued'] },
        DROP_NEXT: { actions: 'dropQueued' },
        STEP: refuseStep('"failed"'),
        UPDATE: refuseUpdate('"failed"'),
      },
    },
    stopped: { type: 'final' },
  },
});

function failureOf(key: string, err: unknown): StageFailure {
  const e = err as { code?: unknown; message?: unknown };
  return { key, code: typeof e?.code === 'string' ? e.code : 'COMPUTE', message: typeof e?.message === 'string' ? e.message : String(err) };
}

/**
 * The `startRun` implementation: runs `execute` for each action of the run in order, each one
 * turn of the event loop after the last (so frames, plans and ABORTs are read in between), and
 * tells the stage how the run ended. An ABORT stops the run between two actions. (A run is an
 * event pair, not an invoked actor: no child actor is made and stopped per run.) `deliver`,
 * when given, is handed the ending's send to run (the host times it).
 *
 * @example
 * stageMachine.provide({ actions: { startRun: actionRunner((input) => compute(input)) } })
 */
export function actionRunner(execute: (input: ExecuteInput) => Promise<void>, deliver: (send: () => void) => void = (send) => send()) {
  return ({ self }: { self: AnyActorRef }, run: readonly ExecuteInput[]): void => {
    const step = run[0]!.plan.step;
    const index = run[0]!.index;
    const snapshot = () => self.getSnapshot() as { status: string; context: StageContext };
    void (async () => {
      let count = 0;
      for (const input of run) {
        // Through the event loop, not a microtask: a stage whose inputs are all in would
        // otherwise run its whole list without reading its socket, and a control request (the
        // next step's plan, an ABORT) would wait for the step's end.
        await new Promise<void>((resolve) => setImmediate(resolve));
        // A stage stopped meanwhile has nobody to tell.
        if (snapshot().status !== 'active') return;
        if (snapshot().context.abortRequested) break;
        try {
          await execute(input);
        } catch (error: unknown) {
          if (snapshot().status === 'active') deliver(() => self.send({ type: 'ACTION_FAILED', step, index, count, error }));
          return;
        }
        count++;
      }
      if (snapshot().status === 'active') deliver(() => self.send({ type: 'ACTION_DONE', step, index, count }));
    })();
  };
}

/**
 * The `startUpdate` implementation: applies the update with `apply` and tells the stage how it
 * ended. A synchronous `apply` ends within the event that entered `updating` (the answer waits
 * in the actor's mailbox until that event is handled); a promise ends when it settles.
 *
 * @example
 * stageMachine.provide({ actions: { startUpdate: updateRunner((step) => optimizer.apply()) } })
 */
export function updateRunner(apply: (step: number) => Promise<void> | void) {
  return ({ self }: { self: AnyActorRef }, { step }: { step: number }): void => {
    const tell = (event: StageEvent) => {
      if ((self.getSnapshot() as Snapshot<unknown>).status === 'active') self.send(event);
    };
    let pending: Promise<void> | void;
    try {
      pending = apply(step);
    } catch (error: unknown) {
      return tell({ type: 'UPDATE_FAILED', step, error });
    }
    if (!pending) return tell({ type: 'UPDATE_DONE', step });
    pending.then(
      () => tell({ type: 'UPDATE_DONE', step }),
      (error: unknown) => tell({ type: 'UPDATE_FAILED', step, error }),
    );
  };
}
