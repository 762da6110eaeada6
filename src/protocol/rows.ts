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

/** Tensor i of every part, joined along the first dimension in part order (a copy). */
export function concatRows(parts: readonly (readonly WireTensor[])[]): WireTensor[] {
  return parts[0]!.map((first, i) => {
    const all = parts.map((ts) => ts[i]!);
    const data = new (first.data.constructor as Float32ArrayConstructor)(all.reduce((n, t) => n + t.data.length, 0));
    let at = 0;
    for (const t of all) {
      data.set(t.data, at);
      at += t.data.length;
    }
    return { name: first.name, dtype: first.dtype, shape: [all.reduce((n, t) => n + t.shape[0]!, 0), ...first.shape.slice(1)], data };
  });
}
