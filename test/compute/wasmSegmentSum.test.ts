import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';

const seeded = (n: number, seed: number) => {
  let s = seed;
  return Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1);
};

/** unsortedSegmentSum and Gather's gradient (an embedding's weight gradient) on the current backend. */
function both(x: number[], xs: number[], ids: number[], segments: number, table: number[], ts: number[], idx: number[][]): Float32Array[] {
  return tf.tidy(() => {
    const sum = tf.unsortedSegmentSum(tf.tensor(x, xs), tf.tensor1d(ids, 'int32'), segments);
    const t = tf.tensor(table, ts);
    const i = tf.tensor2d(idx, undefined, 'int32');
    const up = tf.tensor(seeded(idx.length * idx[0]!.length * ts[1]!, 9), [idx.length, idx[0]!.length, ts[1]!]);
    const g = tf.grad((w: tf.Tensor) => tf.sum(tf.mul(tf.gather(w, i), up)))(t);
    return [sum.dataSync() as Float32Array, g.dataSync() as Float32Array];
  });
}

describe("Troupe's UnsortedSegmentSum kernel on wasm", () => {
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it('is registered: stock wasm has none', () => {
    expect(tf.getBackend()).toBe('wasm');
    expect(tf.getKernel('UnsortedSegmentSum', 'wasm')).toBeDefined();
  });

  it('segment sums (repeated, missing and out-of-range ids) and the gradient of gather equal the cpu backend within 1e-6', async () => {
    const xs = [7, 3, 2];
    const x = seeded(42, 1);
    const ids = [2, 0, 2, 5, -1, 4, 2]; // 1 and 3 get nothing; 5 and -1 are outside 0..4
    const ts = [11, 4];
    const table = seeded(44, 2);
    const idx = [
      [1, 3, 3, 10],
      [0, 1, 7, 3],
      [10, 10, 10, 2],
    ];
    await tf.setBackend('wasm');
    const before = tf.memory().numTensors;
    const onWasm = both(x, xs, ids, 5, table, ts, idx);
    expect(tf.memory().numTensors).toBe(before);
    await tf.setBackend('cpu');
    const onCpu = both(x, xs, ids, 5, table, ts, idx);
    expect(onWasm[0]!.length).toBe(5 * 3 * 2);
    expect(onWasm[1]!.length).toBe(11 * 4);
    expect(Array.from(onWasm[0]!.slice(6, 12))).toEqual([0, 0, 0, 0, 0, 0]); // segment 1
    onWasm.forEach((g, j) => {
      let worst = 0;
      g.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - onCpu[j]![i]!))));
      expect(worst, j === 0 ? 'segment sum' : 'gather gradient').toBeLessThan(1e-6);
    });
  });

  it('sums int32 values as int32', async () => {
    await tf.setBackend('wasm');
    const s = tf.unsortedSegmentSum(tf.tensor2d([1, 2, 3, 4, 5, 6], [3, 2], 'int32'), tf.tensor1d([1, 1, 0], 'int32'), 2);
    expect(s.dtype).toBe('int32');
    expect(Array.from(await s.data())).toEqual([5, 6, 4, 6]);
    s.dispose();
  });
});
