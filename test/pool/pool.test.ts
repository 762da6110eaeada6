/**
 * Task pools over a real nats-server: 1,000 tasks over 3 worker processes, one killed
 * midway and one joining late; every task answered once, in input order; a task's exception
 * re-raised in the caller with its index.
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

async function startWorkers(pool: string, n: number): Promise<{ run: CliRun; pid: number; id: string }[]> {
  return Promise.all(
    Array.from({ length: n }, async () => {
      const run = troupe(['pool-worker', '--nats', nats.server.url, '--pool', pool, '--task', TASK], { DOUBLE_WORK: '1500000' });
      const m = await run.waitFor(/worker (\S+) pid (\d+) ready/);
      return { run, id: m[1]!, pid: Number(m[2]) };
    }),
  );
}

describe('Pool over worker processes', () => {
  it('1,000 tasks over 3 workers, one killed midway and one joining: every task answered once, in order', async () => {
    const workers = await startWorkers('double', 3);
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const pool = new Pool<number, number>({ bus, name: 'double', timeoutMs: 2_000, concurrency: 24 });
    const inputs = Array.from({ length: 1000 }, (_, i) => i);
    const seen = new Map<number, number>();
    let late: { run: CliRun; pid: number; id: string } | undefined;
    let joining: Promise<void> | undefined;
    try {
      const answers = await pool.mapAnswers(inputs, (a: TaskAnswer<number>) => {
        seen.set(a.index, (seen.get(a.index) ?? 0) + 1);
        if (seen.size === 100) joining = startWorkers('double', 1).then(([w]) => void (late = w));
        if (seen.size === 300) process.kill(workers[0]!.pid, 'SIGKILL'); // dies with tasks in hand
      });
      await joining;
      expect(answers.map((a) => a.output)).toEqual(inputs.map((i) => i * 2));
      expect(answers.map((a) => a.index)).toEqual(inputs);
      expect([...seen.values()].every((n) => n === 1)).toBe(true);
      const by = new Map<string, number>();
      for (const a of answers) by.set(a.worker, (by.get(a.worker) ?? 0) + 1);
      const retried = answers.filter((a) => a.retries > 0).length;
      console.log(`answers by worker: ${JSON.stringify(Object.fromEntries(by))}; sent again after the kill: ${retried}`);
      // The killed worker answered only before it died; the others (and the late one) did the rest.
      expect(by.get(workers[1]!.id)! + by.get(workers[2]!.id)!).toBeGreaterThan(400);
      expect(late, 'the late worker joined before the end').toBeDefined();
      expect(by.get(late!.id) ?? 0, 'the late worker took tasks').toBeGreaterThan(0);
      expect(alive(workers[0]!.pid)).toBe(false);
    } finally {
      await bus.close();
      for (const w of [...workers.slice(1), ...(late ? [late] : [])]) w.run.child.kill('SIGTERM');
      await Promise.all([...workers, ...(late ? [late] : [])].map((w) => w.run.exit));
    }
  }, 60_000);

  it("a task's exception is raised in the caller with the input's index; the workers keep serving", async () => {
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const worker = await PoolWorker.start({ bus, pool: 'inproc', task: double });
    const pool = new Pool<number, number>({ bus, name: 'inproc' });
    try {
      const err = await pool.map([1, 2, -1, 4]).catch((e: unknown) => e);
      expect(err).toBeInstanceOf(PoolTaskError);
      expect((err as PoolTaskError).index).toBe(2);
      expect((err as Error).message).toMatch(/task 2 failed in worker .*: RangeError: negative input -1/);
      expect(await pool.map([5, 6])).toEqual([10, 12]);
      const id = pool.put(21);
      expect(await pool.get(id)).toBe(42);
      await expect(pool.get(id)).rejects.toThrow(/no task \d+ is pending/);
      expect(worker.actor.getSnapshot().context.failed).toBe(1);
      expect(worker.actor.getSnapshot().value).toBe('idle');
    } finally {
      await worker.stop();
      await bus.close();
    }
    expect(worker.actor.getSnapshot().status).not.toBe('active');
  });
});
