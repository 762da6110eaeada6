import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { jobIdOf, validateJobConfig } from '../../src/fleet/jobConfig.js';

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

  it('takes the job id from the config, else the file name', () => {
    expect(jobIdOf({ ...good, job: 'named' } as never, 'x/y.job.ts')).toBe('named');
    expect(jobIdOf(good as never, 'examples/mnist.job.ts')).toBe('mnist');
  });
});
