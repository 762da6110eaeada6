/**
 * Per-hop latency: how a 2-stage step (m = 4, the uniform MLP at 256 wide, batch 128) grows
 * with a delay added to everything stage 1 receives (a TCP proxy in front of nats-server,
 * delayProxy.ts). Delays alternate in phases within one run (0, 10, 20 ms, three times), so
 * the machine's drift cancels; the slope is fitted to each step's time against the delay the
 * proxy really added. Frames stay on NATS (TROUPE_DIRECT=0): the relay is what is delayed.
 * HOP_DELAYS, HOP_PHASE and HOP_SCHEDULES shape it.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { selectBackend } from '../src/compute/backend.js';
import { machineLine, median, table } from './report.js';

const run = promisify(execFile);
const DELAYS = (process.env['HOP_DELAYS'] ?? '0,10,20,0,10,20,0,10,20').split(',').map(Number);
const K = Number(process.env['HOP_PHASE'] ?? 8);
/** Steps at the start of a phase left out: the step begun under the previous delay. */
const SKIP = 2;

interface HopRun {
  readonly stepMs: number[];
  readonly phases: { delay: number; first: number; last: number; addedMs: number }[];
}

/** Least-squares slope of y against x. */
function slope(xs: readonly number[], ys: readonly number[]): number {
  const mx = xs.reduce((a, b) => a + b, 0) / xs.length;
  const my = ys.reduce((a, b) => a + b, 0) / ys.length;
  let num = 0;
  let den = 0;
  for (let i = 0; i < xs.length; i++) {
    num += (xs[i]! - mx) * (ys[i]! - my);
    den += (xs[i]! - mx) ** 2;
  }
  return den === 0 ? 0 : num / den;
}

export async function benchHops(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null });
  const rows: string[][] = [];
  const unique = [...new Set(DELAYS)].sort((a, b) => a - b);
  for (const schedule of (process.env['HOP_SCHEDULES'] ?? '1f1b,zbh1').split(',')) {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL('./hopRun.ts', import.meta.url).pathname], {
      env: {
        ...process.env,
        BENCH_MODEL: 'uniform',
        BENCH_WIDTH: '256',
        BENCH_BATCH: '128',
        BENCH_M: '4',
        BENCH_STAGES: '2',
        BENCH_SCHEDULE: schedule,
        BENCH_STEPS: String(2 + DELAYS.length * K),
        HOP_DELAYS: DELAYS.join(','),
        HOP_PHASE: String(K),
        TROUPE_BACKEND: 'wasm',
      },
      maxBuffer: 1 << 24,
    });
    const r = JSON.parse(stdout.trim().split('\n').pop()!) as HopRun;
    const xs: number[] = [];
    const ys: number[] = [];
    const byDelay = new Map<number, number[]>();
    const added = new Map<number, number[]>();
    for (const ph of r.phases) {
      for (let s = ph.first + SKIP; s <= ph.last; s++) {
        const ms = r.stepMs[s - 1];
        if (ms === undefined) continue;
        xs.push(ph.addedMs);
        ys.push(ms);
        (byDelay.get(ph.delay) ?? byDelay.set(ph.delay, []).get(ph.delay)!).push(ms);
      }
      (added.get(ph.delay) ?? added.set(ph.delay, []).get(ph.delay)!).push(ph.addedMs);
    }
    rows.push([
      schedule,
      ...unique.map((d) => `${median(byDelay.get(d) ?? [0]).toFixed(1)} (+${median(added.get(d) ?? [0]).toFixed(2)})`),
      slope(xs, ys).toFixed(2),
    ]);
  }
  return [
    '### Per-hop latency: step time against a delay added before stage 1 (2 stages, m = 4)',
    '',
    `${machineLine()} The uniform MLP 8 x 256, batch 128, one worker process per stage; ` +
      'stage 1 reaches nats-server through a proxy that holds back what the server sends it (frames, labels, plans, UPDATE) by the delay; ' +
      `stage 0 and the driver connect directly. Phases of ${K} steps (the first ${SKIP} of each left out) alternate the delays ` +
      `${DELAYS.join(', ')} ms in one run. Cells: median ms per step (and the delay the proxy really added, mean per chunk); ` +
      'the slope is ms per step per ms of added delay, fitted to every step against the added delay.',
    '',
    table(['schedule', ...unique.map((d) => `+${d} ms`), 'slope (ms per ms)'], rows),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchHops());
