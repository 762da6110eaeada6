import type * as v from 'valibot';
import { describe, expect, expectTypeOf, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { JobConfigSchema, jobIdOf, validateJobConfig, type JobConfig } from '../../src/fleet/jobConfig.js';

const good = {
  model: () => null,
  data: () => null,
  stages: 2,
  microbatches: 4,
  schedule: '1f1b',
  optimizer: { className: 'Adam', config: { learningRate: 1e-3 } },
  loss: 'categoricalCrossentropy',
  epochs: 1,
  batchSize: 8,
};

describe('validateJobConfig', () => {
  it('accepts a complete config', () => {
    expect(validateJobConfig(good, 'cfg')).toBe(good);
    expect(validateJobConfig({ ...good, stages: ['dense_2'], optimizer: () => null, metric: 'accuracy' }, 'cfg')).toBeTruthy();
  });

  it.each([
    [{ ...good, model: undefined }, /cfg: field "model" must be a function/],
    [{ ...good, data: 3 }, /field "data" must be a function/],
    [{ ...good, stages: 0 }, /field "stages" must be a positive integer, got 0/],
    [{ ...good, stages: [1.5] }, /field "stages" boundaries/],
    [{ ...good, microbatches: 2.5 }, /field "microbatches" must be a positive integer/],
    [{ ...good, epochs: -1 }, /field "epochs"/],
    [{ ...good, batchSize: '8' }, /field "batchSize"/],
    [{ ...good, schedule: 'zigzag' }, /field "schedule" must be one of gpipe, 1f1b, zbh1, interleaved, loopedbfs, got "zigzag"/],
    [{ ...good, optimizer: 'adam' }, /field "optimizer" must be \{ className, config \}/],
    [{ ...good, loss: 3 }, /field "loss"/],
    [{ ...good, metric: 3 }, /field "metric"/],
    [{ ...good, stepTimeoutMs: 0 }, /field "stepTimeoutMs"/],
    [{ ...good, virtualStages: 0 }, /field "virtualStages" must be a positive integer, got 0/],
    [{ ...good, balance: 'speed' }, /field "balance" must be "params" or "time", got "speed"/],
    [{ ...good, recompute: 'yes' }, /field "recompute" must be true or false/],
    [{ ...good, feed: 'all' }, /field "feed" must be "step" or "bounded", got "all"/],
    [{ ...good, epoch: 3 }, /unknown field "epoch"/],
    [null, /default export must be a job config object/],
  ])('refuses %#, naming the field', (c, message) => {
    expect(() => validateJobConfig(c, 'cfg')).toThrow(ConfigError);
    expect(() => validateJobConfig(c, 'cfg')).toThrow(message);
  });

  it.each([
    [{ ...good, model: 3 }, /field "model" must be a function returning a tf.LayersModel, got 3/],
    [{ ...good, data: {} }, /field "data" must be a function returning \{ train: \{ x, y \}, test\? \}, got \{\}/],
    [{ ...good, stages: [0, 1.5] }, /field "stages" boundaries must be layer names or indices, got \[0,1.5\]/],
    [
      { ...good, optimizer: { learningRate: 0.1 } },
      /field "optimizer" must be \{ className, config \} or a function returning a tf.Optimizer, got \{"learningRate":0.1\}/,
    ],
    [{ ...good, loss: null }, /field "loss" must be a tfjs loss name or a function, got null/],
    [{ ...good, job: 7 }, /field "job" must be a string, got 7/],
    [{ ...good, stepTimeoutMs: '5000' }, /field "stepTimeoutMs" must be a positive number, got "5000"/],
    [{ ...good, memoryBudget: -1 }, /field "memoryBudget" must be a positive number of bytes, got -1/],
    [{ ...good, replicas: 1.5 }, /field "replicas" must be a positive integer, got 1.5/],
    [(({ loss: _, ...rest }) => rest)(good), /field "loss" must be a tfjs loss name or a function, got undefined/],
  ])('refuses %#, naming the field and the value given', (c, message) => {
    expect(() => validateJobConfig(c, 'cfg')).toThrow(message);
  });

  it('checks against the schema the JobConfig type is inferred from: its fields are the known ones', () => {
    expectTypeOf<JobConfig>().toEqualTypeOf<Readonly<v.InferOutput<typeof JobConfigSchema>>>();
    const known = Object.keys(JobConfigSchema.entries);
    expect(known).toEqual(
      expect.arrayContaining(['model', 'data', 'stages', 'microbatches', 'optimizer', 'loss', 'epochs', 'batchSize', 'feed', 'memoryBudget']),
    );
    expect(() => validateJobConfig({ ...good, epoch: 3 }, 'cfg')).toThrow(`cfg: unknown field "epoch" (known: ${known.join(', ')})`);
    // Every optional field of the schema is accepted when left out, and refused when given nonsense.
    for (const k of known.filter((k) => !(k in good))) {
      expect(() => validateJobConfig({ ...good, [k]: Symbol('nonsense') }, 'cfg'), k).toThrow(`field "${k}"`);
    }
  });

  it('takes the job id from the config, else the file name', () => {
    expect(jobIdOf({ ...good, job: 'named' } as never, 'x/y.job.ts')).toBe('named');
    expect(jobIdOf(good as never, 'examples/mnist.job.ts')).toBe('mnist');
  });
});
