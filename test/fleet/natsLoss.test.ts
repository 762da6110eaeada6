/**
 * Losing NATS or a remote worker (#20.5, #20.6): the nats-server troupe up started is started
 * again and the step replayed (or, without --restarts, the run fails at once naming it); a
 * driver whose cluster node dies fails at once without --restarts; with --no-spawn, a remote
 * worker's replacement is recognised and loaded, whether it joins at once or after the
 * stage was found silent.
 */
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { startNatsCluster } from '../../src/fleet/natsCluster.js';
import { useNatsServer } from '../helpers/nats.js';
import { alive, printedPids, troupe, type CliRun } from '../helpers/troupeCli.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));
const nats = useNatsServer();
const tmp = mkdtempSync(join(tmpdir(), 'troupe-natsloss-'));
const started: CliRun[] = [];
afterAll(async () => {
  for (const r of started) if (r.child.exitCode === null) r.child.kill('SIGINT');
  await Promise.all(started.map((r) => r.exit));
  rmSync(tmp, { recursive: true, force: true });
});

const run = (args: readonly string[], env: Record<string, string> = {}) => {
  const r = troupe(args, env);
  started.push(r);
  return r;
};
const sha = (dir: string) =>
  createHash('sha256')
    .update(readFileSync(join(dir, 'weights.bin')))
    .digest('hex');
/** The first progress line at or past step `s` of 12 (the bar prints a line per tenth of the run). */
const pastStep = (s: number) => new RegExp(`step (${Array.from({ length: 13 - s }, (_, i) => s + i).join('|')})/12`);

let straight: Promise<string> | undefined;
/** weights.bin's SHA-256 after an uninterrupted run. */
function straightSha(): Promise<string> {
  straight ??= (async () => {
    const save = join(tmp, 'straight');
    const r = run(['up', CONFIG, '--save', save]);
    expect((await r.exit).code, r.output()).toBe(0);
    return sha(save);
  })();
  return straight;
}

describe('the nats-server troupe up started', () => {
  it('SIGKILLed mid-run with --restarts: started again on its port, the step replayed, the weights byte-identical, no process left', async () => {
    const want = await straightSha();
    const save = join(tmp, 'server-restart');
    const r = run(['up', CONFIG, '--restarts', '2', '--save', save]);
    const pid = Number((await r.waitFor(/nats-server pid (\d+)/))[1]);
    await r.waitFor(pastStep(4));
    process.kill(pid, 'SIGKILL');
    const { code } = await r.exit;
    const out = r.output();
    expect(code, out).toBe(0);
    expect(out).toMatch(new RegExp(`nats-server \\(pid ${pid}\\) exited during step \\d+; frames in flight may be lost`));
    const again = Number(/nats-server started again on port \d+ \(pid (\d+)\)/.exec(out)?.[1]);
    expect(again, out).toBeGreaterThan(0);
    expect(out).toMatch(/recovered in \d+ ms; replaying step/);
    expect(out).toMatch(/summary: job tiny, 12 steps in [\d.]+ s, last loss [\d.]+, 1 restart/);
    expect(sha(save)).toBe(want);
    for (const p of [...printedPids(out), again]) expect(alive(p), `pid ${p}`).toBe(false);
  }, 90_000);

  it('SIGKILLed mid-run without --restarts: the run fails at once, naming the server, not after the step timeout', async () => {
    const r = run(['up', CONFIG], { TINY_EPOCHS: '20' });
    const pid = Number((await r.waitFor(/nats-server pid (\d+)/))[1]);
    await r.waitFor(/step \d+\/120/);
    const t0 = performance.now();
    process.kill(pid, 'SIGKILL');
    const { code } = await r.exit;
    console.log(`the run ended ${(performance.now() - t0).toFixed(0)} ms after the nats-server was killed`);
    const out = r.output();
    expect(code, out).toBe(1);
    expect(out).toMatch(
      new RegExp(
        `nats-server \\(pid ${pid}\\) exited during step \\d+: frames in flight may be lost; ` +
          'troupe up --restarts replays such a step on a nats-server started again',
      ),
    );
    expect(out).not.toMatch(/timeout/i);
    for (const p of printedPids(out)) expect(alive(p), `pid ${p}`).toBe(false);
  }, 60_000);
});

describe('the NATS node the driver is on, lost without --restarts', () => {
  it('fails the run at once, naming the node, not after the 120 s step timeout', async () => {
    const cluster = await startNatsCluster(3);
    try {
      const r = run(['up', CONFIG, '--nats', cluster.urls], { TINY_EPOCHS: '20' });
      const on = (await r.waitFor(/driver on (\S+)/))[1]!;
      await r.waitFor(/step \d+\/120/);
      const node = cluster.nodes.find((n) => on.endsWith(`:${n.port}`))!;
      await node.stop();
      const { code } = await r.exit;
      const out = r.output();
      expect(code, out).toBe(1);
      expect(out).toMatch(
        new RegExp(
          `the driver lost its NATS connection to 127\\.0\\.0\\.1:${node.port} during step \\d+: frames in flight may be lost; ` +
            'troupe up --restarts replays such a step',
        ),
      );
      for (const p of printedPids(out)) expect(alive(p), `pid ${p}`).toBe(false);
    } finally {
      await cluster.stop();
    }
  }, 60_000);
});

describe('--no-spawn --restarts: a remote worker lost', () => {
  /** A driver waiting for workers started by hand, and the workers (by rank) as they are started. */
  async function remoteFleet(job: string, save: string, env: Record<string, string> = {}) {
    const driver = run(['up', CONFIG, '--nats', nats.server.url, '--job', job, '--no-spawn', '--restarts', '1', '--save', save], env);
    await driver.waitFor(/waiting for 2 workers/);
    const worker = (rank: number) => run(['worker', '--nats', nats.server.url, '--job', job, '--rank', String(rank), '--config', CONFIG]);
    return { driver, worker, workers: [worker(0), worker(1)] };
  }

  it('SIGKILLed and replaced at once: the replacement is recognised, loaded, and the steps replayed byte for byte', async () => {
    const want = await straightSha();
    const save = join(tmp, 'rejoin');
    const { driver, worker, workers } = await remoteFleet('rejoin', save);
    await driver.waitFor(pastStep(4));
    workers[1]!.child.kill('SIGKILL');
    const replacement = worker(1);
    const { code } = await driver.exit;
    const out = driver.output();
    expect(code, out).toBe(0);
    // Its hello tells the driver; or, when a step failed first (a plan refused as it died), the census finds rank 1 silent.
    expect(out).toMatch(
      new RegExp(
        `rank 1's worker \\(pid ${workers[1]!.child.pid} on \\S+\\) ` +
          `(was replaced by pid ${replacement.child.pid} on \\S+|answers no ping) during step \\d+; ` +
          `waiting for its worker to \\(re\\)join \\(restart 1 of 1\\)`,
      ),
    );
    expect(out).toMatch(/recovered in \d+ ms; replaying/);
    expect(sha(save)).toBe(want);
    for (const w of [workers[0]!, replacement]) expect((await w.exit).code, w.output()).toBe(0);
  }, 90_000);

  it('SIGKILLed and replaced only later: the silent stage is found, the run waits for a worker to take its place, and ends byte for byte', async () => {
    const want = await straightSha();
    const save = join(tmp, 'rejoin-late');
    const { driver, worker, workers } = await remoteFleet('rejoinlate', save, { TINY_LIVENESS_MS: '1500' });
    await driver.waitFor(pastStep(4));
    workers[1]!.child.kill('SIGKILL');
    await driver.waitFor(/waiting for (a worker to take its place|its worker to \(re\)join)/);
    const replacement = worker(1);
    const { code } = await driver.exit;
    const out = driver.output();
    expect(code, out).toBe(0);
    expect(out).toMatch(/recovered in \d+ ms; replaying/);
    expect(sha(save)).toBe(want);
    for (const w of [workers[0]!, replacement]) expect((await w.exit).code, w.output()).toBe(0);
  }, 90_000);
});
