import { describe, expect, it } from 'vitest';
import { countGpus, deviceEnv } from '../../src/fleet/device.js';

describe('device assignment', () => {
  it('pins worker r to GPU r mod n, for WebGPU (TROUPE_GPU) and tfjs-node-gpu (CUDA_VISIBLE_DEVICES)', () => {
    expect([0, 1, 2, 3].map((r) => deviceEnv(r, 2))).toEqual([
      { TROUPE_GPU: '0', CUDA_VISIBLE_DEVICES: '0' },
      { TROUPE_GPU: '1', CUDA_VISIBLE_DEVICES: '1' },
      { TROUPE_GPU: '0', CUDA_VISIBLE_DEVICES: '0' },
      { TROUPE_GPU: '1', CUDA_VISIBLE_DEVICES: '1' },
    ]);
  });
  it('leaves the environment alone without GPUs', () => {
    expect(deviceEnv(1, 0)).toEqual({});
  });
  it('counts the GPUs this machine has (none here: no driver, no Vulkan loader)', async () => {
    expect(await countGpus()).toBe(process.env['TROUPE_EXPECT_GPUS'] ? Number(process.env['TROUPE_EXPECT_GPUS']) : 0);
  });
});
