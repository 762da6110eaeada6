/** Steps as `troupe up` runs them: each call queued behind the running one. */
import type * as tf from '@tensorflow/tfjs';
import type { Pipeline } from '../src/index.js';
import { median } from './report.js';

/** Median ms per step of `steps` steps of (x, y), one call always queued behind the running one. */
export async function medianQueuedStepMs(pipe: Pipeline, x: tf.Tensor, y: tf.Tensor, steps: number): Promise<number> {
  const ends: number[] = [];
  const t0 = performance.now();
  let prev = pipe.trainStep(x, y);
  for (let i = 1; i < steps; i++) {
    const next = pipe.trainStep(x, y);
    await prev;
    ends.push(performance.now());
    prev = next;
  }
  await prev;
  ends.push(performance.now());
  return median(ends.map((t, i) => t - (i === 0 ? t0 : ends[i - 1]!)));
}
