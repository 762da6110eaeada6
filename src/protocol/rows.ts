/** Row slices of wire tensors, without copying. */
import { sizeOf } from './dtype.js';
import type { WireTensor } from './frame.js';

/** Rows [start, start + count) of `w` along its first dimension, as a view of its bytes. */
export function sliceRows(w: WireTensor, start: number, count: number, name = w.name): WireTensor {
  const row = sizeOf(w.shape.slice(1));
  return {
    name,
    dtype: w.dtype,
    shape: [count, ...w.shape.slice(1)],
    data: w.data.subarray(start * row, (start + count) * row),
  };
}
