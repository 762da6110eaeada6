/**
 * Fault injection (#20.3): 20 trials of a 3-stage Adam job under `troupe up --restarts`, each
 * SIGKILLing workers at random moments: one worker, two at once, a replacement while it is
 * being recovered, another worker while one is recovered. Every trial must end with weights
 * byte-identical (weights.bin, SHA-256) to an uninterrupted run, and leave no process.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { alive, printedPids, troupe, type CliRun } from '../helpers/troupeCli.js';

const THREE = fileURLToPath(new URL('../fixtures/tiny-3stages.job.ts', import.meta.url));
const TRIALS = 20;
/** Trials running at once (each is a driver, three workers and a nats-server). */
const AT_ONCE = 4;
/** A trial still running after this is stopped (Ctrl-C) and fails. */
const TRIAL_LIMIT_MS = 90_000;
const tmp = mkdtempSync(join(tmpdir(), 'troupe-faults-'));
/** Runs not yet ended: a failed test interrupts them, so that they end their workers and servers. */
const running = new Set<CliRun>();
afterAll(async () => {
  for (const r of running) r.child.kill('SIGINT');
  await Promise.all([...running].map((r) => r.exit));
  rmSync(tmp, { recursive: true, force: true });
});

const sha = (dir: string) =>
  createHash('sha256')
    .update(readFileSync(join(dir, 'weights.bin')))
    .digest('hex');

/** A small seeded generator, so a failing trial can be rerun alone. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
}

const KINDS = ['one worker', 'two at once', 'the replacement while it is recovered', 'another worker while one is recovered'] as const;
type Kind = (typeof KINDS)[number];

/** The worker pids a run printed, by worker, kept current as it restarts them. */
function pidsOf(run: CliRun): Map<number, number> {
  const pids = new Map<number, number>();
  for (const m of run.output().matchAll(/rank (\d+): pid (\d+)/g)) pids.set(Number(m[1]), Number(m[2]));
  for (const m of run.output().matchAll(/worker (\d+) exited with [^;]*; restarting it \(restart \d+ of \d+\), pid (\d+)/g))
    pids.set(Number(m[1]), Number(m[2]));
  return pids;
}

const kill = (pid: number) => {
  try {
    process.kill(pid, 'SIGKILL');
  } catch {
    // gone already
  }
};

interface Trial {
  readonly trial: number;
  readonly kind: Kind;
  readonly what: string;
  readonly code: number | null;
  readonly output: string;
  readonly save: string;
  /** Whether a kill landed between a restart and the end of its recovery. */
  readonly duringRecovery: boolean;
}

async function trial(n: number): Promise<Trial> {
  const kind = KINDS[n % KINDS.length]!;
  const save = join(tmp, `trial-${n}`);
  // Half the trials keep a checkpoint of every step; the others recover from what the driver keeps.
  const ckpt = n % 2 === 1 ? ['--checkpoint-dir', join(tmp, `ckpt-${n}`)] : [];
  const run = troupe(['up', THREE, '--restarts', '5', '--save', save, ...ckpt]);
  running.add(run);
  const limit = setTimeout(() => run.child.kill('SIGINT'), TRIAL_LIMIT_MS);
  try {
    return await inject(n, run, kind, save);
  } finally {
    clearTimeout(limit);
    await run.exit;
    running.delete(run);
  }
}

async function inject(n: number, run: CliRun, kind: Kind, save: string): Promise<Trial> {
  const random = rng(20261204 + n * 7919);
  const step = 1 + Math.floor(random() * 8);
  const delayMs = Math.floor(random() * 60);
  const victim = Math.floor(random() * 3);
  const other = (victim + 1 + Math.floor(random() * 2)) % 3;
  const secondDelayMs = Math.floor(random() * 400);
  let what = `${kind}: worker ${victim} after step ${step} + ${delayMs} ms`;
  await run.waitFor(/rank 2: pid \d+/);
  // The bar prints a line per tenth of the run: the first line at or past the step.
  await run.waitFor(new RegExp(`step (${Array.from({ length: 13 - step }, (_, i) => step + i).join('|')})/12`));
  await new Promise((r) => setTimeout(r, delayMs));
  const pids = pidsOf(run);
  kill(pids.get(victim)!);
  if (kind === 'two at once') {
    kill(pids.get(other)!);
    what += ` and worker ${other}`;
  } else if (kind !== 'one worker') {
    const target = kind === 'the replacement while it is recovered' ? victim : other;
    await run.waitFor(new RegExp(`worker ${victim} exited with SIGKILL[^;]*; restarting it \\(restart 1 of 5\\), pid (\\d+)`));
    await new Promise((r) => setTimeout(r, secondDelayMs));
    kill(pidsOf(run).get(target)!);
    what += `, then worker ${target} ${secondDelayMs} ms after the restart`;
  }
  const { code } = await run.exit;
  const output = run.output();
  console.log(`trial ${n} (${what}): exit ${code}`);
  return { trial: n, kind, what, code, output, save, duringRecovery: /\(while recovering\)/.test(output) };
}

describe('troupe up --restarts under fault injection', () => {
  it(`${TRIALS} trials of random SIGKILLs (one, two at once, during recovery) on a 3-stage Adam job: \
every run ends with the uninterrupted weights, byte for byte`, async () => {
    const straightDir = join(tmp, 'straight');
    const straight = troupe(['up', THREE, '--save', straightDir]);
    const s = await straight.exit;
    expect(s.code, straight.output()).toBe(0);
    const want = sha(straightDir);
    const results: Trial[] = [];
    let next = 0;
    await Promise.all(
      Array.from({ length: AT_ONCE }, async () => {
        while (next < TRIALS) {
          const n = next++;
          results.push(
            await trial(n).catch((err: unknown) => ({
              trial: n,
              kind: KINDS[n % KINDS.length]!,
              what: `failed to inject: ${String(err)}`,
              code: -1,
              output: String(err),
              save: '',
              duringRecovery: false,
            })),
          );
        }
      }),
    );
    results.sort((a, b) => a.trial - b.trial);
    for (const r of results) console.log(`trial ${r.trial} (${r.what}): exit ${r.code}${r.duringRecovery ? ', a kill landed during recovery' : ''}`);
    for (const r of results) {
      expect(r.code, `trial ${r.trial} (${r.what}):\n${r.output}`).toBe(0);
      expect(sha(r.save), `trial ${r.trial} (${r.what})`).toBe(want);
      const restarted = [...r.output.matchAll(/restarting it \(restart \d+ of \d+\), pid (\d+)/g)].map((m) => Number(m[1]));
      for (const p of [...printedPids(r.output), ...restarted]) expect(alive(p), `pid ${p} of trial ${r.trial}`).toBe(false);
    }
    // The trials meant to kill during a recovery did, most of the time (the moment is random).
    const meant = results.filter((r) => r.kind.includes('while'));
    expect(meant.filter((r) => r.duringRecovery).length, 'kills that landed during a recovery').toBeGreaterThanOrEqual(meant.length / 2);
  }, 300_000);
});
