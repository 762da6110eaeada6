/**
 * The backend choice in a fresh process, as a user's program meets it (selectBackend is once
 * per process, so each case runs a child): the default order skips webgpu with its reason where
 * the machine has no GPU adapter, and tensors made on tfjs's default backend before any Troupe
 * call train exactly and keep their values.
 */
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { listGpuAdapters } from '../../src/compute/webgpu.js';

const FIXTURE = fileURLToPath(new URL('../fixtures/tensorsFirst.ts', import.meta.url));

interface Outcome {
  chosen: string;
  skipped: string[];
  log: string;
  losses: [number, number][];
  worst: number;
  unchanged: boolean;
}

/** Runs the fixture with `env` (TROUPE_BACKEND unset unless given) and parses its JSON line. */
function runFixture(env: Record<string, string> = {}): Promise<{ code: number | null; out: string; err: string }> {
  const base = { ...process.env };
  delete base['TROUPE_BACKEND'];
  const child = spawn(process.execPath, ['--import', 'tsx', FIXTURE], { env: { ...base, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  let err = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (err += b.toString()));
  return new Promise((resolve) => child.once('exit', (code) => resolve({ code, out, err })));
}

describe('backend choice in a user program', () => {
  it(`tensors made on the default backend before createPipeline train as backend-first ones do, keep their values, \
and the log says webgpu was skipped and why`, async () => {
    const gpus = await listGpuAdapters();
    const { code, out, err } = await runFixture();
    expect(code, err).toBe(0);
    const r = JSON.parse(out.trim().split('\n').pop()!) as Outcome;
    if (gpus.length === 0) {
      expect(r.chosen).toBe('wasm');
      expect(r.skipped).toContain('webgpu: no GPU adapter (Vulkan loader or driver missing)');
      expect(r.log).toMatch(/troupe: backend wasm on cpu \(skipped .*webgpu: no GPU adapter \(Vulkan loader or driver missing\)/);
    } else {
      expect(r.chosen).toBe('webgpu');
    }
    // Troupe switched tfjs from its default, and says so.
    expect(r.log).toMatch(/switched from cpu, whose \d+ tensors move here on first use/);
    // Labels made as oneHot(...).toFloat() on cpu: each loss equals single-process tfjs's, none is garbage (1.4e-45).
    for (const [pipe, ref] of r.losses) {
      expect(ref).toBeGreaterThan(0.1);
      expect(Math.abs(pipe - ref)).toBeLessThan(1e-5);
    }
    expect(r.worst).toBeLessThan(1e-5);
    expect(r.unchanged).toBe(true);
  });

  it('TROUPE_BACKEND=webgpu on a machine without a GPU adapter fails at once, naming the reason', async () => {
    const gpus = await listGpuAdapters();
    if (gpus.length > 0) return; // a GPU machine starts it: nothing to refuse
    const { code, err } = await runFixture({ TROUPE_BACKEND: 'webgpu' });
    expect(code).not.toBe(0);
    expect(err).toMatch(/no TensorFlow\.js backend could start: webgpu: no GPU adapter \(Vulkan loader or driver missing\)/);
  });
});
