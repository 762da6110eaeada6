/**
 * Troupe's public API: train a model on a pipeline (createPipeline), run a job on a fleet of
 * processes (defineJob, runJob), start NATS, plan and simulate schedules, and the errors.
 * Those who build on the internals import the subpath entries: `troupe/actors`,
 * `troupe/protocol`, `troupe/transport`, `troupe/compute`, `troupe/runtime`,
 * `troupe/schedule`, `troupe/fleet`, `troupe/pool`, `troupe/serve`, `troupe/data`.
 */
export { createPipeline } from './runtime/pipeline.js';
export type { Pipeline, PipelineOptions, PipelineActors, PipelineReplicaActors } from './runtime/pipeline.js';
export type { StepResult } from './runtime/stepRunner.js';
export type { StageStats } from './runtime/stageHost.js';
export type { BusOptions } from './transport/bus.js';
export { selectBackend } from './compute/backend.js';
export type { BackendChoice, BackendName, BackendOptions } from './compute/backend.js';
export type { LossFn, LossSpec } from './compute/loss.js';
export type { OptimizerSpec, OptimizerDescription } from './compute/optimizer.js';
export type { StageSpec, StagePartition } from './compute/partition.js';
export type { FeedMode } from './schedule/constraint.js';

export { defineJob } from './fleet/jobConfig.js';
export type { JobConfig, JobData, Examples } from './fleet/jobConfig.js';
export { runJob } from './fleet/runJob.js';
export type { RunJobOptions, RunJobResult } from './fleet/runJob.js';
export { startNatsServer } from './fleet/natsServer.js';
export { loadModel } from './fleet/loadModel.js';
export type { NatsServer, NatsServerOptions } from './fleet/natsServer.js';

export { buildSchedule, ScheduleName } from './schedule/schedules.js';
export type { Action, Schedule } from './schedule/action.js';
export type { DeviceSchedule, PlacedSchedule } from './schedule/interleaved.js';
export { simulate } from './schedule/simulate.js';
export type { Simulation, ActionCosts } from './schedule/simulate.js';

export {
  TroupeError,
  ConfigError,
  PartitionError,
  ScheduleError,
  ShapeError,
  StageError,
  StepTimeoutError,
  StateError,
  TransportError,
  FrameError,
  StaleStepError,
  DuplicateKeyError,
  ConflictingFrameError,
  ForgedFrameError,
  UnexpectedFrameError,
  CheckpointError,
  InterruptedError,
  UsageError,
  PoolTaskError,
  PoolValueError,
  ServeError,
} from './errors.js';
