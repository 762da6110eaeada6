/** Picks the TensorFlow.js backend at run time: tfjs-node-gpu > webgpu > tfjs-node > wasm > cpu. */
import * as tf from '@tensorflow/tfjs';
import { ConfigError, messageOf } from '../errors.js';
import { installFastWasmMatMul } from './wasmMatMul.js';
import { installWasmConvFilterGrad } from './wasmConvFilterGrad.js';
import { installWasmConvInputGrad } from './wasmConvInputGrad.js';
import { installSharedWasmIdentity } from './wasmIdentity.js';
import { installCopyingCpuCast } from './cpuCast.js';
import { NoGpuAdapter, startWebGpu } from './webgpu.js';
import { removeWasmExitHandlers } from './wasmExitHandlers.js';
import { installWasmSegmentSum } from './wasmSegmentSum.js';

/** Backends Troupe knows, best first. */
export const BackendName = { NODE_GPU: 'node-gpu', WEBGPU: 'webgpu', NODE: 'node', WASM: 'wasm', CPU: 'cpu' } as const;
export type BackendName = (typeof BackendName)[keyof typeof BackendName];

const ORDER: readonly BackendName[] = ['node-gpu', 'webgpu', 'node', 'wasm', 'cpu'];

/** Whether a backend computes on a GPU (reads back cost a transfer; every read must be asynchronous). */
export function isGpuBackend(name: BackendName): boolean {
  return name === 'node-gpu' || name === 'webgpu';
}

/** What `selectBackend` chose, and why the better ones were passed over. */
export interface BackendChoice {
  readonly name: BackendName;
  /** TensorFlow.js's name of the backend (`tensorflow`, `webgpu`, `wasm`, `cpu`). */
  readonly tfName: string;
  readonly skipped: readonly string[];
  /** The device it computes on: `cpu`, or the GPU adapter's name (webgpu). */
  readonly device: string;
  /** The backend tfjs was on before (its default, `cpu`, or one the caller chose), and how many tensors it held then. */
  readonly previous: { readonly tfName: string; readonly tensors: number } | null;
}

/** Options of `selectBackend`. */
export interface BackendOptions {
  /** One backend, or an order to try; default `TROUPE_BACKEND` from the environment, else the full order. */
  readonly prefer?: BackendName | readonly BackendName[];
  /** Where the choice is logged; default stderr. Pass `null` for silence. */
  readonly log?: ((line: string) => void) | null;
  /** The GPU adapter to use, by index among the machine's (default `TROUPE_GPU`, else the first). */
  readonly gpu?: number;
}

// Before any tensor of the user's exists: casts on tfjs's default backend get arrays of their own
// type, so tensors made before the backend is chosen move to it intact (see cpuCast.ts).
installCopyingCpuCast();

let chosen: Promise<BackendChoice> | undefined;

/**
 * Chooses and initialises the backend once per process; later calls return the same choice.
 *
 * @example
 * const { name } = await selectBackend({ prefer: 'wasm' }); // 'wasm'
 */
export function selectBackend(opts: BackendOptions = {}): Promise<BackendChoice> {
  chosen ??= choose(opts).catch((err: unknown) => {
    chosen = undefined;
    throw err;
  });
  return chosen;
}

function preferred(opts: BackendOptions): readonly BackendName[] {
  const env = process.env['TROUPE_BACKEND']?.trim();
  const raw =
    opts.prefer ??
    (env
      ? env
          .split(',')
          .map((s) => s.trim())
          .filter(Boolean)
      : undefined);
  if (raw === undefined) return ORDER;
  const list = typeof raw === 'string' ? [raw] : raw;
  if (list.length === 0) throw new ConfigError('the backend order is empty; known backends: ' + ORDER.join(', '));
  for (const b of list) {
    if (!ORDER.includes(b as BackendName)) {
      throw new ConfigError(`unknown backend "${b}"; known: ${ORDER.join(', ')} (from ${opts.prefer ? 'options' : 'TROUPE_BACKEND'})`);
    }
  }
  return list as BackendName[];
}

/** The GPU index asked for: the option, else `TROUPE_GPU` (set per worker by `troupe up`). */
function gpuIndex(opts: BackendOptions): number | null {
  const raw = opts.gpu ?? (process.env['TROUPE_GPU'] ? Number(process.env['TROUPE_GPU']) : null);
  if (raw === null) return null;
  if (!Number.isInteger(raw) || raw < 0)
    throw new ConfigError(`the GPU index must be a non-negative integer, got ${String(raw)} (from ${opts.gpu !== undefined ? 'options' : 'TROUPE_GPU'})`);
  return raw;
}

async function tryBackend(name: BackendName, opts: BackendOptions): Promise<{ tfName: string; device: string }> {
  switch (name) {
    case 'webgpu': {
      const gpu = await startWebGpu(gpuIndex(opts));
      return { tfName: 'webgpu', device: gpu.index === null ? gpu.adapter : `${gpu.adapter} (gpu ${gpu.index})` };
    }
    case 'node-gpu':
    case 'node': {
      // Optional dependencies: absent wherever libtensorflow could not be downloaded.
      const pkg = name === 'node-gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
      await import(pkg);
      return { tfName: 'tensorflow', device: name === 'node-gpu' ? `gpu:${process.env['CUDA_VISIBLE_DEVICES'] ?? 'all'}` : 'cpu' };
    }
    case 'wasm':
      await import('@tensorflow/tfjs-backend-wasm');
      return { tfName: 'wasm', device: 'cpu' };
    case 'cpu':
      return { tfName: 'cpu', device: 'cpu' };
  }
}

/** What tfjs was on before the switch, if it had started a backend at all. */
function before(): { tfName: string; tensors: number } | null {
  const e = tf.engine() as unknown as { backendName: string | null };
  return e.backendName ? { tfName: e.backendName, tensors: tf.memory().numTensors } : null;
}

async function choose(opts: BackendOptions): Promise<BackendChoice> {
  const log = opts.log === undefined ? (l: string) => process.stderr.write(`${l}\n`) : opts.log;
  const skipped: string[] = [];
  const previous = before();
  for (const name of preferred(opts)) {
    try {
      const { tfName, device } = await tryBackend(name, opts);
      if (!(await tf.setBackend(tfName))) throw new Error(`tf.setBackend('${tfName}') returned false`);
      await tf.ready();
      if (tfName === 'wasm') {
        installFastWasmMatMul();
        installWasmConvFilterGrad();
        installWasmConvInputGrad();
        installSharedWasmIdentity();
        installWasmSegmentSum(); // Gather's gradient: Embedding layers train on wasm
        removeWasmExitHandlers(); // emscripten's rethrowing handlers: an uncaught error would exit 7 with 40 KB of wasm source
      }
      const moved =
        previous && previous.tfName !== tfName
          ? `; switched from ${previous.tfName}${previous.tensors ? `, whose ${previous.tensors} tensors move here on first use` : ''}`
          : '';
      log?.(`troupe: backend ${name} on ${device}${skipped.length ? ` (skipped ${skipped.join('; ')})` : ''}${moved}`);
      return { name, tfName, skipped, device, previous: previous && previous.tfName !== tfName ? previous : null };
    } catch (err) {
      if (err instanceof ConfigError) throw err;
      const notInstalled = (err as { code?: string }).code === 'ERR_MODULE_NOT_FOUND';
      skipped.push(`${name}: ${notInstalled ? 'not installed' : err instanceof NoGpuAdapter ? err.message : messageOf(err).split('\n')[0]}`);
    }
  }
  throw new ConfigError(`no TensorFlow.js backend could start: ${skipped.join('; ')}`);
}
