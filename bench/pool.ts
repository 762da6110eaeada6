/**
 * Task pools: 2,000 tasks of 20 ms (waiting, not computing) over 3 `troupe pool-worker`
 * processes, handed in with `map` and with 2,000 `put`s, side by side in one run: wall time
 * and how many times the tasks ran (each worker prints every execution).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { startNatsServer } from '../src/index.js';
import { Pool } from '../src/pool/index.js';
import { Bus } from '../src/transport/index.js';
import { machineLine, table } from './report.js';

const TASKS = Number(process.env['POOL_TASKS'] ?? 2000);
const WORKERS = 3;
const BIN = fileURLToPath(new URL('../bin/troupe.mjs', import.meta.url));
const TASK = fileURLToPath(new URL('./jobs/sleep.task.ts', import.meta.url));

interface Worker {
  readonly child: ChildProcess;
  readonly output: () => string;
}

async function startWorker(url: string, pool: string): Promise<Worker> {
  const child = spawn(process.execPath, [BIN, 'pool-worker', '--nats', url, '--pool', pool, '--task', TASK], { stdio: ['ignore', 'pipe', 'pipe'] });
  let out = '';
  child.stdout.on('data', (b: Buffer) => (out += b.toString()));
  child.stderr.on('data', (b: Buffer) => (out += b.toString()));
  await new Promise<void>((resolve, reject) => {
    const check = setInterval(() => {
      if (/ready/.test(out)) resolve();
      else if (child.exitCode !== null) reject(new Error(`pool worker exited: ${out}`));
      else return;
      clearInterval(check);
    }, 20);
  });
  return { child, output: () => out };
}

async function run(url: string, how: 'map' | 'put'): Promise<{ seconds: number; executions: number }> {
  const name = `bench-${how}`;
  const workers = await Promise.all(Array.from({ length: WORKERS }, () => startWorker(url, name)));
  const bus = await Bus.connect({ role: 'pool', servers: url });
  const pool = new Pool<number, number>({ bus, name, timeoutMs: 10_000 });
  try {
    const inputs = Array.from({ length: TASKS }, (_, i) => i);
    const t0 = performance.now();
    if (how === 'map') await pool.map(inputs);
    else {
      const ids = inputs.map((x) => pool.put(x));
      for (const id of ids) await pool.get(id);
    }
    const seconds = (performance.now() - t0) / 1000;
    await bus.flush();
    return { seconds, executions: workers.reduce((n, w) => n + (w.output().match(/^ran \d+$/gm)?.length ?? 0), 0) };
  } finally {
    await pool.close();
    await bus.close();
    for (const w of workers) w.child.kill('SIGTERM');
    await Promise.all(workers.map((w) => new Promise((r) => (w.child.exitCode !== null ? r(null) : w.child.once('exit', r)))));
  }
}

export async function benchPool(): Promise<string> {
  const server = await startNatsServer();
  try {
    const map = await run(server.url, 'map');
    const put = await run(server.url, 'put');
    const ideal = (TASKS * 0.02) / WORKERS;
    return [
      `### Task pools: ${TASKS} tasks of 20 ms over ${WORKERS} worker processes (concurrency 32)`,
      '',
      machineLine(),
      '',
      table(
        ['handed in with', 'seconds', 'tasks run', 'against the ideal (20 ms x tasks / workers)'],
        [
          ['map', map.seconds.toFixed(1), String(map.executions), (map.seconds / ideal).toFixed(2)],
          [`${TASKS} x put, then get`, put.seconds.toFixed(1), String(put.executions), (put.seconds / ideal).toFixed(2)],
        ],
      ),
    ].join('\n');
  } finally {
    await server.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchPool());
