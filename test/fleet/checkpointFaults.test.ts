/**
 * `troupe up --checkpoint-dir` on a directory it cannot write: a read-only one fails the run
 * before anything starts, and one that goes bad mid-run fails it at the next save; either way
 * with one line naming the step (when there is one), the path and the cause, no stack trace,
 * and no process left.
 */
import { spawn } from 'node:child_process';
import { chmodSync, mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { BIN, alive, printedPids, troupe } from '../helpers/troupeCli.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'troupe-ckpt-faults-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

const STACK = /^\s+at /m;
const root = process.getuid?.() === 0;

describe('checkpoint directories that cannot be written', () => {
  it(`a read-only directory fails the run at once, naming the path and EACCES \
(${root ? 'run as user nobody: root writes anywhere' : 'chmod 555'})`, async () => {
    chmodSync(tmp, 0o755);
    const dir = join(tmp, 'read-only');
    mkdirSync(dir, { mode: 0o755 });
    if (!root) chmodSync(dir, 0o555);
    // Root ignores permission bits, so the run drops to an unprivileged user, as a real deployment would run.
    const child = spawn(process.execPath, [BIN, 'up', CONFIG, '--checkpoint-dir', dir], {
      stdio: ['ignore', 'pipe', 'pipe'],
      env: { ...process.env, TROUPE_BACKEND: 'wasm' },
      ...(root ? { uid: 65534, gid: 65534 } : {}),
    });
    let out = '';
    child.stdout.on('data', (b: Buffer) => (out += b.toString()));
    child.stderr.on('data', (b: Buffer) => (out += b.toString()));
    const code = await new Promise<number | null>((resolve) => child.once('exit', (c) => resolve(c)));
    expect(code, out).toBe(1);
    expect(out).toMatch(new RegExp(`troupe: checkpoint directory ${dir} cannot be written: EACCES: permission denied, open '${dir}/\\.probe\\.tmp-\\d+'`));
    expect(out).not.toMatch(STACK);
    expect(printedPids(out)).toEqual([]); // nothing was started
  });

  it('a directory replaced by a file mid-run fails the run at the next save: step, path and cause, no stack, no process left', async () => {
    const dir = join(tmp, 'goes-bad');
    const run = troupe(['up', CONFIG, '--checkpoint-dir', dir, '-v'], { TINY_EPOCHS: '10000' });
    await run.waitFor(/checkpoint step 2 saved/);
    rmSync(dir, { recursive: true, force: true });
    writeFileSync(dir, 'a file where the checkpoints were');
    const { code } = await run.exit;
    const out = run.output();
    expect(code, out).toBe(1);
    expect(out).toMatch(new RegExp(`troupe: checkpoint of step \\d+ could not be written to ${dir}: E[A-Z]+: .*; the previous checkpoint is still the latest`));
    expect(out).not.toMatch(STACK);
    for (const p of printedPids(out)) expect(alive(p), `pid ${p}`).toBe(false);
  });
});
