/**
 * Why a stage refuses a step plan, an UPDATE or an abort in the state it is in: the stage
 * machine's judges, as pure functions (the machine asks them in its guards and reports what
 * they say; no host judges again).
 */
import { FrameError, StaleStepError, StateError, TroupeError, UnexpectedFrameError, messageOf } from '../src/errors.js';
import { appliesUpdate, type StepPlan } from '../src/protocol/messages.js';
import { parseStageActions } from '../src/schedule/action.js';
import { microbatchSizes } from '../src/schedule/microbatch.js';
import type { StageContext } from './stageMachine.js';

/** A stage state as refusals name it: the JSON of the machine's state value (`"idle"`, `{"running":"waiting"}`). */
export type StateText = string;

/** The device positions of a plan's `order` field: empty, or one non-negative integer per action. */
export function parseOrder(order: string, actions: number, rank: number): number[] {
  if (order.trim() === '') return [];
  const pos = order.trim().split(/\s+/).map(Number);
  if (pos.length !== actions || pos.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new FrameError(`stage ${rank}: plan order "${order}" must give one device position per action (${actions})`);
  }
  return pos;
}

/** What is wrong with a plan itself, whatever the stage's state (null: nothing). */
function planError(plan: StepPlan, rank: number, sharesDevice: boolean): TroupeError | null {
  try {
    microbatchSizes(plan.batchSize, plan.microbatches);
    if (!Number.isInteger(plan.totalBatch) || plan.totalBatch < plan.batchSize)
      throw new FrameError(`plan totalBatch ${plan.totalBatch} must be an integer of at least batchSize ${plan.batchSize}`);
    if (plan.granted && !appliesUpdate(plan))
      throw new FrameError(`plan of step ${plan.step} grants an UPDATE, but the step applies none (evaluation, prediction or accumulation)`);
    const actions = parseStageActions(plan.actions, rank);
    const positions = parseOrder(plan.order, actions.length, rank);
    if (positions.length > 0 && !sharesDevice) throw new StateError(`stage ${rank} got a device order but shares no device`);
    return null;
  } catch (err) {
    return err instanceof TroupeError ? err : new StateError(messageOf(err));
  }
}

/**
 * Why the stage refuses plan `plan` in state `state` (null: it takes it). Idle, it starts
 * the plan; in a step (running, awaiting or applying its update) it queues it, one at most;
 * booting or failed, it takes none.
 */
export function stepRefusal(c: StageContext, plan: StepPlan, state: StateText): TroupeError | null {
  const inStep = state.startsWith('{"running"') || state === '"awaitingUpdate"' || state === '"updating"';
  if (state !== '"idle"' && !inStep) return new StateError(`stage ${c.rank} cannot start step ${plan.step}: it is ${state}`);
  if (plan.step <= c.step) return new StaleStepError(`step ${plan.step} is not after step ${c.step}`);
  if (inStep && c.next) return new StateError(`stage ${c.rank} cannot queue step ${plan.step}: step ${c.next.step} already waits behind step ${c.step}`);
  return planError(plan, c.rank, c.sharesDevice ?? false);
}

/**
 * Why the stage refuses an UPDATE of step `step` (for job `job`, when the frame named one) in
 * state `state` (null: it takes it). Awaiting its update, it applies it; running the step, it
 * takes it as the early grant to the last stage still running, once, and only for a step
 * that applies an update.
 */
export function updateRefusal(c: StageContext, step: number, job: string | undefined, state: StateText): TroupeError | null {
  if (job !== undefined && job !== c.job) return new UnexpectedFrameError(`UPDATE for job ${job}, not ${c.job}`);
  if (step < c.step) return new StaleStepError(`UPDATE for step ${step}, which is over (now ${c.step})`);
  const running = state.startsWith('{"running"') && step === c.step && c.plan !== null;
  if (running && c.updateGranted)
    return new UnexpectedFrameError(c.plan!.granted ? `UPDATE for step ${step}, whose plan granted it already` : `UPDATE for step ${step} came twice`);
  if (running && !appliesUpdate(c.plan!))
    return new UnexpectedFrameError(`UPDATE for step ${step}, which applies no update (evaluation, prediction or accumulation)`);
  if (!running && (state !== '"awaitingUpdate"' || step !== c.step))
    return new UnexpectedFrameError(`UPDATE for step ${step} while stage ${c.rank} is ${state}`);
  return null;
}

/** Why the stage refuses an abort of step `step`: a step that is over (an abort of a later step has nothing to abort, or drops the queued one). */
export function abortRefusal(c: StageContext, step: number): TroupeError | null {
  return step < c.step ? new StaleStepError(`abort of step ${step}, which is over (now ${c.step})`) : null;
}
