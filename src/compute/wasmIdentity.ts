/**
 * A sharing Identity kernel for the wasm backend. The gradient tape keeps every kernel's
 * inputs and outputs through `Engine.clone`, which runs Identity; wasm's Identity copies the
 * bytes, so each recorded dense layer copied its whole weight matrix on every forward (a
 * 1024 x 1024 layer: 4 MB per microbatch). The cpu and webgl backends share the buffer and
 * count a reference instead, as wasm's own Reshape does; this kernel does the same.
 * Tensors are immutable, so a shared buffer reads as a copy would.
 */
import * as tf from '@tensorflow/tfjs';
import type { KernelFunc, TensorInfo } from '@tensorflow/tfjs';

let installed = false;

interface CountingBackend {
  incRef(dataId: object): void;
}

/** Replaces wasm's copying Identity with one that shares the buffer, once per process. */
export function installSharedWasmIdentity(): void {
  if (installed) return;
  const original = tf.getKernel('Identity', 'wasm');
  if (!original) return;
  const copy = original.kernelFunc;
  const shared: KernelFunc = (args) => {
    const x = args.inputs['x'] as TensorInfo;
    // Strings live outside the wasm heap: the stock kernel handles them.
    if (x.dtype === 'string') return copy(args);
    (args.backend as unknown as CountingBackend).incRef(x.dataId);
    return { dataId: x.dataId, shape: x.shape, dtype: x.dtype };
  };
  tf.unregisterKernel('Identity', 'wasm');
  tf.registerKernel({ ...original, kernelFunc: shared });
  installed = true;
}
