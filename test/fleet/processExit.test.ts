/**
 * A program using Troupe that ends badly, run in a child process: it prints the user's error
 * and stack (not the wasm module's source), exits 1, and no nats-server it started survives,
 * however it ends; nor do the workers and the credentials file of a `troupe up` killed with SIGKILL.
 */
import { spawn } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it, vi } from 'vitest';
import { alive, printedPids, troupe } from '../helpers/troupeCli.js';

const DIES = fileURLToPath(new URL('../fixtures/dies.ts', import.meta.url));
const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));

/** Runs the fixture with `how`; resolves once it printed its nats-server's pid, with its exit to come. */
async function dies(how: string) {
  const child = spawn(process.execPath, ['--import', 'tsx', DIES, how], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  const pid = await vi.waitFor(
    () => {
      const m = /nats-server pid (\d+)/.exec(out);
      if (!m) throw new Error(`no pid yet:\n${out}`);
      return Number(m[1]);
    },
    { timeout: 30_000, interval: 20 },
  );
  return { child, pid, exit, output: () => out };
}

/** A process that is not our child ends on its own time: wait until its pid is gone. */
async function gone(pid: number): Promise<void> {
  await vi.waitFor(() => expect(alive(pid), `pid ${pid} still running`).toBe(false), { timeout: 5_000, interval: 20 });
}

describe('a program using Troupe that ends badly', () => {
  it.each([
    ['throw', 'an uncaught error', 'the user program failed'],
    ['reject', 'an unhandled rejection', 'the user program rejected'],
  ])('%s (%s): prints the error and its stack, exits 1, and its nats-server ends', async (how, _what, message) => {
    const run = await dies(how);
    const { code, signal } = await run.exit;
    const out = run.output();
    expect({ code, signal }, out).toEqual({ code: 1, signal: null });
    expect(out).toContain(`Error: ${message}`);
    expect(out).toMatch(/at .*dies\.ts:\d+:\d+/); // the user's stack
    expect(out).not.toMatch(/WasmBackendModule|ExitStatus/);
    expect(out.length, out).toBeLessThan(2_000); // not the 40 KB of minified wasm module
    await gone(run.pid);
  });

  it.each(['SIGTERM', 'SIGKILL'] as const)('killed with %s: its nats-server ends with it', async (sig) => {
    const run = await dies('wait');
    expect(alive(run.pid)).toBe(true);
    run.child.kill(sig);
    expect((await run.exit).signal).toBe(sig);
    await gone(run.pid);
  });

  it(`troupe up, Ctrl-C twice while a stopped worker keeps it waiting: exits at once with 130, and its nats-server, \
workers and files end too`, async () => {
    const run = troupe(['up', CONFIG], { TINY_EPOCHS: '1000' });
    const hung = Number((await run.waitFor(/rank 1: pid (\d+)/))[1]);
    try {
      await run.waitFor(/step \d+\/\d+/);
      const pids = printedPids(run.output());
      const credentials = /TROUPE_NATS_CREDENTIALS=(\S+)/.exec(run.output())![1]!;
      // A stopped worker answers no stop request and acts on SIGTERM only once continued: the first Ctrl-C waits for it
      // (seconds); with one Ctrl-C it would be continued, told to stop, and say so.
      process.kill(hung, 'SIGSTOP');
      run.child.kill('SIGINT');
      await run.waitFor(/interrupted, stopping every process/);
      run.child.kill('SIGINT');
      const { code } = await run.exit;
      const out = run.output();
      expect(code, out).toBe(130);
      expect(out).toContain('troupe up: interrupted again, exiting now');
      expect(out).not.toMatch(/rank 1 stopping/);
      for (const pid of pids) await gone(pid);
      await vi.waitFor(() => expect(existsSync(credentials), `${credentials} still there`).toBe(false), { timeout: 5_000, interval: 20 });
    } finally {
      run.child.kill('SIGKILL');
      if (alive(hung)) process.kill(hung, 'SIGKILL');
    }
  });

  it("troupe up killed with SIGKILL: its nats-server, its workers, its NATS credentials file and its job's server configuration end too", async () => {
    const run = troupe(['up', CONFIG], { TINY_EPOCHS: '1000' });
    try {
      await run.waitFor(/step \d+\/\d+/);
      const pids = printedPids(run.output());
      expect(pids).toHaveLength(3); // nats-server and two workers
      for (const pid of pids) expect(alive(pid)).toBe(true);
      const credentials = /TROUPE_NATS_CREDENTIALS=(\S+)/.exec(run.output())![1]!;
      expect(existsSync(credentials)).toBe(true);
      // The job-confined configuration the server runs on (its -c argument), in a folder of its own.
      const server = Number(/nats-server pid (\d+)/.exec(run.output())![1]);
      const args = readFileSync(`/proc/${server}/cmdline`, 'utf8').split('\0');
      const configDir = dirname(args[args.indexOf('-c') + 1]!);
      expect(configDir).toMatch(/troupe-natsconf-/);
      expect(existsSync(configDir)).toBe(true);
      run.child.kill('SIGKILL');
      expect((await run.exit).signal).toBe('SIGKILL');
      for (const pid of pids) await gone(pid);
      await vi.waitFor(() => expect(existsSync(credentials), `${credentials} still there`).toBe(false), { timeout: 5_000, interval: 20 });
      await vi.waitFor(() => expect(existsSync(configDir), `${configDir} still there`).toBe(false), { timeout: 5_000, interval: 20 });
    } finally {
      run.child.kill('SIGKILL');
    }
  });
});
