/** Conversion between tensors and wire tensors (raw bytes), with shape checks. */
import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../errors.js';
import type { WireArray } from '../protocol/dtype.js';
import type { WireTensor } from '../protocol/frame.js';
import type { CutTensor } from './partition.js';

/**
 * Builds a tensor from a wire tensor after checking it against `expect` (dims after the
 * batch) and, when given, the batch size.
 */
export function toTensor(w: WireTensor, expect: CutTensor | undefined, batch: number | undefined, what: string): tf.Tensor {
  if (expect) {
    const want = batch === undefined ? ['*', ...expect.shape] : [batch, ...expect.shape];
    const ok = w.dtype === expect.dtype && w.shape.length === want.length && w.shape.every((d, i) => want[i] === '*' || d === want[i]);
    if (!ok) {
      throw new ShapeError(`${what}: got ${w.dtype}[${w.shape.join(',')}], expected ${expect.dtype}[${want.join(',')}]`);
    }
  } else if (batch !== undefined && w.shape[0] !== batch) {
    throw new ShapeError(`${what}: batch dimension ${String(w.shape[0])}, expected ${batch}`);
  }
  return tf.tensor(w.data, [...w.shape], w.dtype);
}

/** Reads a tensor's values into a wire tensor that owns its bytes. */
export function fromTensor(t: tf.Tensor, name: string): WireTensor {
  if (t.dtype !== 'float32' && t.dtype !== 'int32' && t.dtype !== 'bool') {
    throw new ShapeError(`tensor ${name} has dtype ${t.dtype}, which frames cannot carry`);
  }
  let data = t.dataSync() as WireArray;
  // The cpu backend hands out its own storage; wasm and native backends return a copy.
  if (tf.getBackend() === 'cpu') data = data.slice();
  if (t.dtype === 'bool' && !(data instanceof Uint8Array)) data = Uint8Array.from(data);
  return { name, dtype: t.dtype, shape: t.shape, data };
}
