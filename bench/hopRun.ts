/**
 * One 2-stage fleet run whose stage 1 reaches NATS through a delaying proxy (delayProxy.ts),
 * the delay changed every HOP_PHASE steps along HOP_DELAYS (ms); stage 0 and the driver
 * connect directly. A child process (the job config reads BENCH_* when it is imported).
 * Prints JSON: the step times and, per phase, its delay and the delay the proxy really added.
 */
import { fork } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { runJob, startNatsServer } from '../src/index.js';
import { decodeMessage } from '../src/protocol/messages.js';
import { Bus } from '../src/transport/bus.js';
import { startDelayProxy } from './delayProxy.js';

const WARM = 2;
const delays = (process.env['HOP_DELAYS'] ?? '0,1,2,4').split(',').map(Number);
const K = Number(process.env['HOP_PHASE'] ?? 6);
const steps = Number(process.env['BENCH_STEPS']);
if (steps !== WARM + delays.length * K) throw new Error(`BENCH_STEPS must be ${WARM + delays.length * K}`);

const server = await startNatsServer();
const proxy = await startDelayProxy(server.port);
const spy = await Bus.connect({ role: 'admin', servers: server.url, name: 'bench-hops', direct: false });
const phases: { delay: number; first: number; last: number; addedMs: number }[] = [];
spy.subscribe('troupe.bench.stats.1', (m) => {
  const { step } = decodeMessage('stats', m.data);
  if (step < WARM || (step - WARM) % K !== 0) return;
  const j = (step - WARM) / K;
  void proxy.report().then((r) => {
    if (j > 0) phases[j - 1]!.addedMs = r.meanMs;
  });
  if (j < delays.length) {
    phases.push({ delay: delays[j]!, first: step + 1, last: step + K, addedMs: 0 });
    proxy.setDelay(delays[j]!);
  }
});
await spy.flush();
const config = fileURLToPath(new URL('./jobs/bench.job.ts', import.meta.url));
const bin = fileURLToPath(new URL('../bin/troupe.mjs', import.meta.url));
// A run that does not end in time says so and leaves nothing behind.
const limit = setTimeout(
  () => {
    process.stderr.write(`hopRun: no end after ${Number(process.env['HOP_TIMEOUT_MS'] ?? 300_000)} ms\n`);
    for (const w of workers) w.kill('SIGKILL');
    proxy.close();
    void server.stop().finally(() => process.exit(2));
  },
  Number(process.env['HOP_TIMEOUT_MS'] ?? 300_000),
);
limit.unref();
const workers = [server.url, proxy.url].map((url, rank) =>
  fork(bin, ['worker', '--nats', url, '--job', 'bench', '--rank', String(rank), '--config', config], {
    env: { ...process.env, TROUPE_DIRECT: '0' },
    stdio: ['ignore', 'ignore', 'inherit', 'ipc'],
  }),
);
try {
  const result = await runJob({ config, nats: server.url, spawn: false, progress: false, out: { write: () => true } as unknown as NodeJS.WritableStream });
  await new Promise((r) => setTimeout(r, 50)); // the last report
  process.stdout.write(`${JSON.stringify({ stepMs: result.stepMs, phases })}\n`);
} finally {
  clearTimeout(limit);
  for (const w of workers) if (w.exitCode === null) w.kill();
  proxy.close();
  await spy.close();
  await server.stop();
}
