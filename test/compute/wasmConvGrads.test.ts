import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';

/** The input and filter gradients of conv2d(x, k) against upstream dy, on the current backend. */
function convGrads(
  x: number[],
  xs: number[],
  k: number[],
  ks: number[],
  dy: (shape: number[]) => tf.Tensor,
  strides: number,
  pad: 'valid' | 'same',
  dilation: number,
): Float32Array[] {
  return tf.tidy(() => {
    const xt = tf.tensor4d(x, xs as [number, number, number, number]);
    const kt = tf.tensor4d(k, ks as [number, number, number, number]);
    const y = tf.conv2d(xt, kt, strides, pad, 'NHWC', dilation);
    const up = dy(y.shape);
    const f = (a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(tf.conv2d(a as tf.Tensor4D, b as tf.Tensor4D, strides, pad, 'NHWC', dilation), up));
    return tf
      .grads(f)([xt, kt])
      .map((g) => g.dataSync() as Float32Array);
  });
}

const seeded = (n: number, seed: number) => {
  let s = seed;
  return Array.from({ length: n }, () => ((s = (s * 1103515245 + 12345) % 2 ** 31) / 2 ** 31) * 2 - 1);
};

const CASES = [
  { name: 'valid, stride 1', xs: [2, 9, 9, 3], ks: [3, 3, 3, 5], strides: 1, pad: 'valid' as const, dilation: 1 },
  { name: 'same, stride 2', xs: [3, 10, 7, 4], ks: [3, 2, 4, 6], strides: 2, pad: 'same' as const, dilation: 1 },
  { name: 'valid, stride 2, 1x1 filter', xs: [2, 7, 5, 6], ks: [1, 1, 6, 4], strides: 2, pad: 'valid' as const, dilation: 1 },
];

describe("Troupe's conv gradient kernels on wasm (Conv2DBackpropFilter, Conv2DBackpropInput)", () => {
  afterAll(async () => {
    await tf.setBackend('wasm');
  });

  it('is registered: stock wasm has none', () => {
    expect(tf.getBackend()).toBe('wasm');
    expect(tf.getKernel('Conv2DBackpropFilter', 'wasm')).toBeDefined();
  });

  it.each(CASES)('$name: input and filter gradients equal the cpu backend within 1e-5', async ({ xs, ks, strides, pad, dilation }) => {
    const x = seeded(
      xs.reduce((a, b) => a * b),
      1,
    );
    const k = seeded(
      ks.reduce((a, b) => a * b),
      2,
    );
    const dy = (shape: number[]) =>
      tf.tensor(
        seeded(
          shape.reduce((a, b) => a * b),
          3,
        ),
        shape,
      );
    await tf.setBackend('wasm');
    const before = tf.memory().numTensors;
    const onWasm = convGrads(x, xs, k, ks, dy, strides, pad, dilation);
    expect(tf.memory().numTensors).toBe(before);
    await tf.setBackend('cpu');
    const onCpu = convGrads(x, xs, k, ks, dy, strides, pad, dilation);
    expect(onWasm[0]!.length).toBe(xs.reduce((a, b) => a * b));
    expect(onWasm[1]!.length).toBe(ks.reduce((a, b) => a * b));
    onWasm.forEach((g, j) => {
      let worst = 0;
      g.forEach((v, i) => (worst = Math.max(worst, Math.abs(v - onCpu[j]![i]!))));
      expect(worst, j === 0 ? 'input gradient' : 'filter gradient').toBeLessThan(1e-5);
    });
  });
});
