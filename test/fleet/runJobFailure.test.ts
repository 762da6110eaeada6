/**
 * `runJob` in this process, failing before any process starts: the model it built from the
 * job config is the caller's only in a result, so a run that fails leaves none of its tensors.
 */
import * as tf from '@tensorflow/tfjs';
import { fileURLToPath } from 'node:url';
import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { ConfigError } from '../../src/errors.js';
import { runJob, type RunJobOptions } from '../../src/fleet/runJob.js';
import job from '../fixtures/tiny.job.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));
const quiet = new Writable({ write: (_c, _e, cb) => cb() });

/** How many tensors one call of the job's `data` and `model` leaves. */
async function made(): Promise<{ data: number; model: number }> {
  const t0 = tf.memory().numTensors;
  const d = await job.data();
  const t1 = tf.memory().numTensors;
  const m = await job.model();
  const t2 = tf.memory().numTensors;
  m.dispose();
  tf.dispose([d.train.x, d.train.y, ...(d.test ? [d.test.x, d.test.y] : [])]);
  return { data: t1 - t0, model: t2 - t1 };
}

describe('runJob that fails', () => {
  it.each<[string, Partial<RunJobOptions>, RegExp]>([
    ['refused once prepared (--resume without --checkpoint-dir)', { resume: true }, /--resume needs --checkpoint-dir/],
    ['refused while prepared (--steps 0, checked after the model is built)', { steps: 0 }, /--steps must be a positive integer/],
  ])('%s: disposes the model it built', async (_, o, message) => {
    const n = await made();
    expect(n.model).toBeGreaterThan(0);
    const before = tf.memory().numTensors;
    const err = await runJob({ config: CONFIG, out: quiet, progress: false, ...o }).catch((e: unknown) => e);
    expect(err).toBeInstanceOf(ConfigError);
    expect((err as Error).message).toMatch(message);
    // The data the job's config made are the config's (it may hand the same tensors to every run): they stay.
    expect(tf.memory().numTensors - before).toBe(n.data);
  });
});
