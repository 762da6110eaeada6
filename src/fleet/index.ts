/**
 * `troupe/fleet`: jobs on worker processes: job configs, the driver (runJob), a worker,
 * checkpoints, saved models, nats-server and a local NATS cluster, the command line.
 */
export { defineJob, loadJobConfig, validateJobConfig } from './jobConfig.js';
export type { JobConfig, JobData, Examples } from './jobConfig.js';
export { runJob } from './runJob.js';
export { summaryOf } from './summary.js';
export type { RunSummary } from './summary.js';
export type { RunJobOptions, RunJobResult } from './runJob.js';
export { runWorker } from './worker.js';
export type { WorkerOptions } from './worker.js';
export { saveCheckpoint, loadCheckpoint, hasCheckpoint } from './checkpoint.js';
export type { Checkpoint, CheckpointMeta } from './checkpoint.js';
export { describeCheckpoint, exportCheckpoint } from './checkpointTools.js';
export { saveModel } from './saveModel.js';
export { loadModel } from './loadModel.js';
export { startNatsServer, findNatsServer, DEFAULT_NATS_CONF } from './natsServer.js';
export type { NatsServer, NatsServerOptions } from './natsServer.js';
export { startNatsCluster, NATS_CLUSTER_CONF } from './natsCluster.js';
export type { NatsCluster } from './natsCluster.js';
export { Supervisor, TROUPE_BIN } from './supervisor.js';
export type { WorkerExit } from './supervisor.js';
export { main } from './cli.js';
