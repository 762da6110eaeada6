import { afterEach, describe, expect, it } from 'vitest';
import { deviceEnv, deviceName, gpuBackendInstalled } from '../../src/fleet/device.js';

const saved = process.env['CUDA_VISIBLE_DEVICES'];
afterEach(() => {
  if (saved === undefined) delete process.env['CUDA_VISIBLE_DEVICES'];
  else process.env['CUDA_VISIBLE_DEVICES'] = saved;
});

describe('device assignment', () => {
  it('pins worker r to GPU r mod n when the GPU backend is installed', () => {
    expect([0, 1, 2, 3].map((r) => deviceEnv(r, 2, true))).toEqual([
      { CUDA_VISIBLE_DEVICES: '0' },
      { CUDA_VISIBLE_DEVICES: '1' },
      { CUDA_VISIBLE_DEVICES: '0' },
      { CUDA_VISIBLE_DEVICES: '1' },
    ]);
  });
  it('leaves the environment alone without the GPU backend or without GPUs', () => {
    expect(deviceEnv(1, 4, false)).toEqual({});
    expect(deviceEnv(1, 0, true)).toEqual({});
  });
  it('names the device a worker reports', () => {
    process.env['CUDA_VISIBLE_DEVICES'] = '3';
    expect(deviceName('node-gpu')).toBe('gpu:3');
    expect(deviceName('wasm')).toBe('cpu');
  });
  it('knows the GPU backend is not installed on this machine', () => {
    // The machines this project runs on cannot download libtensorflow: npm skips the optional package.
    expect(gpuBackendInstalled()).toBe(false);
  });
});
