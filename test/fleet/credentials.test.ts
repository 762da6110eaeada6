/**
 * Least privilege in a fleet (#20 item 2): every forked worker gets its own stages' NATS
 * password and no other; the files `troupe up` prints hold what their reader needs only (the
 * inspector's password for troupe inspect, one stage's for a worker on another host), and go
 * with the run.
 */
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { troupe } from '../helpers/troupeCli.js';

const PROBE = fileURLToPath(new URL('../fixtures/env-probe.job.ts', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'troupe-creds-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** What each process that loaded the job config was given: its arguments and its Troupe NATS variables. */
function probes(dir: string): { argv: string[]; keys: string[] }[] {
  return readdirSync(dir).map((f) => JSON.parse(readFileSync(join(dir, f), 'utf8')) as { argv: string[]; keys: string[] });
}

const fileKeys = (file: string) => Object.keys(JSON.parse(readFileSync(file, 'utf8')) as Record<string, string>).sort();

describe('credentials a troupe up fleet hands out', () => {
  it('a forked worker holds its own stage password only; the printed file holds the inspector password only', async () => {
    const dir = mkdtempSync(join(tmp, 'spawned-'));
    // No password in the environment troupe up starts with: it makes them all for its server.
    const run = troupe(['up', PROBE, '--steps', '2', '--job', 'spawned'], { TROUPE_ENV_PROBE: dir });
    const file = (await run.waitFor(/TROUPE_NATS_CREDENTIALS=(\S+)/))[1]!;
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(fileKeys(file)).toEqual(['inspector']);
    expect((await run.exit).code, run.output()).toBe(0);
    expect(existsSync(file)).toBe(false);
    const workers = probes(dir).filter((p) => p.argv.includes('worker'));
    expect(workers).toHaveLength(2);
    for (const w of workers) {
      const rank = w.argv[w.argv.indexOf('--rank') + 1];
      expect(w.keys).toEqual([`TROUPE_NATS_PASS_STAGE${rank}`]);
    }
  });

  it('--no-spawn prints one command per worker, each naming a file with its own stage password only', async () => {
    const dir = mkdtempSync(join(tmp, 'remote-'));
    const run = troupe(['up', PROBE, '--steps', '2', '--job', 'remote', '--no-spawn'], { TROUPE_ENV_PROBE: dir });
    const lines = await Promise.all(
      [0, 1].map((r) => run.waitFor(new RegExp(`TROUPE_NATS_CREDENTIALS=(\\S+) troupe worker (--nats \\S+ --job remote --rank ${r} --config \\S+)`))),
    );
    const workers = lines.map((m, r) => {
      const file = m[1]!;
      expect(statSync(file).mode & 0o777).toBe(0o600);
      expect(fileKeys(file)).toEqual([`stage${r}`]);
      // As on another host: the worker has that file and nothing else.
      return { file, proc: troupe(['worker', ...m[2]!.split(' ')], { TROUPE_NATS_CREDENTIALS: file, TROUPE_ENV_PROBE: dir }) };
    });
    expect((await run.exit).code, run.output()).toBe(0);
    for (const w of workers) {
      expect((await w.proc.exit).code, w.proc.output()).toBe(0);
      expect(existsSync(w.file)).toBe(false);
    }
    for (const p of probes(dir).filter((x) => x.argv.includes('worker'))) expect(p.keys).toEqual(['TROUPE_NATS_CREDENTIALS']);
  });
});
