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
      const a = attrs as { strides: number | [number, number]; pad: 'valid' | 'same' | number; dataFormat: 'NHWC' | 'NCHW'; dimRoundingMode?: 'floor' | 'round' | 'ceil'; inputShape: [number, number, number, number] };
      if (a.dataFormat !== 'NHWC' || typeof a.pad === 'object') return original.kernelFunc(args);
      const info = tf.backend_util.computeConv2DInfo(a.inputShape, filter.shape as [number, number, number, number], a.strides, 1, a.pad, a.dimRoundingMode, false, 'channelsLast');
      const [B, H, W, CI] = a.inputShape;
      const { outHeight: OH, outWidth: OW, filterHeight: KH, filterWidth: KW, strideHeight: sh, strideWidth: sw, dilationHeight: dh, dilationWidth: dw } = info;
      const CO = info.outChannels;
      const K = KH * KW * CI;
      const N = B * OH * OW;
      const g: TensorInfo = { dataId: dy.dataId, shape: [1, N, CO], dtype: 'float32' };
      const w: TensorInfo = { dataId: filter.dataId, shape: [1, K, CO], dtype: 'float32' };
      const prod = matMul.kernelFunc({ inputs: { a: g, b: w }, backend, attrs: { transposeA: false, transposeB: true } }) as TensorInfo;
      const dP = wasm.readSync(prod.dataId) as Float32Array;
      wasm.disposeData(prod.dataId);
      const dx = new Float32Array(B * H * W * CI);
      const top = info.padInfo.top;
      const left = info.padInfo.left;
      for (let b = 0; b < B; b++) {
        for (let oh = 0; oh < OH; oh++) {
          for (let ow = 0; ow < OW; ow++) {
            const row = ((b * OH + oh) * OW + ow) * K;
            for (let kh = 0; kh < KH; kh++) {
              const ih = oh * sh + kh * dh - top;
              if (ih < 0 || ih >= H) continue;
              for (let kw = 0; kw < KW; kw++) {
                const iw = ow * sw + kw * dw - left;
                if (iw < 0 || iw >= W) continue;
                const dst = ((b * H + ih) * W + iw) * CI;
                const src = row + (kh * KW + kw) * CI;
                for (let c = 0; c < CI; c++) dx[dst + c]! += dP[src + c]!;
              }
            }
          }
        }
      }
      return { dataId: wasm.write(dx, [B, H, W, CI], 'float32'), shape: [B, H, W, CI], dtype: 'float32' };
    },
  });
  return true;
}
