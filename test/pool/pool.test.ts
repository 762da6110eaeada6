/**
 * Task pools over a real nats-server, with `troupe pool-worker` processes where the test is
 * about processes: 1,000 tasks with a worker killed midway and one joining late, each answered
 * once in input order; one task among 100 that never answers (a synchronous loop) times out
 * alone while the other 99 and a later batch are answered; SIGTERM stops a worker whose task
 * spins; no task runs twice while no worker dies; a silent worker's task runs again elsewhere
 * and still gets one answer; `put` keeps to `concurrency`; a task's exception is raised in the
 * caller with its index.
 */
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { Bus } from '../../src/transport/bus.js';
import { Pool, PoolTaskError, type TaskAnswer } from '../../src/pool/pool.js';
import { PoolWorker } from '../../src/pool/poolWorker.js';
import { useNatsServer } from '../helpers/nats.js';
import { alive, troupe, type CliRun } from '../helpers/troupeCli.js';
import double from '../fixtures/double.task.js';

const nats = useNatsServer();
const TASK = fileURLToPath(new URL('../fixtures/double.task.ts', import.meta.url));

interface WorkerProcess {
  readonly run: CliRun;
  readonly pid: number;
  readonly id: string;
  /** Its task processes. */
  readonly taskPids: number[];
}

async function startWorkers(pool: string, n: number, env: Record<string, string> = {}, args: readonly string[] = []): Promise<WorkerProcess[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const run = troupe(['pool-worker', '--nats', nats.server.url, '--pool', pool, '--task', TASK, ...args], { DOUBLE_WORK: '1500000', ...env });
      const m = await run.waitFor(/worker (\S+) pid (\d+) ready; task processes ([\d, ]+)/);
      return { run, id: m[1]!, pid: Number(m[2]), taskPids: m[3]!.split(', ').map(Number) };
    }),
  );
}

async function stopWorkers(workers: readonly WorkerProcess[]): Promise<void> {
  for (const w of workers) w.run.child.kill('SIGTERM');
  await Promise.all(workers.map((w) => w.run.exit));
}

/** Inputs each worker process ran (the fixture prints `ran <x>`), counted over all of them. */
function executions(workers: readonly WorkerProcess[]): Map<number, number> {
  const runs = new Map<number, number>();
  for (const w of workers) for (const m of w.run.output().matchAll(/^ran (-?\d+)$/gm)) runs.set(Number(m[1]), (runs.get(Number(m[1])) ?? 0) + 1);
  return runs;
}

/** Resolves once `pid` has exited (polled: it is not our child). */
async function gone(pid: number, timeoutMs = 10_000): Promise<boolean> {
  const t0 = performance.now();
  while (alive(pid)) {
    if (performance.now() - t0 > timeoutMs) return false;
    await new Promise((r) => setTimeout(r, 50));
  }
  return true;
}

describe('Pool over worker processes', () => {
  it('1,000 tasks over 3 workers, one killed midway and one joining: every task answered once, in order', async () => {
    // Worker 0's tasks take 200 ms more, so that once it has printed a start it surely holds that task when killed.
    const workers = (
      await Promise.all([startWorkers('double', 1, { DOUBLE_LOG: '1', DOUBLE_SLEEP_MS: '200' }), startWorkers('double', 2, { DOUBLE_LOG: '1' })])
    ).flat();
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const pool = new Pool<number, number>({ bus, name: 'double', timeoutMs: 20_000, concurrency: 24, heartbeatMs: 200, silentMs: 1_500 });
    const inputs = Array.from({ length: 1000 }, (_, i) => i);
    const seen = new Map<number, number>();
    let late: WorkerProcess | undefined;
    let joining: Promise<void> | undefined;
    let killed = false;
    try {
      const answers = await pool.mapAnswers(inputs, (a: TaskAnswer<number>) => {
        seen.set(a.index, (seen.get(a.index) ?? 0) + 1);
        if (seen.size === 100) joining = startWorkers('double', 1, { DOUBLE_LOG: '1' }).then(([w]) => void (late = w));
        // Dies with a task in hand: it printed that it started one not answered yet.
        const started = /ran (\d+)\n$/.exec(workers[0]!.run.output());
        if (seen.size >= 300 && !killed && started && !seen.has(Number(started[1]))) {
          killed = true;
          process.kill(workers[0]!.pid, 'SIGKILL');
        }
      });
      await joining;
      expect(answers.map((a) => a.output)).toEqual(inputs.map((i) => i * 2));
      expect(answers.map((a) => a.index)).toEqual(inputs);
      expect([...seen.values()].every((n) => n === 1)).toBe(true);
      const by = new Map<string, number>();
      for (const a of answers) by.set(a.worker, (by.get(a.worker) ?? 0) + 1);
      const retried = answers.filter((a) => a.retries > 0).length;
      console.log(`answers by worker: ${JSON.stringify(Object.fromEntries(by))}; sent again after the kill: ${retried}`);
      expect(killed).toBe(true);
      // Every input ran; more than once only when it was sent again (the killed worker's task).
      const runs = executions([...workers, late!]);
      expect(inputs.every((i) => (runs.get(i) ?? 0) >= 1)).toBe(true);
      expect([...runs.values()].reduce((a, b) => a + b, 0)).toBeLessThanOrEqual(1000 + answers.reduce((n, a) => n + a.retries, 0));
      expect(retried).toBeGreaterThanOrEqual(1);
      // The killed worker answered only before it died; the others (and the late one) did the rest.
      expect(by.get(workers[1]!.id)! + by.get(workers[2]!.id)!).toBeGreaterThan(400);
      expect(late, 'the late worker joined before the end').toBeDefined();
      expect(by.get(late!.id) ?? 0, 'the late worker took tasks').toBeGreaterThan(0);
      expect(alive(workers[0]!.pid)).toBe(false);
      // The killed worker's task process did not outlive it.
      expect(await gone(workers[0]!.taskPids[0]!)).toBe(true);
    } finally {
      await pool.close();
      await bus.close();
      await stopWorkers([...workers.slice(1), ...(late ? [late] : [])]);
      await workers[0]!.run.exit;
    }
  }, 90_000);

  it('one task of 100 never answers (a synchronous loop): it alone times out, the other 99 and a later batch are answered, nothing runs twice', async () => {
    const workers = await startWorkers('stuck', 2, { DOUBLE_WORK: '20000', DOUBLE_LOG: '1' });
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const pool = new Pool<number, number>({ bus, name: 'stuck', timeoutMs: 3_000, heartbeatMs: 200, silentMs: 5_000 });
    const inputs = Array.from({ length: 100 }, (_, i) => (i === 37 ? -2 : i));
    try {
      const settled = await pool.mapSettled(inputs);
      const failed = settled.filter((s) => !s.ok);
      expect(failed).toHaveLength(1);
      const err = (failed[0] as { error: unknown }).error;
      expect(err).toBeInstanceOf(PoolTaskError);
      expect((err as PoolTaskError).index).toBe(37);
      expect((err as PoolTaskError).reason).toBe('timeout');
      expect((err as Error).message).toMatch(/^task 37 in worker \S+ ran past its 3000 ms deadline and was stopped \(its process killed\)$/);
      for (const s of settled) if (s.ok) expect(s.output).toBe(s.index * 2);
      // The later batch: both workers serve again (the stuck one's process was killed and replaced).
      expect(await pool.map(Array.from({ length: 20 }, (_, i) => 1000 + i))).toEqual(Array.from({ length: 20 }, (_, i) => 2000 + 2 * i));
      const runs = executions(workers);
      expect([...runs.keys()].sort((a, b) => a - b)).toEqual([...inputs, ...Array.from({ length: 20 }, (_, i) => 1000 + i)].sort((a, b) => a - b));
      expect(
        [...runs.values()].every((n) => n === 1),
        'each input ran once: the stuck one was not sent again',
      ).toBe(true);
      const stopper = workers.find((w) => /ran -2$/m.test(w.run.output()))!;
      expect(stopper.run.output()).toMatch(/task process pid \d+ started in place of a killed one/);
      expect(alive(stopper.taskPids[0]!)).toBe(false);
    } finally {
      await pool.close();
      await bus.close();
      await stopWorkers(workers);
    }
  }, 60_000);

  it('SIGTERM stops a worker whose task spins synchronously: it exits, its task process too, and the task is handed back', async () => {
    const [w] = await startWorkers('spin', 1, { DOUBLE_LOG: '1' });
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const pool = new Pool<number, number>({ bus, name: 'spin', timeoutMs: 120_000, waitForWorkerMs: 1_000 });
    try {
      const id = pool.put(-2);
      await w!.run.waitFor(/^ran -2$/m);
      const t0 = performance.now();
      w!.run.child.kill('SIGTERM');
      const { code } = await w!.run.exit;
      console.log(`the worker exited ${(performance.now() - t0).toFixed(0)} ms after SIGTERM`);
      expect(code).toBe(0);
      expect(w!.run.output()).toMatch(/leaving \(SIGTERM\); 1 running task gets 5000 ms to end/);
      expect(w!.run.output()).toMatch(/left after 0 tasks \(0 failed, 0 timed out, 1 handed back\)/);
      expect(await gone(w!.taskPids[0]!)).toBe(true);
      // Handed back, the task finds no other worker.
      const err = await pool.get(id).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PoolTaskError);
      expect((err as PoolTaskError).reason).toBe('unserved');
    } finally {
      await pool.close();
      await bus.close();
      w!.run.child.kill('SIGKILL');
    }
  }, 60_000);

  it('a worker killed (SIGKILL) while its task spins leaves no task process behind', async () => {
    const [w] = await startWorkers('orphan', 1, { DOUBLE_LOG: '1' });
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const pool = new Pool<number, number>({ bus, name: 'orphan', waitForWorkerMs: 500, heartbeatMs: 200, silentMs: 1_000 });
    try {
      const id = pool.put(-2);
      await w!.run.waitFor(/^ran -2$/m);
      process.kill(w!.pid, 'SIGKILL');
      await w!.run.exit;
      // Its task process spins and cannot read that its channel closed; its watchdog thread ends it.
      expect(await gone(w!.taskPids[0]!)).toBe(true);
      await expect(pool.get(id)).rejects.toThrow(PoolTaskError);
    } finally {
      await pool.close();
      await bus.close();
    }
  }, 60_000);

  it('300 puts over 2 workers of 2 slots while no worker dies: each task runs exactly once, however long it waits', async () => {
    // 300 tasks of 20 ms over 4 slots wait up to 1.5 s for one, longer than the pool's 1 s
    // deadline: a task that waits is not running, and nothing re-sends it.
    const workers = await startWorkers('once', 2, { DOUBLE_WORK: '1000', DOUBLE_SLEEP_MS: '20', DOUBLE_LOG: '1' }, ['--concurrency', '2']);
    for (const w of workers) expect(w.taskPids).toHaveLength(2);
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const pool = new Pool<number, number>({ bus, name: 'once', timeoutMs: 1_000 });
    try {
      const ids = Array.from({ length: 300 }, (_, i) => pool.put(i));
      const outs = await Promise.all(ids.map((id) => pool.get(id)));
      expect(outs).toEqual(ids.map((i) => 2 * i));
      await bus.flush();
      const runs = executions(workers);
      expect(runs.size).toBe(300);
      expect([...runs.values()].reduce((a, b) => a + b, 0)).toBe(300);
    } finally {
      await pool.close();
      await bus.close();
      await stopWorkers(workers);
    }
  }, 60_000);

  it('a silent worker (SIGSTOP) has its task run again elsewhere; the task still gets exactly one answer', async () => {
    const workers = await startWorkers('silent', 2, { DOUBLE_WORK: '1000', DOUBLE_SLEEP_MS: '1500', DOUBLE_LOG: '1' });
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const pool = new Pool<number, number>({ bus, name: 'silent', heartbeatMs: 100, silentMs: 1_500 });
    let frozen: WorkerProcess | undefined;
    try {
      const answered: TaskAnswer<number>[] = [];
      const mapping = pool.mapAnswers([21], (a) => answered.push(a));
      // Whichever worker started it is frozen: no heartbeat, no answer.
      await Promise.race(workers.map((w) => w.run.waitFor(/^ran 21$/m).then(() => (frozen ??= w))));
      process.kill(frozen!.pid, 'SIGSTOP');
      const [a] = await mapping;
      expect(a!.output).toBe(42);
      expect(a!.retries).toBe(1);
      expect(a!.worker).not.toBe(frozen!.id);
      // Thawed, the frozen worker finds the task cancelled (or answers it late): still one answer.
      process.kill(frozen!.pid, 'SIGCONT');
      await frozen!.run.waitFor(/ran 21/);
      await bus.flush();
      expect(answered).toHaveLength(1);
      expect(executions(workers).get(21)).toBe(2); // at least once: twice, after the silence
    } finally {
      if (frozen) process.kill(frozen.pid, 'SIGCONT');
      await pool.close();
      await bus.close();
      await stopWorkers(workers);
    }
  }, 60_000);
});

describe('Pool in one process', () => {
  it("a task's exception is raised in the caller with the input's index; the workers keep serving", async () => {
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const worker = await PoolWorker.start({ bus, pool: 'inproc', task: double });
    const pool = new Pool<number, number>({ bus, name: 'inproc' });
    try {
      const err = await pool.map([1, 2, -1, 4]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PoolTaskError);
      expect((err as PoolTaskError).index).toBe(2);
      expect((err as PoolTaskError).reason).toBe('failed');
      expect((err as Error).message).toMatch(/task 2 failed in worker .*: RangeError: negative input -1/);
      expect(await pool.map([5, 6])).toEqual([10, 12]);
      const id = pool.put(21);
      expect(await pool.get(id)).toBe(42);
      await expect(pool.get(id)).rejects.toThrow(/no task \d+ is pending/);
      expect(worker.actor.getSnapshot().context.failed).toBe(1);
      expect(worker.actor.getSnapshot().value).toBe('idle');
    } finally {
      await pool.close();
      await worker.stop();
      await bus.close();
    }
    expect(worker.actor.getSnapshot().status).not.toBe('active');
  });

  it('put keeps to concurrency: never more tasks out than that, over workers with more room', async () => {
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    let running = 0;
    let most = 0;
    const task = async (x: number) => {
      most = Math.max(most, ++running);
      await new Promise((r) => setTimeout(r, 10));
      running--;
      return x;
    };
    const workers = await Promise.all([0, 1].map(() => PoolWorker.start({ bus, pool: 'bounded', task, concurrency: 4 })));
    const pool = new Pool<number, number>({ bus, name: 'bounded', concurrency: 3 });
    try {
      const ids = Array.from({ length: 40 }, (_, i) => pool.put(i));
      expect(await Promise.all(ids.map((id) => pool.get(id)))).toEqual(ids);
      expect(most).toBe(3);
    } finally {
      await pool.close();
      await Promise.all(workers.map((w) => w.stop()));
      await bus.close();
    }
  });
});
