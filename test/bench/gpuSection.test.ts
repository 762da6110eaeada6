/**
 * The bench's GPU section where the machine has no GPU adapter: it says so and measures
 * nothing (on a GPU machine it runs the measurements in a child process on webgpu instead).
 */
import { describe, expect, it } from 'vitest';
import { benchGpu } from '../../bench/gpu.js';
import { listGpuAdapters } from '../../src/compute/webgpu.js';

const adapters = await listGpuAdapters();

describe('bench: the GPU section', () => {
  it.skipIf(adapters.length > 0)('says "skipped: no GPU adapter" without a GPU, with the reason, and starts nothing', async () => {
    const text = await benchGpu();
    expect(text).toContain('### GPU (WebGPU)');
    expect(text).toContain('skipped: no GPU adapter (Vulkan loader or driver missing) on this machine.');
    expect(text).not.toContain('| model |');
  });
});
