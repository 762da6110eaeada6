/** `troupe/pool`: task pools: a queue group of workers answering tasks, and the caller's side. */
export { Bus } from '../transport/bus.js';
export { Pool } from './pool.js';
export type { PoolOptions, TaskAnswer, TaskSettled } from './pool.js';
export { PoolWorker } from './poolWorker.js';
export type { Task, PoolWorkerOptions } from './poolWorker.js';
export { runPoolWorker } from './runPoolWorker.js';
export type { PoolWorkerProcessOptions } from './runPoolWorker.js';
export { PoolTaskError, PoolValueError } from '../errors.js';
export type { PoolTaskReason } from '../errors.js';
