/** Job configs: a module exporting what to train and how, validated before any process starts. */
import { basename } from 'node:path';
import type * as tf from '@tensorflow/tfjs';
import * as v from 'valibot';
import { ConfigError } from '../errors.js';
import { importDefault } from '../importDefault.js';
import type { LossSpec } from '../compute/loss.js';
import type { OptimizerDescription } from '../compute/optimizer.js';
import { isScheduleName, ScheduleName } from '../schedule/schedules.js';
import type { FeedMode } from '../schedule/constraint.js';

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

const show = (v: unknown): string => (typeof v === 'function' ? 'a function' : (JSON.stringify(v) ?? String(v)));
/** An issue message for `what`, naming the value that was given. */
const must = (what: string) => (issue: { readonly input: unknown }) => `must be ${what}, got ${show(issue.input)}`;
const fn = <T>(what: string) => v.custom<T>((x) => typeof x === 'function', must(what));
const positiveInt = () => v.pipe(v.number(must('a positive integer')), v.integer(must('a positive integer')), v.minValue(1, must('a positive integer')));
const positiveNumber = (what = 'a positive number') => v.pipe(v.number(must(what)), v.gtValue(0, must(what)));
const oneOf = <const T extends readonly string[]>(options: T) =>
  v.picklist(options, must(options.length === 2 ? `"${options[0]}" or "${options[1]}"` : `one of ${options.join(', ')}`));
const mustSchedule = must(`one of ${Object.values(ScheduleName).join(', ')}`);
const boundary = v.union([v.string(), v.pipe(v.number(), v.integer())], must('a layer name or index'));

/**
 * What a job config module exports (as `default`), as a schema: the JobConfig type is
 * inferred from it, and loadJobConfig checks a module against it. Every process of the fleet
 * loads the same module: the driver for data and the schedule, each worker for its stage's
 * layers, optimizer and loss.
 */
export const JobConfigSchema = v.strictObject(
  {
    /** Builds the model. Workers build it too, then receive the driver's weights. */
    model: fn<() => tf.LayersModel | Promise<tf.LayersModel>>('a function returning a tf.LayersModel'),
    /** Loads the data (driver only). */
    data: fn<() => JobData | Promise<JobData>>('a function returning { train: { x, y }, test? }'),
    /** A stage count (cut by parameters, or by time with `balance: 'time'`), or the first layer (name or index) of stages 1..p-1. */
    stages: v.union([positiveInt(), v.array(boundary)], (issue) =>
      Array.isArray(issue.input)
        ? `boundaries must be layer names or indices, got ${show(issue.input)}`
        : must('a positive integer or an array of layer names or indices')(issue),
    ),
    microbatches: positiveInt(),
    /**
     * `'1f1b'` (default), `'gpipe'`, `'zbh1'`, `'interleaved'` or `'loopedbfs'` (typed as a string, like createPipeline's, so it
     * may come from the environment).
     */
    schedule: v.optional(v.pipe(v.string(mustSchedule), v.check(isScheduleName, mustSchedule))),
    /** A description (`{ className: 'Adam', config: {...} }`) or a factory; each stage makes its own. */
    optimizer: v.custom<OptimizerDescription | (() => tf.Optimizer)>(
      (x) => typeof x === 'function' || (typeof x === 'object' && x !== null && typeof (x as { className?: unknown }).className === 'string'),
      must('{ className, config } or a function returning a tf.Optimizer'),
    ),
    /** A tfjs loss name or a function of (labels, predictions). */
    loss: v.custom<LossSpec>((x) => typeof x === 'string' || typeof x === 'function', must('a tfjs loss name or a function')),
    /** A tfjs metric name (`'accuracy'`) or a function of (labels, predictions). */
    metric: v.optional(v.custom<LossSpec>((x) => typeof x === 'string' || typeof x === 'function', must('a tfjs metric name or a function'))),
    epochs: positiveInt(),
    batchSize: positiveInt(),
    /** Job id in subjects (default: the config file's name). */
    job: v.optional(v.string(must('a string'))),
    /** Milliseconds a step may take (default 120 s). */
    stepTimeoutMs: v.optional(positiveNumber()),
    /** Activation checkpointing: stages keep only their inputs and recompute the forward at backward time (default false). */
    recompute: v.optional(v.boolean(must('true or false'))),
    /** A stage answering no liveness probe this long during a step fails it as STAGE_SILENT (default 30 s; more than the longest action). */
    livenessTimeoutMs: v.optional(positiveNumber()),
    /** A step that ends no action for this long fails as STEP_STALLED with its action grid (default: off; the step timeout still applies). */
    stallTimeoutMs: v.optional(positiveNumber()),
    /** Stages per worker process for the interleaved and looped-BFS schedules (default 1). */
    virtualStages: v.optional(positiveInt()),
    /** Data-parallel copies of the pipeline (default 1); each step's batch is split over them. */
    replicas: v.optional(positiveInt()),
    /** Bytes each stage may hold (weights, optimizer state, activations): the driver picks a cut that fits, or names the stage that cannot. */
    memoryBudget: v.optional(positiveNumber('a positive number of bytes')),
    /** A stage count is cut by parameters (default) or by the layers' measured time (the driver measures, the workers get its cuts). */
    balance: v.optional(oneOf(['params', 'time'] as const)),
    /**
     * `'step'` (default): stage 0 gets every input of a step as the step begins; `'bounded'`: the schedule's bound plus one, then
     * one per released microbatch (FeedMode).
     */
    feed: v.optional(oneOf(['step', 'bounded'] as const satisfies readonly FeedMode[])),
  },
  (issue) => (issue.expected === 'never' ? 'unknown field' : 'the default export must be a job config object (use defineJob)'),
);

/**
 * A job config: what to train and how.
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
export type JobConfig = Readonly<v.InferOutput<typeof JobConfigSchema>>;

/** Types a job config (identity at run time). */
export function defineJob(c: JobConfig): JobConfig {
  return c;
}

/** Checks a config object against JobConfigSchema; the error names the file and the first wrong field. */
export function validateJobConfig(c: unknown, where: string): JobConfig {
  const r = v.safeParse(JobConfigSchema, c, { abortEarly: true });
  if (r.success) return c as JobConfig;
  const issue = r.issues[0];
  // A top-level field of the config object: a string key.
  const field = issue.path?.[0]?.key as string | undefined;
  if (field === undefined) throw new ConfigError(`${where}: ${issue.message}`);
  const known = JobConfigSchema.entries;
  if (issue.type === 'strict_object' && issue.expected === 'never')
    throw new ConfigError(`${where}: unknown field "${String(field)}" (known: ${Object.keys(known).join(', ')})`);
  if (issue.type === 'strict_object') {
    // A required field left out: the field's own message, for the undefined it amounts to.
    const own = v.safeParse(known[field as keyof typeof known], undefined);
    throw new ConfigError(`${where}: field "${String(field)}" ${own.success ? 'is missing' : own.issues[0].message}`);
  }
  throw new ConfigError(`${where}: field "${String(field)}" ${issue.message}`);
}

/** Imports and validates a job config module (TypeScript or JavaScript). */
export async function loadJobConfig(path: string): Promise<JobConfig> {
  return validateJobConfig(await importDefault(path, 'job config'), `job config ${path}`);
}

/** The job id of a config: its `job` field, else the file name without extension. */
export function jobIdOf(config: JobConfig, path: string): string {
  return (
    config.job ??
    basename(path)
      .replace(/\.[^.]*$/, '')
      .replace(/\.job$/, '')
      .replace(/[^A-Za-z0-9_-]/g, '-')
  );
}
