/**
 * Conv2DBackpropFilter for the wasm backend, which has none (so stock TensorFlow.js cannot
 * train a conv net on wasm at all). The filter gradient is an im2col product:
 *
 *   dW[kh,kw,ci,co] = sum over (b,oh,ow) of x[b, oh*sh + kh*dh - top, ow*sw + kw*dw - left, ci] * dy[b,oh,ow,co]
 *                   = P^T . dY,  P = patches of x: [B*OH*OW, KH*KW*CI],  dY: [B*OH*OW, CO]
 *
 * P is gathered with typed-array copies, the product runs in wasm's BatchMatMul (through
 * Troupe's transposing wrapper, so XNNPACK does it). The cpu backend's kernel, the obvious
 * fallback, takes seconds per step: it reads every element through a TensorBuffer.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelBackend, TensorInfo } from '@tensorflow/tfjs';
import { convWindows } from './convWindows.js';

let installed = false;

/** Registers the kernel for wasm once per process, unless wasm already has one. */
export function installWasmConvFilterGrad(): boolean {
  if (installed || tf.getKernel('Conv2DBackpropFilter', 'wasm')) return false;
  const matMul = tf.getKernel('BatchMatMul', 'wasm');
  if (!matMul) return false;
  installed = true;
  tf.registerKernel({
    kernelName: 'Conv2DBackpropFilter',
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const wasm = backend as KernelBackend;
      const x = inputs['x'] as TensorInfo;
      const dy = inputs['dy'] as TensorInfo;
      const a = attrs as {
        strides: number | [number, number];
        pad: 'valid' | 'same' | number;
        dataFormat: 'NHWC' | 'NCHW';
        dimRoundingMode?: 'floor' | 'round' | 'ceil';
        filterShape: [number, number, number, number];
      };
      if (a.dataFormat !== 'NHWC') throw new Error(`Conv2DBackpropFilter on wasm: only NHWC is supported, got ${a.dataFormat}`);
      const { g: geo, offsets } = convWindows(x.shape, a.filterShape, a);
      const { CI, CO, KH, KW, N, K } = geo;
      const xs = wasm.readSync(x.dataId) as Float32Array;
      const P = new Float32Array(N * K); // zeros where the window leaves the image
      for (let i = 0; i < offsets.length; i++) {
        const src = offsets[i]!;
        if (src < 0) continue;
        // A plain loop: for the few channels of early conv layers, subarray().set() costs more than it copies.
        for (let c = 0, dst = i * CI; c < CI; c++) P[dst + c] = xs[src + c]!;
      }
      const p: TensorInfo = { dataId: wasm.write(P, [1, N, K], 'float32'), shape: [1, N, K], dtype: 'float32' };
      const g: TensorInfo = { dataId: dy.dataId, shape: [1, N, CO], dtype: 'float32' };
      try {
        const out = matMul.kernelFunc({ inputs: { a: p, b: g }, backend, attrs: { transposeA: true, transposeB: false } }) as TensorInfo;
        const values = wasm.readSync(out.dataId) as Float32Array;
        wasm.disposeData(out.dataId);
        return { dataId: wasm.write(values, [KH, KW, CI, CO], 'float32'), shape: [KH, KW, CI, CO], dtype: 'float32' };
      } finally {
        wasm.disposeData(p.dataId);
      }
    },
  });
  return true;
}
