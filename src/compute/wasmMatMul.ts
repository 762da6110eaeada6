/**
 * A faster BatchMatMul for the wasm backend. Its kernel uses XNNPACK only when neither
 * operand is transposed; dense-layer gradients transpose one side and fall to a naive loop
 * about 30x slower. The wrapper transposes with the wasm Transpose kernel first and then
 * runs the original kernel untransposed: same numbers, XNNPACK speed.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';

let installed = false;

interface DisposingBackend {
  disposeData(dataId: object): void;
}

/** Replaces wasm's BatchMatMul with the transposing wrapper, once per process. */
export function installFastWasmMatMul(): void {
  if (installed) return;
  const original = tf.getKernel('BatchMatMul', 'wasm');
  const transpose = tf.getKernel('Transpose', 'wasm');
  if (!original || !transpose) return;
  const run = original.kernelFunc;
  const fast: KernelFunc = (args) => {
    const { inputs, backend, attrs } = args;
    const a = inputs['a'] as TensorInfo;
    const b = inputs['b'] as TensorInfo;
    const ta = Boolean(attrs?.['transposeA']);
    const tb = Boolean(attrs?.['transposeB']);
    if (!ta && !tb) return run(args);
    const flip = (x: TensorInfo): TensorInfo => {
      const perm = x.shape.map((_, i) => i);
      const r = perm.length;
      [perm[r - 2], perm[r - 1]] = [perm[r - 1]!, perm[r - 2]!];
      return transpose.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as TensorInfo;
    };
    const a2 = ta ? flip(a) : a;
    const b2 = tb ? flip(b) : b;
    try {
      return run({ inputs: { a: a2, b: b2 }, backend, attrs: { ...attrs, transposeA: false, transposeB: false } });
    } finally {
      if (a2 !== a) (backend as DisposingBackend).disposeData(a2.dataId);
      if (b2 !== b) (backend as DisposingBackend).disposeData(b2.dataId);
    }
  };
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel({ ...original, kernelFunc: fast });
  installed = true;
}
