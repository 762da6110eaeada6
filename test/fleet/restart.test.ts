/**
 * Fault injection: a worker killed with SIGKILL at a random moment of a run is restarted,
 * every stage is loaded with the last completed step, the interrupted step is replayed, and
 * the run ends with the weights of an uninterrupted run.
 */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, describe, expect, it } from 'vitest';
import { maxAbsDiff } from '../helpers/models.js';
import { alive, loadSaved, printedPids, troupe, troupeToEnd } from '../helpers/troupeCli.js';
import { startNatsCluster } from '../../src/fleet/natsCluster.js';
import { startNatsServer, type NatsServer } from '../../src/fleet/natsServer.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));
const tmp = mkdtempSync(join(tmpdir(), 'troupe-restart-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

let straight: Promise<string> | undefined;
/** The uninterrupted run's saved model directory (run once per file). */
function straightRun(): Promise<string> {
  straight ??= (async () => {
    const dir = join(tmp, 'straight');
    const r = await troupeToEnd(['up', CONFIG, '--save', dir]);
    if (r.code !== 0) throw new Error(`the uninterrupted run failed:\n${r.output}`);
    return dir;
  })();
  return straight;
}

/** A small seeded generator, so a failing trial can be rerun. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
}

describe('troupe up --restarts', () => {
  it('10 trials, each killing a random worker at a random moment: every run ends with the uninterrupted weights', async () => {
    const reference = await loadSaved(await straightRun());
    const random = rng(20261123);
    const recoveries: number[] = [];
    for (let trial = 0; trial < 10; trial++) {
      const save = join(tmp, `trial-${trial}`);
      // --checkpoint-dir with -v prints a line per step: the moment is picked from those.
      const run = troupe(['up', CONFIG, '-v', '--restarts', '2', '--save', save, '--checkpoint-dir', join(tmp, `ckpt-${trial}`)]);
      const step = 1 + Math.floor(random() * 10);
      const victim = Math.floor(random() * 2);
      const delayMs = Math.floor(random() * 40);
      const pid = Number((await run.waitFor(new RegExp(`rank ${victim}: pid (\\d+)`)))[1]);
      await run.waitFor(new RegExp(`checkpoint step ${step} saved`));
      await new Promise((r) => setTimeout(r, delayMs)); // a random moment inside the next step
      process.kill(pid, 'SIGKILL');
      const { code } = await run.exit;
      const out = run.output();
      expect(code, `trial ${trial} (rank ${victim} after step ${step} + ${delayMs} ms):\n${out}`).toBe(0);
      expect(out).toMatch(new RegExp(`worker ${victim} exited with SIGKILL during .*; restarting it \\(restart 1 of 2\\)`));
      const recovered = /recovered in (\d+) ms; replaying (.*)/.exec(out);
      expect(recovered, out).not.toBeNull();
      recoveries.push(Number(recovered![1]));
      console.log(`trial ${trial}: killed rank ${victim} after step ${step} + ${delayMs} ms; recovered in ${recovered![1]} ms, replaying ${recovered![2]}`);
      const model = await loadSaved(save);
      expect(maxAbsDiff(model, reference), `trial ${trial}`).toBeLessThan(1e-6);
      for (const p of printedPids(out)) expect(alive(p), `pid ${p} of trial ${trial}`).toBe(false);
      model.dispose();
    }
    console.log(`recovery time over 10 trials: median ${[...recoveries].sort((a, b) => a - b)[5]} ms, max ${Math.max(...recoveries)} ms`);
  }, 240_000);

  it('beyond the restart limit the run fails, naming the worker and the limit, and leaves no process', async () => {
    const run = troupe(['up', CONFIG, '-v', '--restarts', '1', '--checkpoint-dir', join(tmp, 'ckpt-limit')]);
    const pid0 = Number((await run.waitFor(/rank 0: pid (\d+)/))[1]);
    await run.waitFor(/checkpoint step 2 saved/);
    process.kill(pid0, 'SIGKILL');
    const restarted = Number((await run.waitFor(/restarting it \(restart 1 of 1\), pid (\d+)/))[1]);
    await run.waitFor(/recovered in \d+ ms/);
    process.kill(restarted, 'SIGKILL');
    const { code } = await run.exit;
    const out = run.output();
    expect(code, out).toBe(1);
    expect(out).toMatch(/worker 0 exited with SIGKILL during the run \(restart limit 1 reached\)/);
    for (const p of [...printedPids(out), restarted]) expect(alive(p), `pid ${p}`).toBe(false);
  }, 60_000);

  it('nats-server stopped and started again mid-run: clients reconnect, the step is replayed, the weights are the uninterrupted ones', async () => {
    const first = await startNatsServer();
    const port = first.port;
    let server: NatsServer | undefined = first;
    try {
      const save = join(tmp, 'nats-restart');
      const run = troupe(['up', CONFIG, '-v', '--nats', first.url, '--restarts', '1', '--save', save, '--checkpoint-dir', join(tmp, 'ckpt-nats')]);
      await run.waitFor(/checkpoint step 4 saved/);
      await first.stop();
      server = undefined;
      server = await startNatsServer({ port });
      const { code } = await Promise.race([
        run.exit,
        new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`no exit:\n${run.output()}`)), 45_000)),
      ]);
      const out = run.output();
      expect(code, out).toBe(0);
      expect(out).toMatch(/the NATS connection came back during step \d+/);
      expect(out).toMatch(/recovered in \d+ ms; replaying step \d+/);
      expect(maxAbsDiff(await loadSaved(save), await loadSaved(await straightRun()))).toBeLessThan(1e-6);
    } finally {
      await server?.stop();
    }
  }, 60_000);

  it('a 3-node NATS cluster loses the node the driver is on mid-run: clients move to the others, the run finishes with the uninterrupted weights', async () => {
    const cluster = await startNatsCluster(3);
    try {
      const save = join(tmp, 'cluster');
      const run = troupe(['up', CONFIG, '-v', '--nats', cluster.urls, '--restarts', '1', '--save', save, '--checkpoint-dir', join(tmp, 'ckpt-cluster')]);
      const on = (await run.waitFor(/driver on (\S+)/))[1]!;
      const node = cluster.nodes.find((n) => on.endsWith(`:${n.port}`));
      expect(node, on).toBeDefined();
      await run.waitFor(/checkpoint step 4 saved/);
      await node!.stop();
      const { code } = await run.exit;
      const out = run.output();
      expect(code, out).toBe(0);
      expect(out).toMatch(/the NATS connection came back during step \d+/);
      expect(maxAbsDiff(await loadSaved(save), await loadSaved(await straightRun()))).toBeLessThan(1e-6);
    } finally {
      await cluster.stop();
    }
  }, 60_000);

  it('a hung worker (SIGSTOP) is found silent within the liveness timeout, named with its state and awaited messages', async () => {
    const run = troupe(['up', CONFIG, '-v', '--checkpoint-dir', join(tmp, 'ckpt-hung')], { TINY_LIVENESS_MS: '1500' });
    const pid = Number((await run.waitFor(/rank 1: pid (\d+)/))[1]);
    await run.waitFor(/checkpoint step 3 saved/);
    const stoppedAt = performance.now();
    process.kill(pid, 'SIGSTOP');
    try {
      const m = await run.waitFor(
        /troupe up: stage 1 answered no liveness probe for (\d+) ms; (last seen in step \d+, state [^\n]*|never answered a probe)/,
        20_000,
      );
      const detectedMs = performance.now() - stoppedAt;
      console.log(`hung stage reported after ${detectedMs.toFixed(0)} ms: ${m[0]}`);
      expect(detectedMs).toBeLessThan(1500 + 3_000);
      // Where it was: its state, its action and the messages that action waited for.
      expect(m[2]).toMatch(
        new RegExp(
          /^last seen in step \d+, state (idle|awaitingUpdate|updating|running\.(waiting|computing|next))( at [FBW]\d+)?/.source +
            /(, waiting for (INPUT|FORWARD|BACKWARD):\d+(, (INPUT|FORWARD|BACKWARD):\d+)*)?$/.source,
        ),
      );
    } finally {
      if (alive(pid)) process.kill(pid, 'SIGCONT');
    }
    const { code } = await run.exit;
    expect(code, run.output()).toBe(1);
    expect(run.output()).toMatch(/STAGE_SILENT/);
    for (const p of printedPids(run.output())) expect(alive(p), `pid ${p}`).toBe(false);
  }, 60_000);

  it('with --restarts, a hung worker is killed, restarted and its step replayed: the uninterrupted weights', async () => {
    const save = join(tmp, 'hung-restart');
    const run = troupe(['up', CONFIG, '-v', '--restarts', '1', '--save', save, '--checkpoint-dir', join(tmp, 'ckpt-hung2')], { TINY_LIVENESS_MS: '1500' });
    const pid = Number((await run.waitFor(/rank 0: pid (\d+)/))[1]);
    await run.waitFor(/checkpoint step 5 saved/);
    process.kill(pid, 'SIGSTOP');
    const { code } = await run.exit;
    const out = run.output();
    expect(code, out).toBe(0);
    expect(out).toMatch(/killing worker 0 to restart it \(.*stage 0 answered no liveness probe/);
    expect(out).toMatch(/worker 0 exited with SIGKILL during step \d+; restarting it/);
    expect(maxAbsDiff(await loadSaved(save), await loadSaved(await straightRun()))).toBeLessThan(1e-6);
    expect(alive(pid)).toBe(false);
  }, 60_000);
});
