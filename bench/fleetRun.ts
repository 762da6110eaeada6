/**
 * One benchmark run of the fleet (a child process, so every configuration starts fresh):
 * prints JSON with the step times, the stages' final counters, each stage's counters as
 * published after every step (`steps`, with `at`: when each came, ms), so that a steady-state
 * figure can leave the warm-up steps out, every action event the stages sent (with their
 * timings), and the CPU time of nats-server, the workers and the driver sampled from /proc
 * over the run. BENCH_RESTARTS and BENCH_KEEP_EVERY set `troupe up --restarts` and `--keep-every`.
 */
import { runJob, startNatsServer } from '../src/index.js';
import { decodeMessage, type ActionEvent, type Hello } from '../src/protocol/messages.js';
import type { StatsMessage } from '../src/protocol/messages.js';
import { Bus } from '../src/transport/bus.js';
import { sampleCpu } from './procCpu.js';

const trace = process.env['BENCH_TRACE'];
const server = await startNatsServer();
const spy = await Bus.connect({ role: 'admin', servers: server.url, name: 'bench-stats' });
const steps: (StatsMessage & { at: number })[] = [];
const actions: ActionEvent[] = [];
const hellos: Hello[] = [];
spy.subscribe('troupe.bench.stats.*', (m) => steps.push({ ...decodeMessage('stats', m.data), at: performance.now() }));
spy.subscribe('troupe.bench.sched.*.action', (m) => actions.push(decodeMessage('action', m.data)));
spy.subscribe('troupe.bench.hello', (m) => hellos.push(decodeMessage('hello', m.data)));
const restarts = process.env['BENCH_RESTARTS'];
const keepEvery = process.env['BENCH_KEEP_EVERY'];
await spy.flush();
// Workers join by their hello; `stage<r>` is the process hosting stage r (co-hosted stages share one).
const cpu = sampleCpu(
  () => ({ nats: server.pid, driver: process.pid, ...Object.fromEntries(hellos.map((h) => [`stage${h.rank}`, h.pid])) }),
  Number(process.env['BENCH_CPU_MS'] ?? 100),
);
try {
  const result = await runJob({
    config: new URL('./jobs/bench.job.ts', import.meta.url).pathname,
    nats: server.url,
    progress: false,
    out: { write: () => true } as unknown as NodeJS.WritableStream,
    ...(trace ? { trace } : {}),
    ...(restarts ? { restarts: Number(restarts) } : {}),
    ...(keepEvery ? { keepEvery: Number(keepEvery) } : {}),
  });
  await spy.flush();
  process.stdout.write(`${JSON.stringify({ stepMs: result.stepMs, stats: result.stats, steps, actions, hellos, cpu: cpu.stop() })}\n`);
} finally {
  cpu.stop();
  await spy.close();
  await server.stop();
}
