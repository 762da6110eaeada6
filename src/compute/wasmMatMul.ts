/**
 * A faster BatchMatMul for the wasm backend. Its kernel uses XNNPACK only when neither
 * operand is transposed; dense-layer gradients transpose one side and fall to a naive loop
 * about 30x slower. The wrapper runs the original kernel untransposed, after explicit
 * transposes with the wasm Transpose kernel: same numbers, XNNPACK speed.
 *
 * Which transposes it makes is chosen by their size. `dy · Wᵀ` (a dense layer's input
 * gradient) can transpose the weight matrix, or compute `(W · dyᵀ)ᵀ` and transpose only the
 * two small row blocks; for a microbatch of 16 rows through a 1024 x 1024 layer the second
 * moves 32 K elements instead of 1 M.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';

let installed = false;

interface DisposingBackend {
  disposeData(dataId: object): void;
}

/** Elements of a matrix stack with the given shape. */
function size(shape: readonly number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

/** Rows and columns of a matrix stack after the optional transpose. */
function rowsCols(shape: readonly number[], transposed: boolean): [number, number] {
  const r = shape[shape.length - 2]!;
  const c = shape[shape.length - 1]!;
  return transposed ? [c, r] : [r, c];
}

/**
 * The plan for `op(a) · op(b)` with at least one side transposed: `direct` transposes the
 * transposed operands; `swapped` computes `(op(b)ᵀ · op(a)ᵀ)ᵀ`, transposing the untransposed
 * operands and the result. Returns the one that moves fewer elements.
 */
export function matMulPlan(aShape: readonly number[], bShape: readonly number[], ta: boolean, tb: boolean): 'direct' | 'swapped' {
  const [m] = rowsCols(aShape, ta);
  const [, k] = rowsCols(bShape, tb);
  const batch = Math.max(size(aShape.slice(0, -2)), size(bShape.slice(0, -2)));
  const direct = (ta ? size(aShape) : 0) + (tb ? size(bShape) : 0);
  const swapped = (ta ? 0 : size(aShape)) + (tb ? 0 : size(bShape)) + batch * m * k;
  return swapped < direct ? 'swapped' : 'direct';
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
    const made: TensorInfo[] = [];
    const flip = (x: TensorInfo): TensorInfo => {
      const perm = x.shape.map((_, i) => i);
      const r = perm.length;
      [perm[r - 2], perm[r - 1]] = [perm[r - 1]!, perm[r - 2]!];
      return transpose.kernelFunc({ inputs: { x }, backend, attrs: { perm } }) as TensorInfo;
    };
    const temp = (x: TensorInfo): TensorInfo => {
      made.push(x);
      return x;
    };
    const plain = { ...attrs, transposeA: false, transposeB: false };
    try {
      if (matMulPlan(a.shape, b.shape, ta, tb) === 'direct') {
        return run({ inputs: { a: ta ? temp(flip(a)) : a, b: tb ? temp(flip(b)) : b }, backend, attrs: plain });
      }
      const left = tb ? b : temp(flip(b));
      const right = ta ? a : temp(flip(a));
      return flip(temp(run({ inputs: { a: left, b: right }, backend, attrs: plain }) as TensorInfo));
    } finally {
      for (const x of made) (backend as DisposingBackend).disposeData(x.dataId);
    }
  };
  tf.unregisterKernel('BatchMatMul', 'wasm');
  tf.registerKernel({ ...original, kernelFunc: fast });
  installed = true;
}
