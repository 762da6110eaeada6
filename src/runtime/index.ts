/**
 * `troupe/runtime`: the hosts that bind Troupe's actors to NATS (a stage, the scheduler), the
 * step runner, device turns, the all-reduce of data-parallel replicas, and stage state transfer.
 */
export { createPipeline } from './pipeline.js';
export type { Pipeline, PipelineOptions, PipelineActors, PipelineReplicaActors } from './pipeline.js';
export { StageHost } from './stageHost.js';
export type { StageHostOptions, StageStats, StageActor } from './stageHost.js';
export { SchedulerHost } from './schedulerHost.js';
export type { SchedulerHostOptions, StepWork, RunOutcome, SchedulerActor } from './schedulerHost.js';
export { StepRunner } from './stepRunner.js';
export type { StepResult, StepExtra, StepRunnerOptions } from './stepRunner.js';
export { DeviceTurn } from './deviceTurn.js';
export { AllReduce } from './allReduce.js';
export type { AllReduceOptions } from './allReduce.js';
export { runReplicas } from './replicas.js';
export { dumpStates, loadStates, idleStages } from './stageStates.js';
export { plan } from './plan.js';
export type { Plan, PlanOptions, PlanField } from './plan.js';
export { startStages } from './startStages.js';
export type { StageSetup, StartedStages } from './startStages.js';
export type { RankState } from './stageStates.js';
