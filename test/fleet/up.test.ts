import { existsSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs';
import { afterAll, describe, expect, it } from 'vitest';
import { createPipeline, loadModel } from '../../src/index.js';
import { Bus, credentialsFor } from '../../src/transport/index.js';
import { loadCheckpoint } from '../../src/fleet/index.js';
import type { JobConfig } from '../../src/fleet/jobConfig.js';
import interleavedJob from '../fixtures/tiny-interleaved.job.js';
import replicasJob from '../fixtures/tiny-replicas.job.js';
import job from '../fixtures/tiny.job.js';
import { maxAbsDiff } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';
import { alive, loadSaved, printedPids, troupe, troupeToEnd } from '../helpers/troupeCli.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));
const INTERLEAVED = fileURLToPath(new URL('../fixtures/tiny-interleaved.job.ts', import.meta.url));
const REPLICAS = fileURLToPath(new URL('../fixtures/tiny-replicas.job.ts', import.meta.url));
const THREE = fileURLToPath(new URL('../fixtures/tiny-3stages.job.ts', import.meta.url));
const BUDGET = fileURLToPath(new URL('../fixtures/tiny-budget.job.ts', import.meta.url));
const nats = useNatsServer();
const tmp = mkdtempSync(join(tmpdir(), 'troupe-up-'));
afterAll(() => rmSync(tmp, { recursive: true, force: true }));

/** The same job in one process: createPipeline with the stages on this process's NATS connections. */
async function inProcess(steps: number, cfg: JobConfig = job): Promise<tf.LayersModel> {
  const model = await cfg.model();
  const { train } = await cfg.data();
  const pipe = await createPipeline({
    model,
    stages: cfg.stages,
    virtualStages: cfg.virtualStages ?? 1,
    replicas: cfg.replicas ?? 1,
    microbatches: cfg.microbatches,
    schedule: cfg.schedule!,
    optimizer: cfg.optimizer,
    loss: cfg.loss,
    metric: cfg.metric!,
    nats: { servers: nats.server.url },
  });
  const perEpoch = Math.floor(train.x.shape[0] / cfg.batchSize);
  try {
    for (let s = 0; s < steps; s++) {
      const at = (s % perEpoch) * cfg.batchSize;
      const [x, y] = [train.x.slice(at, cfg.batchSize), train.y.slice(at, cfg.batchSize)];
      await pipe.trainStep(x, y);
      tf.dispose([x, y]);
    }
  } finally {
    await pipe.close();
  }
  return model;
}

describe('troupe up with 2 worker processes', () => {
  it('trains to the in-process pipeline weights and leaves no process behind', async () => {
    const save = join(tmp, 'full');
    const { code, output } = await troupeToEnd(['up', CONFIG, '--save', save]);
    expect(code, output).toBe(0);
    expect(output).toMatch(/rank 0: pid \d+ on .*backend wasm, device cpu/);
    expect(output).toMatch(/rank 1: pid \d+ on .*backend wasm, device cpu/);
    expect(output).toMatch(/step 12\/12 epoch 2\/2/);
    expect(output).toMatch(/held-out: loss [\d.]+, metric [\d.]+% on 30 examples/);
    expect(output).toMatch(
      /stage 1: busy [\d.]+ s, idle [\d.]+ s, machine [\d.]+ s, reading frames [\d.]+ s, 52 F \/ 48 B, in [\d.]+ MB, out [\d.]+ MB, peak in flight 1/,
    );
    const pids = printedPids(output);
    expect(pids).toHaveLength(3); // nats-server and two workers
    for (const pid of pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
    const fleet = await loadSaved(save);
    const local = await inProcess(12);
    expect(maxAbsDiff(fleet, local)).toBeLessThan(1e-6);
  });

  it('interleaved: 4 stages on 2 worker processes (2 virtual stages each) train to the in-process weights', async () => {
    const save = join(tmp, 'interleaved');
    const { code, output } = await troupeToEnd(['up', INTERLEAVED, '--save', save]);
    expect(code, output).toBe(0);
    for (const r of [0, 1, 2, 3]) expect(output).toMatch(new RegExp(`rank ${r}: pid \\d+ on`));
    expect(output).toMatch(/step 6\/6 epoch 1\/1/);
    const pids = printedPids(output);
    // nats-server and two workers: ranks 0 and 2 share one process, 1 and 3 the other.
    expect(new Set(pids).size).toBe(3);
    expect(output.match(/rank 0: pid (\d+)/)![1]).toBe(output.match(/rank 2: pid (\d+)/)![1]);
    expect(output.match(/rank 1: pid (\d+)/)![1]).toBe(output.match(/rank 3: pid (\d+)/)![1]);
    for (const pid of pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
    expect(maxAbsDiff(await loadSaved(save), await inProcess(6, interleavedJob))).toBeLessThan(1e-6);
  });

  it('replicas: 2 data-parallel copies of a 2-stage pipeline in 4 worker processes train to the in-process weights', async () => {
    const save = join(tmp, 'replicas');
    const { code, output } = await troupeToEnd(['up', REPLICAS, '--save', save]);
    expect(code, output).toBe(0);
    for (const r of [0, 1]) for (const rank of [0, 1]) expect(output).toMatch(new RegExp(`replica ${r} rank ${rank}: pid \\d+ on`));
    expect(new Set(printedPids(output)).size).toBe(5); // nats-server and 4 workers
    expect(output).toMatch(/step 6\/6 epoch 1\/1/);
    // The summary says which replica each stage line belongs to.
    for (const r of [0, 1]) for (const rank of [0, 1]) expect(output).toMatch(new RegExp(`^  replica ${r} stage ${rank}: busy [\\d.]+ s`, 'm'));
    for (const pid of printedPids(output)) expect(alive(pid), `pid ${pid} still running`).toBe(false);
    expect(maxAbsDiff(await loadSaved(save), await inProcess(6, replicasJob))).toBeLessThan(1e-6);
  });

  it('prints a credentials file (0600) another process logs in with, and removes it at the end', async () => {
    const run = troupe(['up', CONFIG, '--steps', '3']);
    const file = (await run.waitFor(/TROUPE_NATS_CREDENTIALS=(\S+)/))[1]!;
    const url = (await run.waitFor(/NATS (nats:\/\/[\d.:]+)/))[1]!;
    expect(statSync(file).mode & 0o777).toBe(0o600);
    // Only the file: the inspector's password as another process would read it.
    const pass = credentialsFor('inspector', { TROUPE_NATS_CREDENTIALS: file });
    expect(pass).toMatch(/^[A-Za-z]/);
    const inspector = await Bus.connect({ servers: url, user: 'inspector', pass: pass!, maxReconnectAttempts: 0 });
    await inspector.close();
    expect((await run.exit).code, run.output()).toBe(0);
    expect(existsSync(file)).toBe(false);
  });

  it('a 2-stage checkpoint resumes as a 3-stage job (resharded by layer) and ends like 4 uninterrupted steps', async () => {
    const dir = join(tmp, 'ckpt-reshard');
    const first = await troupeToEnd(['up', CONFIG, '--steps', '2', '--checkpoint-dir', dir]);
    expect(first.code, first.output).toBe(0);
    const resumed = await troupeToEnd(['up', THREE, '--steps', '4', '--checkpoint-dir', dir, '--resume', '--save', join(tmp, 'resharded')]);
    expect(resumed.code, resumed.output).toBe(0);
    expect(resumed.output).toMatch(/checkpoint of 2 stages resharded by layer to this job's 3/);
    expect(resumed.output).toMatch(/rank 2: pid \d+/);
    const straight = await troupeToEnd(['up', CONFIG, '--steps', '4', '--save', join(tmp, 'straight-4')]);
    expect(straight.code, straight.output).toBe(0);
    expect(maxAbsDiff(await loadSaved(join(tmp, 'resharded')), await loadSaved(join(tmp, 'straight-4')))).toBeLessThan(1e-5);
  });

  it('troupe checkpoint inspect lists layers, shapes, step and run; export writes a model the loader it names predicts with', async () => {
    const dir = join(tmp, 'ckpt-export');
    const run = await troupeToEnd(['up', CONFIG, '--steps', '3', '--checkpoint-dir', dir, '--save', join(tmp, 'saved-3')]);
    expect(run.code, run.output).toBe(0);
    const shown = await troupeToEnd(['checkpoint', 'inspect', dir]);
    expect(shown.code, shown.output).toBe(0);
    expect(shown.output).toMatch(/step 3 of job tiny/);
    expect(shown.output).toMatch(/2 stages, schedule 1f1b, 4 microbatches/);
    expect(shown.output).toMatch(/dense_Dense1\/kernel \[8, 16\] float32/);
    expect(shown.output).toMatch(/dense_Dense3\/bias \[3\] float32/);
    expect(shown.output).toMatch(/\d+ parameters in all/);
    const exported = await troupeToEnd(['checkpoint', 'export', dir, '--config', CONFIG, '--out', join(tmp, 'exported')]);
    expect(exported.code, exported.output).toBe(0);
    expect(exported.output).toContain(`load it in Node with loadModel(${JSON.stringify(join(tmp, 'exported'))}) from 'troupe'`);
    const model = await loadModel(join(tmp, 'exported'));
    const fleet = await loadSaved(join(tmp, 'saved-3'));
    const x = tf.randomNormal([5, 8], 0, 1, 'float32', 4);
    const [a, b] = [model.predict(x) as tf.Tensor, fleet.predict(x) as tf.Tensor];
    expect(tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]).toBeLessThan(1e-6);
    tf.dispose([x, a, b]);
    expect((await troupeToEnd(['checkpoint', 'inspect'])).code).toBe(2);
  });

  it('memoryBudget: too small fails before any process starts, naming the stage; a feasible one prints the cut and trains', async () => {
    const tooSmall = troupe(['up', BUDGET], { TINY_BUDGET: '2000' });
    expect((await tooSmall.exit).code).toBe(1);
    expect(tooSmall.output()).toMatch(/field "memoryBudget": stage \d needs [\d.]+ MiB \(weights .*\) even in the best cut into 2 stages/);
    expect(printedPids(tooSmall.output())).toEqual([]);
    const fits = troupe(['up', BUDGET, '--steps', '2'], { TINY_BUDGET: '200000' });
    expect((await fits.exit).code, fits.output()).toBe(0);
    expect(fits.output()).toMatch(/cut under the memory budget: stage 0 [\d.]+ MiB .*; stage 1 [\d.]+ MiB/);
  });

  it('2 steps, then --resume to step 4, equals 4 uninterrupted steps', async () => {
    const dir = join(tmp, 'ckpt');
    const first = await troupeToEnd(['up', CONFIG, '--steps', '2', '--checkpoint-dir', dir]);
    expect(first.code, first.output).toBe(0);
    expect((await loadCheckpoint(dir)).meta.step).toBe(2);
    const resumed = await troupeToEnd(['up', CONFIG, '--steps', '4', '--checkpoint-dir', dir, '--resume', '--save', join(tmp, 'resumed')]);
    expect(resumed.code, resumed.output).toBe(0);
    expect(resumed.output).toMatch(/resumed from .* at step 2/);
    expect(resumed.output).toMatch(/2 steps in/);
    const straight = await troupeToEnd(['up', CONFIG, '--steps', '4', '--save', join(tmp, 'straight')]);
    expect(straight.code, straight.output).toBe(0);
    expect(maxAbsDiff(await loadSaved(join(tmp, 'resumed')), await loadSaved(join(tmp, 'straight')))).toBeLessThan(1e-6);
  });

  it('Ctrl-C mid-run (SIGINT to the whole process group): non-zero exit, every process gone, the last checkpoint loads', async () => {
    const dir = join(tmp, 'sigint');
    // 10,000 epochs: the run cannot end before the signal.
    const run = troupe(['up', CONFIG, '-v', '--checkpoint-dir', dir], { TINY_EPOCHS: '10000' }, true);
    await run.waitFor(/checkpoint step 3 saved/);
    const pids = printedPids(run.output());
    expect(pids).toHaveLength(3);
    // As a terminal does: the driver and the workers it forked all get SIGINT.
    process.kill(-run.child.pid!, 'SIGINT');
    const { code } = await run.exit;
    expect(code).toBe(130);
    for (const pid of pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
    const ckpt = await loadCheckpoint(dir);
    expect(ckpt.meta.step).toBeGreaterThanOrEqual(3);
    expect(ckpt.states).toHaveLength(2);
  });

  it('a worker killed mid-run fails the run with a clear message and leaves no process behind', async () => {
    const run = troupe(['up', CONFIG], { TINY_EPOCHS: '10000' });
    await run.waitFor(/step \d+\/\d+ epoch/);
    const pids = printedPids(run.output());
    const victim = Number(/rank 1: pid (\d+)/.exec(run.output())![1]);
    process.kill(victim, 'SIGKILL');
    const { code } = await run.exit;
    expect(code).toBe(1);
    expect(run.output()).toMatch(/worker 1 exited with SIGKILL during the run/);
    for (const pid of pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
  });

  it('with replicas, a dead worker is named by its replica and rank', async () => {
    const run = troupe(['up', REPLICAS], { TINY_EPOCHS: '10000' });
    await run.waitFor(/step \d+\/\d+ epoch/);
    const pids = printedPids(run.output());
    const victim = Number(/replica 1 rank 1: pid (\d+)/.exec(run.output())![1]);
    process.kill(victim, 'SIGKILL');
    const { code } = await run.exit;
    expect(code).toBe(1);
    expect(run.output()).toMatch(/replica 1 rank 1 exited with SIGKILL during the run/);
    expect(run.output()).not.toMatch(/worker \d+ exited/);
    for (const pid of pids) expect(alive(pid), `pid ${pid} still running`).toBe(false);
  });
});
