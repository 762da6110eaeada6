/**
 * `troupe up` resumed from a checkpoint, or recovering from a killed worker, ends with the
 * weights of an uninterrupted run byte for byte (weights.bin compared, not within a tolerance),
 * with Adam and Adamax, whose running products tfjs does not save.
 */
import { spawnSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { loadCheckpoint, saveCheckpoint } from '../../src/fleet/checkpoint.js';
import { maxAbsDiff } from '../helpers/models.js';
import { alive, loadSaved, printedPids, troupe } from '../helpers/troupeCli.js';

const ADAM = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));
const ADAMAX = fileURLToPath(new URL('../fixtures/tiny-adamax.job.ts', import.meta.url));
const STEPS = 6;
const tmp = mkdtempSync(join(tmpdir(), 'troupe-exact-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** Runs `troupe up <config> <args>` to the end; fails the test unless it exits 0. */
async function up(config: string, args: readonly string[]): Promise<string> {
  const r = troupe(['up', config, ...args]);
  const { code } = await r.exit;
  expect(code, r.output()).toBe(0);
  return r.output();
}

const weights = (saved: string) => readFileSync(join(saved, 'weights.bin'));
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const straight = new Map<string, Promise<{ save: string; bytes: Buffer }>>();
/** The uninterrupted run: its saved directory and weights.bin (one run per config and file). */
function straightRun(config: string): Promise<{ save: string; bytes: Buffer }> {
  if (!straight.has(config)) {
    const save = join(tmp, `straight-${straight.size}`);
    straight.set(
      config,
      up(config, ['--steps', String(STEPS), '--save', save]).then(() => ({ save, bytes: weights(save) })),
    );
  }
  return straight.get(config)!;
}

/** `--steps k`, then `--resume` to STEPS: the resumed run's saved directory. */
async function resumeAfter(
  config: string,
  k: number,
  name: string,
  between?: (dir: string) => void | Promise<void>,
): Promise<{ save: string; output: string }> {
  const dir = join(tmp, `ckpt-${name}`);
  const save = join(tmp, `saved-${name}`);
  await up(config, ['--steps', String(k), '--checkpoint-dir', dir]);
  await between?.(dir);
  const output = await up(config, ['--steps', String(STEPS), '--checkpoint-dir', dir, '--resume', '--save', save]);
  expect(output).toMatch(new RegExp(`resumed from .* at step ${k}`));
  return { save, output };
}

function expectSameBytes(got: Buffer, want: Buffer, what: string): void {
  expect(got.length, what).toBe(want.length);
  expect(sha(got), what).toBe(sha(want));
  expect(Buffer.compare(got, want), what).toBe(0);
}

describe('exact resume and replay', () => {
  it(`Adam: 2 steps, --resume to 6, equals 6 uninterrupted steps byte for byte; a checkpoint without the running products still resumes, \
with a notice`, async () => {
    const want = (await straightRun(ADAM)).bytes;
    let old = '';
    const { save } = await resumeAfter(ADAM, 2, 'adam-2', (dir) => {
      old = join(tmp, 'ckpt-adam-2-old');
      cpSync(dir, old, { recursive: true });
    });
    expectSameBytes(weights(save), want, 'resumed after step 2');
    // The same checkpoint as an older Troupe wrote it: no accBeta1/accBeta2.
    const c = await loadCheckpoint(old);
    const stripped = c.states.map((s) => {
      const os = s.tensors.filter((t) => t.name.startsWith('o'));
      const keep = s.optimizerNames.map((n, i) => [n, os[i]!] as const).filter(([n]) => !n.startsWith('accBeta'));
      return {
        ...s,
        optimizerNames: keep.map(([n]) => n),
        tensors: [...s.tensors.filter((t) => t.name.startsWith('w')), ...keep.map(([, t], i) => ({ ...t, name: `o${i}` }))],
      };
    });
    expect(stripped[0]!.optimizerNames.length).toBe(c.states[0]!.optimizerNames.length - 2);
    await saveCheckpoint(old, c.meta, stripped);
    const oldSave = join(tmp, 'saved-adam-2-old');
    const out = await up(ADAM, ['--steps', String(STEPS), '--checkpoint-dir', old, '--resume', '--save', oldSave]);
    expect(out).toMatch(
      new RegExp(
        /checkpoint step 2 in .* has no accBeta1, accBeta2 \(saved by an older Troupe\): /.source +
          /Adam's running values are rebuilt from the step count, so this run is close to, not bit-identical with, an uninterrupted one/.source,
      ),
    );
    expect(maxAbsDiff(await loadSaved(oldSave), await loadSaved((await straightRun(ADAM)).save))).toBeLessThan(1e-5);
  }, 120_000);

  it(`Adam: LATEST lost and an abandoned temporary beside the checkpoint: --resume takes the newest whole step (5), removes the temporary, \
ends byte for byte`, async () => {
    const want = (await straightRun(ADAM)).bytes;
    const dead = spawnSync(process.execPath, ['-e', '']).pid;
    const { save, output } = await resumeAfter(ADAM, 5, 'adam-5', (dir) => {
      rmSync(join(dir, 'LATEST'));
      mkdirSync(join(dir, `.step-6.tmp-${dead}`));
      writeFileSync(join(dir, `.step-6.tmp-${dead}`, 'stage-0.bin'), new Uint8Array(1 << 20));
    });
    expect(output).toMatch(/checkpoint LATEST in .* refused: missing: the newest whole step directory is used/);
    expect(output).toMatch(new RegExp(`removed 1 abandoned checkpoint temporaries in .*\\.step-6\\.tmp-${dead}`));
    expect(existsSync(join(tmp, 'ckpt-adam-5', `.step-6.tmp-${dead}`))).toBe(false);
    expectSameBytes(weights(save), want, 'resumed after step 5 without LATEST');
  }, 120_000);

  it('Adamax (no getWeights in tfjs): trains under troupe up, and 3 steps + --resume equal 6 straight byte for byte', async () => {
    const want = (await straightRun(ADAMAX)).bytes;
    const { save } = await resumeAfter(ADAMAX, 3, 'adamax-3');
    expectSameBytes(weights(save), want, 'Adamax resumed after step 3');
  }, 120_000);

  it('Adam: a worker killed after step 2 is restarted, the step replayed from the kept state, and the run ends byte for byte', async () => {
    const want = (await straightRun(ADAM)).bytes;
    const save = join(tmp, 'saved-restart');
    const run = troupe(['up', ADAM, '--steps', String(STEPS), '--restarts', '1', '--checkpoint-dir', join(tmp, 'ckpt-restart'), '--save', save, '-v']);
    const pid = Number((await run.waitFor(/rank 1: pid (\d+)/))[1]);
    await run.waitFor(/checkpoint step 2 saved/);
    process.kill(pid, 'SIGKILL');
    const { code } = await run.exit;
    const out = run.output();
    expect(code, out).toBe(0);
    expect(out).toMatch(/worker 1 exited with SIGKILL during step \d+; restarting it/);
    expect(out).toMatch(/recovered in \d+ ms; replaying step \d+/);
    for (const p of printedPids(out)) expect(alive(p), `pid ${p}`).toBe(false);
    expectSameBytes(weights(save), want, 'after a restart');
  }, 120_000);
});
