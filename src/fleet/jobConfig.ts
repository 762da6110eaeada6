/** Job configs: a module exporting what to train and how, validated before any process starts. */
import { basename } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { ConfigError } from '../errors.js';
import { importDefault } from '../importDefault.js';
import type { LossSpec } from '../compute/loss.js';
import type { OptimizerDescription } from '../compute/optimizer.js';
import type { StageSpec } from '../compute/partition.js';
import { isScheduleName, ScheduleName } from '../schedule/schedules.js';
import { isFeedMode, type FeedMode } from '../schedule/constraint.js';

/** Labelled examples: inputs and one-hot (or other) targets with the same first dimension. */
export interface Examples {
  readonly x: tf.Tensor;
  readonly y: tf.Tensor;
}

/** A job's data: training examples and, optionally, held-out ones evaluated at the end. */
export interface JobData {
  readonly train: Examples;
  readonly test?: Examples;
}

/**
 * What a job config module exports (as `default`). Every process of the fleet loads the
 * same module: the driver for data and the schedule, each worker for its stage's layers,
 * optimizer and loss.
 *
 * @example
 * export default defineJob({
 *   model: () => buildMlp(),
 *   data: () => loadDigits(),
 *   stages: 2, microbatches: 4, schedule: '1f1b',
 *   optimizer: { className: 'Adam', config: { learningRate: 1e-3 } },
 *   loss: 'categoricalCrossentropy', metric: 'accuracy',
 *   epochs: 3, batchSize: 64,
 * });
 */
export interface JobConfig {
  /** Builds the model. Workers build it too, then receive the driver's weights. */
  readonly model: () => tf.LayersModel | Promise<tf.LayersModel>;
  /** Loads the data (driver only). */
  readonly data: () => JobData | Promise<JobData>;
  readonly stages: StageSpec;
  readonly microbatches: number;
  /** `'1f1b'` (default) or `'gpipe'`. */
  readonly schedule?: string;
  /** A description (`{ className: 'Adam', config: {...} }`) or a factory; each stage makes its own. */
  readonly optimizer: OptimizerDescription | (() => tf.Optimizer);
  readonly loss: LossSpec;
  readonly metric?: LossSpec;
  readonly epochs: number;
  readonly batchSize: number;
  /** Job id in subjects (default: the config file's name). */
  readonly job?: string;
  /** Milliseconds a step may take (default 120 s). */
  readonly stepTimeoutMs?: number;
  /** Activation checkpointing: stages keep only their inputs and recompute the forward at backward time (default false). */
  readonly recompute?: boolean;
  /** A stage answering no liveness probe this long during a step fails it as STAGE_SILENT (default 30 s; more than the longest action). */
  readonly livenessTimeoutMs?: number;
  /** A step that ends no action for this long fails as STEP_STALLED with its action grid (default: off; the step timeout still applies). */
  readonly stallTimeoutMs?: number;
  /** Stages per worker process for the interleaved and looped-BFS schedules (default 1). */
  readonly virtualStages?: number;
  /** Data-parallel copies of the pipeline (default 1); each step's batch is split over them. */
  readonly replicas?: number;
  /** Bytes each stage may hold (weights, optimizer state, activations): the driver picks a cut that fits, or names the stage that cannot. */
  readonly memoryBudget?: number;
  /** A stage count is cut by parameters (default) or by the layers' measured time (the driver measures, the workers get its cuts). */
  readonly balance?: 'params' | 'time';
  /** `'step'` (default): stage 0 gets every input of a step as the step begins; `'bounded'`: the schedule's bound plus one, then one per released microbatch (FeedMode). */
  readonly feed?: FeedMode;
}

/** Types a job config (identity at run time). */
export function defineJob(c: JobConfig): JobConfig {
  return c;
}

const FIELDS = new Set(['model', 'data', 'stages', 'microbatches', 'schedule', 'optimizer', 'loss', 'metric', 'epochs', 'batchSize', 'job', 'stepTimeoutMs', 'recompute', 'virtualStages', 'balance', 'livenessTimeoutMs', 'replicas', 'stallTimeoutMs', 'memoryBudget', 'feed']);

function positiveInt(where: string, field: string, v: unknown): void {
  if (!Number.isInteger(v) || (v as number) < 1) throw new ConfigError(`${where}: field "${field}" must be a positive integer, got ${JSON.stringify(v)}`);
}

/** Checks a config object field by field; the error names the file and the field. */
export function validateJobConfig(c: unknown, where: string): JobConfig {
  if (typeof c !== 'object' || c === null) throw new ConfigError(`${where}: the default export must be a job config object (use defineJob)`);
  const o = c as Record<string, unknown>;
  for (const k of Object.keys(o)) if (!FIELDS.has(k)) throw new ConfigError(`${where}: unknown field "${k}" (known: ${[...FIELDS].join(', ')})`);
  if (typeof o['model'] !== 'function') throw new ConfigError(`${where}: field "model" must be a function returning a tf.LayersModel`);
  if (typeof o['data'] !== 'function') throw new ConfigError(`${where}: field "data" must be a function returning { train: { x, y }, test? }`);
  const stages = o['stages'];
  if (Array.isArray(stages)) {
    if (!stages.every((b) => typeof b === 'string' || Number.isInteger(b))) throw new ConfigError(`${where}: field "stages" boundaries must be layer names or indices`);
  } else positiveInt(where, 'stages', stages);
  positiveInt(where, 'microbatches', o['microbatches']);
  positiveInt(where, 'epochs', o['epochs']);
  positiveInt(where, 'batchSize', o['batchSize']);
  if (o['schedule'] !== undefined && (typeof o['schedule'] !== 'string' || !isScheduleName(o['schedule']))) {
    throw new ConfigError(`${where}: field "schedule" must be one of ${Object.values(ScheduleName).join(', ')}, got ${JSON.stringify(o['schedule'])}`);
  }
  const opt = o['optimizer'] as { className?: unknown } | undefined;
  if (typeof opt !== 'function' && !(opt && typeof opt === 'object' && typeof opt.className === 'string')) {
    throw new ConfigError(`${where}: field "optimizer" must be { className, config } or a function returning a tf.Optimizer`);
  }
  if (typeof o['loss'] !== 'string' && typeof o['loss'] !== 'function') throw new ConfigError(`${where}: field "loss" must be a tfjs loss name or a function`);
  if (o['metric'] !== undefined && typeof o['metric'] !== 'string' && typeof o['metric'] !== 'function') throw new ConfigError(`${where}: field "metric" must be a tfjs metric name or a function`);
  if (o['job'] !== undefined && typeof o['job'] !== 'string') throw new ConfigError(`${where}: field "job" must be a string`);
  if (o['virtualStages'] !== undefined) positiveInt(where, 'virtualStages', o['virtualStages']);
  if (o['replicas'] !== undefined) positiveInt(where, 'replicas', o['replicas']);
  if (o['memoryBudget'] !== undefined && !(typeof o['memoryBudget'] === 'number' && o['memoryBudget'] > 0)) throw new ConfigError(`${where}: field "memoryBudget" must be a positive number of bytes`);
  if (o['stallTimeoutMs'] !== undefined && !(typeof o['stallTimeoutMs'] === 'number' && o['stallTimeoutMs'] > 0)) {
    throw new ConfigError(`${where}: field "stallTimeoutMs" must be a positive number`);
  }
  if (o['livenessTimeoutMs'] !== undefined && !(typeof o['livenessTimeoutMs'] === 'number' && o['livenessTimeoutMs'] > 0)) {
    throw new ConfigError(`${where}: field "livenessTimeoutMs" must be a positive number`);
  }
  if (o['balance'] !== undefined && o['balance'] !== 'params' && o['balance'] !== 'time') {
    throw new ConfigError(`${where}: field "balance" must be "params" or "time", got ${JSON.stringify(o['balance'])}`);
  }
  if (o['feed'] !== undefined && !isFeedMode(o['feed'])) {
    throw new ConfigError(`${where}: field "feed" must be "step" or "bounded", got ${JSON.stringify(o['feed'])}`);
  }
  if (o['recompute'] !== undefined && typeof o['recompute'] !== 'boolean') {
    throw new ConfigError(`${where}: field "recompute" must be true or false, got ${JSON.stringify(o['recompute'])}`);
  }
  if (o['stepTimeoutMs'] !== undefined && !(typeof o['stepTimeoutMs'] === 'number' && o['stepTimeoutMs'] > 0)) {
    throw new ConfigError(`${where}: field "stepTimeoutMs" must be a positive number`);
  }
  return o as unknown as JobConfig;
}

/** Imports and validates a job config module (TypeScript or JavaScript). */
export async function loadJobConfig(path: string): Promise<JobConfig> {
  return validateJobConfig(await importDefault(path, 'job config'), `job config ${path}`);
}

/** The job id of a config: its `job` field, else the file name without extension. */
export function jobIdOf(config: JobConfig, path: string): string {
  return config.job ?? basename(path).replace(/\.[^.]*$/, '').replace(/\.job$/, '').replace(/[^A-Za-z0-9_-]/g, '-');
}
