/**
 * Conversion between tensors and wire tensors, with shape checks. Every read is
 * asynchronous (`await t.data()`): GPU backends have no synchronous readback in Node.
 *
 * A wire tensor is either bytes (what a frame carries over NATS) or, between stages of one
 * process, a handle to a tensor that stays on its device (`deviceWire`): its `data` is
 * empty, and the tensor itself is taken by `toTensor` on the receiving side, so nothing is
 * read back to the host and uploaded again. Device wires never reach the bus: a host
 * publishing one calls `toBytes` first.
 */
import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../errors.js';
import type { DType, WireArray } from '../protocol/dtype.js';
import type { WireTensor } from '../protocol/frame.js';
import { sliceRows } from '../protocol/rows.js';
import type { CutTensor } from './partition.js';

/** Tensors handed between stages of one process, by the wire tensor that stands for them; removed when taken. */
const onDevice = new Map<WireTensor, tf.Tensor>();

/** The dtypes a frame carries, checked before anything is read or linked. */
function wireDType(t: tf.Tensor, name: string): DType {
  if (t.dtype !== 'float32' && t.dtype !== 'int32' && t.dtype !== 'bool') {
    throw new ShapeError(`tensor ${name} has dtype ${t.dtype}, which frames cannot carry`);
  }
  return t.dtype;
}

const EMPTY: Record<DType, () => WireArray> = {
  float32: () => new Float32Array(0),
  int32: () => new Int32Array(0),
  bool: () => new Uint8Array(0),
};

/**
 * A wire tensor standing for `t`, which stays where it is (on its device). The wire tensor
 * owns `t` until `toTensor` takes it or `releaseDevice` frees it.
 */
export function deviceWire(t: tf.Tensor, name: string): WireTensor {
  const dtype = wireDType(t, name);
  const w: WireTensor = { name, dtype, shape: t.shape, data: EMPTY[dtype]() };
  onDevice.set(w, t);
  return w;
}

/** Frees the device tensors of `ws` that nobody took (a refused or dropped frame); bytes are left alone. */
export function releaseDevice(ws: Iterable<WireTensor>): void {
  for (const w of ws) {
    const t = onDevice.get(w);
    if (!t) continue;
    onDevice.delete(w);
    t.dispose();
  }
}

/**
 * Builds a tensor from a wire tensor after checking it against `expect` (dims after the
 * batch) and, when given, the batch size. A device wire hands over its tensor itself.
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
  const held = onDevice.get(w);
  if (held) {
    onDevice.delete(w);
    return held;
  }
  return tf.tensor(w.data, [...w.shape], w.dtype);
}

interface EngineInternals {
  readonly registry: Record<string, tf.KernelBackend | undefined>;
  readonly state: { readonly tensorInfo: WeakMap<object, { readonly backend: tf.KernelBackend }> };
}

/**
 * Whether `t`'s data lives on the cpu backend (not necessarily the current one: tensors move
 * lazily), whose reads hand out its own storage rather than a copy.
 */
function onCpu(t: tf.Tensor): boolean {
  const e = tf.engine() as unknown as EngineInternals;
  const cpu = e.registry['cpu'];
  return cpu !== undefined && e.state.tensorInfo.get(t.dataId)?.backend === cpu;
}

/**
 * Reads a tensor's values into a wire tensor that owns its bytes, typed by the tensor's own
 * dtype (the cpu backend may back a float32 tensor with the Int32Array it was cast from).
 */
export async function fromTensor(t: tf.Tensor, name: string): Promise<WireTensor> {
  const dtype = wireDType(t, name);
  const shared = onCpu(t);
  const values = await t.data();
  return { name, dtype, shape: t.shape, data: ownedArray(values, dtype, shared) };
}

/** `values` as the array type of `dtype`, copied when it is another backend's storage. */
function ownedArray(values: tf.TypedArray | string[], dtype: DType, shared: boolean): WireArray {
  if (Array.isArray(values)) throw new ShapeError('string tensors cannot travel in frames');
  switch (dtype) {
    case 'float32':
      return values instanceof Float32Array ? (shared ? values.slice() : values) : Float32Array.from(values);
    case 'int32':
      return values instanceof Int32Array ? (shared ? values.slice() : values) : Int32Array.from(values);
    case 'bool':
      return values instanceof Uint8Array ? (shared ? values.slice() : values) : Uint8Array.from(values);
  }
}

/** The bytes of `w`: a device wire's tensor is read back (and freed); a byte wire is returned as it is. */
export async function toBytes(w: WireTensor): Promise<WireTensor> {
  const t = onDevice.get(w);
  if (!t) return w;
  onDevice.delete(w);
  try {
    return await fromTensor(t, w.name);
  } finally {
    t.dispose();
  }
}

/**
 * `w` with another shape of as many elements: a view of its bytes, or, for a device wire, a
 * new device wire of the reshaped tensor (the original stays owned by `w`).
 */
export function reshapeWire(w: WireTensor, shape: readonly number[]): WireTensor {
  const t = onDevice.get(w);
  if (!t) return { ...w, shape: [...shape] };
  return deviceWire(tf.reshape(t, [...shape]), w.name);
}

/**
 * `w` as float32 (int32 values up to 2^24 and bools convert exactly): converted bytes, or, for
 * a device wire, a new device wire of the cast tensor (the original stays owned by `w`).
 */
export function floatWire(w: WireTensor): WireTensor {
  if (w.dtype === 'float32') return w;
  const t = onDevice.get(w);
  if (!t) return { ...w, dtype: 'float32', data: Float32Array.from(w.data) };
  return deviceWire(tf.cast(t, 'float32'), w.name);
}

/**
 * Rows [start, start + count) of `w`: a view of its bytes, or, for a device wire, a new
 * device wire of the sliced tensor (the original stays owned by `w`).
 */
export function rowsOf(w: WireTensor, start: number, count: number): WireTensor {
  const t = onDevice.get(w);
  if (!t) return sliceRows(w, start, count);
  return deviceWire(tf.slice(t, start, count), w.name);
}
