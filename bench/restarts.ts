/**
 * What `troupe up --restarts` costs while nothing fails: the steady-state time of a run and
 * stage 0's bytes, without restarts, with them (the driver keeps the stages' state every few
 * steps, the default cadence), and with the state kept after every step (`--keep-every 1`,
 * what restarts did before), measured side by side in interleaved rounds.
 *
 *   npx tsx bench/run.ts restarts        (part of npm run bench)
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import type { StatsMessage } from '../src/protocol/messages.js';
import { machineLine, median, table } from './report.js';

const run = promisify(execFile);
const ROUNDS = Number(process.env['ROUNDS'] ?? 5);
const STEPS = Number(process.env['BENCH_STEPS'] ?? 48);
/** Steps before the steady state (JIT, first packing of weights): left out of the time. */
const WARM = 2;

interface FleetResult {
  stepMs: number[];
  stats: StatsMessage[];
  steps: (StatsMessage & { at: number })[];
}

const SERIES = [
  { name: 'no restarts', env: {} },
  { name: '--restarts 3 (kept every k steps, the default)', env: { BENCH_RESTARTS: '3' } },
  { name: '--restarts 3 --keep-every 1 (kept after every step)', env: { BENCH_RESTARTS: '3', BENCH_KEEP_EVERY: '1' } },
] as const;

async function fleet(env: Record<string, string>): Promise<FleetResult> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL('./fleetRun.ts', import.meta.url).pathname], {
    env: {
      ...process.env,
      BENCH_MODEL: 'mlp',
      BENCH_STAGES: '2',
      BENCH_M: '4',
      BENCH_SCHEDULE: '1f1b',
      BENCH_OPTIMIZER: 'adam',
      BENCH_STEPS: String(STEPS),
      TROUPE_BACKEND: 'wasm',
      ...env,
    },
    maxBuffer: 1 << 24,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!) as FleetResult;
}

/**
 * Milliseconds from the end of the last warm-up step to the end of the last step, keeps
 * included: when stage 0 published its counters after each (it does at each step's end).
 */
function steadyMs(r: FleetResult): number {
  const ends = r.steps.filter((s) => s.rank === 0).map((s) => s.at);
  return ends[ends.length - 1]! - ends[WARM - 1]!;
}

export async function benchRestarts(): Promise<string> {
  const results = SERIES.map(() => ({ ms: [] as number[], bytes: [] as number[] }));
  for (let round = 0; round < ROUNDS; round++) {
    for (const [i, s] of SERIES.entries()) {
      const r = await fleet(s.env);
      results[i]!.ms.push(steadyMs(r));
      results[i]!.bytes.push(r.stats.find((st) => st.rank === 0)!.bytesOut);
    }
  }
  // Ratios within each round (the runs of a round are next to each other in time), then their median.
  const ratio = (xs: readonly number[], base: readonly number[]) => median(xs.map((x, r) => x / base[r]!));
  const rows = SERIES.map((s, i) => {
    const { ms, bytes } = results[i]!;
    return [
      s.name,
      (median(ms) / (STEPS - WARM)).toFixed(1),
      ratio(ms, results[0]!.ms).toFixed(3),
      (median(bytes) / 1e6).toFixed(1),
      ratio(bytes, results[0]!.bytes).toFixed(2),
    ];
  });
  return [
    '### `troupe up --restarts`: time and bytes while nothing fails',
    '',
    `Reference MLP 784-1024-1024-10, batch 256, 2 stages in worker processes, 1F1B, m = 4, Adam, ${STEPS} steps; time from the end of step ${WARM} to the`,
    `end of step ${STEPS} (keeps included); ${ROUNDS} interleaved rounds, medians, ratios taken within each round. Stage 0's bytes out include the state`,
    `it sends the driver (every run sends its final state once). Workers on wasm. ${machineLine()}`,
    '',
    table(['run', 'ms/step', 'time ratio', "stage 0's MB out", 'bytes ratio'], rows),
    '',
    'Targets (#20.7): --restarts within 1.10x the time and 1.5x the bytes of a run without it.',
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchRestarts());
