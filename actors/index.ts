/**
 * `troupe/actors`: Troupe's state machines, the events they take, and the helpers a host
 * needs to run them with its own implementations (`stageMachine.provide({ actions: {
 * startRun: actionRunner(execute), startUpdate: updateRunner(apply), ... } })`).
 */
export { stageMachine, actionRunner, updateRunner, missing, runLength } from './stageMachine.js';
export type { StageInput, StageContext, StageEvent, ExecuteInput, StageFailure } from './stageMachine.js';
export { schedulerMachine, freesForFeed } from './schedulerMachine.js';
export { jobMachine } from './jobMachine.js';
export type { JobInput, JobContext, JobEvent, JobError, WorkerLoss, RecoverInput, StepInput } from './jobMachine.js';
export type { StepRequest, StepOutcome, StepFailure, SchedulerContext, SchedulerEvent, SchedulerInput, SilentStage } from './schedulerMachine.js';
export { livenessProbes } from './liveness.js';
export type { LivenessInput, LivenessEvent, StepProgress } from './liveness.js';
export { stepGrid } from './stepGrid.js';
export { admitFrame, admitStep, splitInput } from './admitFrame.js';
export type { AdmitContext } from './admitFrame.js';
export { poolWorkerMachine } from './poolWorkerMachine.js';
export type { PoolWorkerContext, PoolWorkerEvent } from './poolWorkerMachine.js';
export { runtimeMachine } from './runtimeMachine.js';
export type { RuntimeContext, RuntimeEvent } from './runtimeMachine.js';
// What the machines' inputs and events carry.
export type { Frame, WireTensor } from '../src/protocol/frame.js';
export type { Key } from '../src/protocol/key.js';
export type { StepPlan } from '../src/protocol/messages.js';
export type { Action } from '../src/schedule/action.js';
export type { CutTensor } from '../src/compute/partition.js';
