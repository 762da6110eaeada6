/**
 * A faster Conv2DBackpropInput for the wasm backend (its own kernel took a third of a
 * conv-net training step). The input gradient is a col2im of a matMul:
 *
 *   dP = dY . W^T      ([B*OH*OW, CO] . [CO, KH*KW*CI] -> [B*OH*OW, KH*KW*CI], in wasm's fast BatchMatMul)
 *   dx[b, oh*sh + kh*dh - top, ow*sw + kw*dw - left, ci] += dP[(b,oh,ow), (kh,kw,ci)]
 *
 * Same sums as the original kernel, in another order: equal within float32 rounding.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelBackend, TensorInfo } from '@tensorflow/tfjs';
import { convWindows } from './convWindows.js';

let installed = false;

/** Replaces wasm's Conv2DBackpropInput once per process. */
export function installWasmConvInputGrad(): boolean {
  const original = tf.getKernel('Conv2DBackpropInput', 'wasm');
  const matMul = tf.getKernel('BatchMatMul', 'wasm');
  if (installed || !original || !matMul) return false;
  installed = true;
  tf.unregisterKernel('Conv2DBackpropInput', 'wasm');
  tf.registerKernel({
    ...original,
    kernelFunc: (args) => {
      const { inputs, backend, attrs } = args;
      const wasm = backend as KernelBackend;
      const dy = inputs['dy'] as TensorInfo;
      const filter = inputs['filter'] as TensorInfo;
      const a = attrs as {
        strides: number | [number, number];
        pad: 'valid' | 'same' | number;
        dataFormat: 'NHWC' | 'NCHW';
        dimRoundingMode?: 'floor' | 'round' | 'ceil';
        inputShape: [number, number, number, number];
      };
      if (a.dataFormat !== 'NHWC' || typeof a.pad === 'object') return original.kernelFunc(args);
      const { g: geo, offsets } = convWindows(a.inputShape, filter.shape, a);
      const { B, H, W, CI, CO, N, K } = geo;
      const g: TensorInfo = { dataId: dy.dataId, shape: [1, N, CO], dtype: 'float32' };
      const w: TensorInfo = { dataId: filter.dataId, shape: [1, K, CO], dtype: 'float32' };
      const prod = matMul.kernelFunc({ inputs: { a: g, b: w }, backend, attrs: { transposeA: false, transposeB: true } }) as TensorInfo;
      const dP = wasm.readSync(prod.dataId) as Float32Array;
      wasm.disposeData(prod.dataId);
      const dx = new Float32Array(B * H * W * CI);
      for (let i = 0; i < offsets.length; i++) {
        const dst = offsets[i]!;
        if (dst < 0) continue;
        for (let c = 0, src = i * CI; c < CI; c++) dx[dst + c]! += dP[src + c]!;
      }
      return { dataId: wasm.write(dx, [B, H, W, CI], 'float32'), shape: [B, H, W, CI], dtype: 'float32' };
    },
  });
  return true;
}
