/**
 * Device assignment: worker r of `troupe up` gets GPU r mod n when the machine has n GPUs,
 * else the CPU. The GPU travels in the worker's environment: `TROUPE_GPU` (the WebGPU
 * adapter index, read by `selectBackend`) and `CUDA_VISIBLE_DEVICES` (for tfjs-node-gpu).
 */
import { execFileSync } from 'node:child_process';
import { listGpuAdapters } from '../compute/webgpu.js';

/** Number of NVIDIA GPUs `nvidia-smi -L` lists (0 without a driver). */
function nvidiaGpus(): number {
  try {
    return execFileSync('nvidia-smi', ['-L'], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] })
      .split('\n')
      .filter((l) => l.startsWith('GPU ')).length;
  } catch {
    return 0;
  }
}

/** Number of GPUs on this machine: NVIDIA's count, else the WebGPU adapters Dawn sees (0 without any). */
export async function countGpus(): Promise<number> {
  return nvidiaGpus() || (await listGpuAdapters()).length;
}

/** Environment for worker `slot`: pinned to GPU slot % gpus, or nothing without GPUs. */
export function deviceEnv(slot: number, gpus: number): Record<string, string> {
  if (gpus <= 0) return {};
  const gpu = String(slot % gpus);
  return { TROUPE_GPU: gpu, CUDA_VISIBLE_DEVICES: gpu };
}
