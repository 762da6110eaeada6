/**
 * Tensors made before Troupe chose its backend (on tfjs's default, cpu) move to the new
 * backend lazily, the first time they are used there: tfjs reads their values on the old
 * backend and writes them, as raw bytes, into the new one. The cpu backend casts int32 to
 * float32 without converting (`tf.oneHot(...).toFloat()` keeps an Int32Array behind a float32
 * tensor), so the bytes of those integers land as floats: 1 becomes 1.4e-45. The guard
 * converts a moved array to its tensor's dtype before the new backend takes it.
 */
import type * as tf from '@tensorflow/tfjs';

type Move = (dataId: object, values: unknown, shape: number[], dtype: string, refCount: number) => void;

const guarded = new WeakSet<object>();

/** The values as the typed array of `dtype` (a copy only when they are of another type). */
function asDtype(values: unknown, dtype: string): unknown {
  if (!ArrayBuffer.isView(values)) return values;
  const arr = values as unknown as ArrayLike<number>;
  if (dtype === 'float32' && !(values instanceof Float32Array)) return Float32Array.from(arr);
  if (dtype === 'int32' && !(values instanceof Int32Array)) return Int32Array.from(arr);
  if (dtype === 'bool' && !(values instanceof Uint8Array)) return Uint8Array.from(arr);
  return values;
}

/** Makes `backend` convert arrays moved into it to their tensor's dtype (once per backend). */
export function guardMoves(backend: tf.KernelBackend): void {
  if (guarded.has(backend)) return;
  guarded.add(backend);
  const b = backend as unknown as { move: Move };
  const move = b.move.bind(backend);
  b.move = (dataId, values, shape, dtype, refCount) => move(dataId, asDtype(values, dtype), shape, dtype, refCount);
}
