/**
 * UnsortedSegmentSum for the wasm backend, which has none: Gather's gradient (an Embedding
 * layer's weight gradient) is a segment sum of the upstream rows by index, so stock
 * TensorFlow.js cannot train an Embedding on wasm at all.
 *
 *   out[s, ...] = sum of x[i, ...] over the rows i with segmentIds[i] = s,  0 <= s < numSegments
 *
 * Rows whose id is outside 0..numSegments-1 are dropped, as on the cpu backend. One pass over
 * the rows with typed arrays: each row is added to its segment's row of the output.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelBackend, TensorInfo } from '@tensorflow/tfjs';

let installed = false;

/** The segment sum itself, on host arrays: x as rows of `inner` elements, one id per row. */
function segmentSum(x: Float32Array | Int32Array, ids: Int32Array, inner: number, numSegments: number): Float32Array | Int32Array {
  const out = x instanceof Int32Array ? new Int32Array(numSegments * inner) : new Float32Array(numSegments * inner);
  for (let i = 0; i < ids.length; i++) {
    const s = ids[i]!;
    if (s < 0 || s >= numSegments) continue;
    const from = i * inner;
    const to = s * inner;
    for (let j = 0; j < inner; j++) out[to + j]! += x[from + j]!;
  }
  return out;
}

/** Registers the kernel for wasm once per process, unless wasm already has one. */
export function installWasmSegmentSum(): boolean {
  if (installed || tf.getKernel('UnsortedSegmentSum', 'wasm')) return false;
  installed = true;
  tf.registerKernel({
    kernelName: 'UnsortedSegmentSum',
    backendName: 'wasm',
    kernelFunc: ({ inputs, backend, attrs }) => {
      const wasm = backend as KernelBackend;
      const x = inputs['x'] as TensorInfo;
      const ids = inputs['segmentIds'] as TensorInfo;
      const { numSegments } = attrs as { numSegments: number };
      if (x.dtype !== 'float32' && x.dtype !== 'int32') throw new Error(`UnsortedSegmentSum on wasm: x must be float32 or int32, got ${x.dtype}`);
      // tfjs's op takes one id per row of x (Gather's gradient flattens its indices so).
      if (ids.shape.length !== 1 || ids.shape[0] !== x.shape[0]) {
        throw new Error(`UnsortedSegmentSum on wasm: segmentIds must be 1-D with one id per row of x [${x.shape.join(',')}], got [${ids.shape.join(',')}]`);
      }
      const inner = x.shape.slice(1).reduce((a, b) => a * b, 1);
      const out = segmentSum(wasm.readSync(x.dataId) as Float32Array | Int32Array, wasm.readSync(ids.dataId) as Int32Array, inner, numSegments);
      const shape = [numSegments, ...x.shape.slice(1)];
      return { dataId: wasm.write(out, shape, x.dtype), shape, dtype: x.dtype };
    },
  });
  return true;
}
