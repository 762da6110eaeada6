/** Device assignment: one GPU per worker when the GPU backend is installed, else the CPU. */
import { execFileSync } from 'node:child_process';
import { createRequire } from 'node:module';

/** True when @tensorflow/tfjs-node-gpu can be resolved from here. */
export function gpuBackendInstalled(): boolean {
  try {
    createRequire(import.meta.url).resolve('@tensorflow/tfjs-node-gpu');
    return true;
  } catch {
    return false;
  }
}

/** Number of GPUs `nvidia-smi -L` lists (0 without a driver). */
export function countGpus(): number {
  try {
    return execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).split('\n').filter((l) => l.startsWith('GPU ')).length;
  } catch {
    return 0;
  }
}

/**
 * Environment for worker `rank`: `CUDA_VISIBLE_DEVICES` pins it to GPU rank % gpus when the
 * GPU backend is installed and GPUs exist; otherwise nothing changes.
 */
export function deviceEnv(rank: number, gpus: number, gpuBackend: boolean): Record<string, string> {
  return gpuBackend && gpus > 0 ? { CUDA_VISIBLE_DEVICES: String(rank % gpus) } : {};
}

/** How a worker describes its device: `gpu:<n>` when pinned to a GPU backend, else `cpu`. */
export function deviceName(backend: string): string {
  const cuda = process.env['CUDA_VISIBLE_DEVICES'];
  return backend === 'node-gpu' ? `gpu:${cuda ?? 'all'}` : 'cpu';
}
