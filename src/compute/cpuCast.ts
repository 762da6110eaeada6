/**
 * tfjs's cpu backend (its default in Node, before Troupe picks one) casts without copying when
 * no precision is lost: `tf.oneHot(ids, n).toFloat()` is a float32 tensor over the same
 * Int32Array as its int32 source. On cpu that reads right, but when the data moves to another
 * backend (tensors move lazily when the backend changes), it moves once, as int32 bytes, and a
 * float32 tensor on wasm or WebGPU then reads those bytes as floats: 1 becomes 1.4e-45. So a
 * user's labels made before Troupe chose its backend trained on garbage, and their own
 * `trainOnBatch` did too. Troupe replaces the cpu Cast kernel, when it is loaded, by one that
 * gives such casts their own array of the new type.
 */
import * as tf from '@tensorflow/tfjs';

interface CpuBackend {
  data: { get(dataId: object): { values: ArrayLike<number> } };
  makeTensorInfo(shape: number[], dtype: string, values: ArrayLike<number>): tf.TensorInfo;
}

const ARRAYS: Record<string, (v: ArrayLike<number>) => ArrayLike<number>> = {
  float32: (v) => Float32Array.from(v),
  int32: (v) => Int32Array.from(v),
};

let installed = false;

/** Installs the copying Cast on the cpu backend (once per process). */
export function installCopyingCpuCast(): void {
  if (installed) return;
  const original = tf.getKernel('Cast', 'cpu');
  if (!original) return;
  installed = true;
  tf.unregisterKernel('Cast', 'cpu');
  tf.registerKernel({
    ...original,
    kernelFunc: (args) => {
      const { inputs, backend, attrs } = args as unknown as { inputs: { x: tf.TensorInfo }; backend: CpuBackend; attrs: { dtype: string } };
      const { x } = inputs;
      const convert = ARRAYS[attrs.dtype];
      // Only the casts tfjs would share (int32 or bool to float32, bool to int32) get a copy.
      if (!convert || x.dtype === attrs.dtype || x.dtype === 'complex64' || x.dtype === 'string' || (x.dtype === 'float32' && attrs.dtype === 'int32')) {
        return original.kernelFunc(args);
      }
      return backend.makeTensorInfo([...x.shape], attrs.dtype, convert(backend.data.get(x.dataId).values));
    },
  });
}
