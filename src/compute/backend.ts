/** Picks the TensorFlow.js backend at run time: tfjs-node-gpu > tfjs-node > wasm > cpu. */
import * as tf from '@tensorflow/tfjs';
import { ConfigError, messageOf } from '../errors.js';
import { installFastWasmMatMul } from './wasmMatMul.js';
import { installWasmConvFilterGrad } from './wasmConvFilterGrad.js';
import { installWasmConvInputGrad } from './wasmConvInputGrad.js';
import { installSharedWasmIdentity } from './wasmIdentity.js';
import { removeWasmExitHandlers } from './wasmExitHandlers.js';
import { installWasmSegmentSum } from './wasmSegmentSum.js';

/** Backends Troupe knows, best first. */
export const BackendName = { NODE_GPU: 'node-gpu', NODE: 'node', WASM: 'wasm', CPU: 'cpu' } as const;
export type BackendName = (typeof BackendName)[keyof typeof BackendName];

const ORDER: readonly BackendName[] = ['node-gpu', 'node', 'wasm', 'cpu'];

/** What `selectBackend` chose, and why the better ones were passed over. */
export interface BackendChoice {
  readonly name: BackendName;
  /** TensorFlow.js's name of the backend (`tensorflow`, `wasm`, `cpu`). */
  readonly tfName: string;
  readonly skipped: readonly string[];
}

/** Options of `selectBackend`. */
export interface BackendOptions {
  /** One backend, or an order to try; default `TROUPE_BACKEND` from the environment, else the full order. */
  readonly prefer?: BackendName | readonly BackendName[];
  /** Where the choice is logged; default stderr. Pass `null` for silence. */
  readonly log?: ((line: string) => void) | null;
}

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
  const raw = opts.prefer ?? process.env['TROUPE_BACKEND']?.split(',').map((s) => s.trim()).filter(Boolean);
  if (raw === undefined) return ORDER;
  const list = typeof raw === 'string' ? [raw] : raw;
  for (const b of list) {
    if (!ORDER.includes(b as BackendName)) {
      throw new ConfigError(`unknown backend "${b}"; known: ${ORDER.join(', ')} (from ${opts.prefer ? 'options' : 'TROUPE_BACKEND'})`);
    }
  }
  return list as BackendName[];
}

async function tryBackend(name: BackendName): Promise<string> {
  switch (name) {
    case 'node-gpu':
    case 'node': {
      // Optional dependencies: absent wherever libtensorflow could not be downloaded.
      const pkg = name === 'node-gpu' ? '@tensorflow/tfjs-node-gpu' : '@tensorflow/tfjs-node';
      await import(pkg);
      return 'tensorflow';
    }
    case 'wasm':
      await import('@tensorflow/tfjs-backend-wasm');
      return 'wasm';
    case 'cpu':
      return 'cpu';
  }
}

async function choose(opts: BackendOptions): Promise<BackendChoice> {
  const log = opts.log === undefined ? (l: string) => process.stderr.write(`${l}\n`) : opts.log;
  const skipped: string[] = [];
  for (const name of preferred(opts)) {
    try {
      const tfName = await tryBackend(name);
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
      log?.(`troupe: backend ${name}${skipped.length ? ` (skipped ${skipped.join('; ')})` : ''}`);
      return { name, tfName, skipped };
    } catch (err) {
      const notInstalled = (err as { code?: string }).code === 'ERR_MODULE_NOT_FOUND';
      skipped.push(`${name}: ${notInstalled ? 'not installed' : messageOf(err).split('\n')[0]}`);
    }
  }
  throw new ConfigError(`no TensorFlow.js backend could start: ${skipped.join('; ')}`);
}
