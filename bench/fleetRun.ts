/**
 * One benchmark run of the fleet (a child process, so every configuration starts fresh):
 * prints JSON with the step times, the stages' final counters, and each stage's counters as
 * published after every step (`steps`, with `at`: when each came, ms), so that a steady-state
 * figure can leave the warm-up steps out. BENCH_RESTARTS and BENCH_KEEP_EVERY set `troupe up
 * --restarts` and `--keep-every`.
 */
import { runJob, startNatsServer } from '../src/index.js';
import { decodeMessage } from '../src/protocol/messages.js';
import type { StatsMessage } from '../src/protocol/messages.js';
import { Bus } from '../src/transport/bus.js';

const trace = process.env['BENCH_TRACE'];
const server = await startNatsServer();
const spy = await Bus.connect({ role: 'admin', servers: server.url, name: 'bench-stats' });
const steps: (StatsMessage & { at: number })[] = [];
spy.subscribe('troupe.bench.stats.*', (m) => steps.push({ ...decodeMessage('stats', m.data), at: performance.now() }));
const restarts = process.env['BENCH_RESTARTS'];
const keepEvery = process.env['BENCH_KEEP_EVERY'];
await spy.flush();
try {
  const result = await runJob({ config: new URL('./jobs/bench.job.ts', import.meta.url).pathname, nats: server.url, progress: false, out: { write: () => true } as unknown as NodeJS.WritableStream, ...(trace ? { trace } : {}), ...(restarts ? { restarts: Number(restarts) } : {}), ...(keepEvery ? { keepEvery: Number(keepEvery) } : {}) });
  await spy.flush();
  process.stdout.write(`${JSON.stringify({ stepMs: result.stepMs, stats: result.stats, steps })}\n`);
} finally {
  await spy.close();
  await server.stop();
}
