/**
 * Step time of the reference MLP (784-1024-1024-10, batch 256) and a small conv net:
 * stock `model.fit` on wasm, the same with Troupe's matMul kernel, Troupe with 1 stage and
 * with 2 stages in worker processes (1F1B and GPipe, m = 4, 8, 16); FLOP utilisation
 * against the backend's measured matMul peak; bubble per stage; scheduling overhead.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { selectBackend } from '../src/index.js';
import type { StatsMessage } from '../src/protocol/messages.js';
import { BATCH, benchData, benchModel } from './jobs/bench.job.js';
import { trainFlops } from './flops.js';
import { machineLine, median, table } from './report.js';

const run = promisify(execFile);
const STEPS = Number(process.env['BENCH_STEPS'] ?? 12);
const MS = [4, 8, 16];
const MODELS = (process.env['BENCH_MODELS'] ?? 'mlp,conv').split(',') as ('mlp' | 'conv')[];

interface FleetResult { stepMs: number[]; stats: StatsMessage[] }

async function fleet(model: string, stages: number, m: number, schedule: string): Promise<FleetResult> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL('./fleetRun.ts', import.meta.url).pathname], {
    env: { ...process.env, BENCH_MODEL: model, BENCH_STAGES: String(stages), BENCH_M: String(m), BENCH_SCHEDULE: schedule, BENCH_BATCH: String(BATCH), BENCH_STEPS: String(STEPS), TROUPE_BACKEND: 'wasm' },
    maxBuffer: 1 << 24,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!) as FleetResult;
}

/** Median step time after the first two (warm-up) steps. */
const steady = (ms: readonly number[]) => median(ms.slice(2));

async function fitMs(kind: 'mlp' | 'conv', steps: number): Promise<number> {
  const model = benchModel(kind);
  const { x, y } = benchData(BATCH, kind);
  model.compile({ optimizer: tf.train.sgd(0.01), loss: 'categoricalCrossentropy' });
  await model.fit(x, y, { batchSize: BATCH, epochs: 1, verbose: 0 }); // warm-up
  const times: number[] = [];
  for (let i = 0; i < steps; i++) {
    const t0 = performance.now();
    await model.fit(x, y, { batchSize: BATCH, epochs: 1, verbose: 0 });
    times.push(performance.now() - t0);
  }
  tf.dispose([x, y]);
  model.dispose();
  return median(times);
}

/** Best of 10 timed 1024^3 products (no read-back): what one core's wasm matMul can do. */
function matMulPeak(): number {
  const a = tf.randomNormal([1024, 1024]);
  const b = tf.randomNormal([1024, 1024]);
  tf.matMul(a, b).dispose();
  let best = Infinity;
  for (let i = 0; i < 10; i++) {
    const t0 = performance.now();
    tf.matMul(a, b).dispose();
    best = Math.min(best, (performance.now() - t0) / 1000);
  }
  tf.dispose([a, b]);
  return (2 * 1024 ** 3) / best;
}

export async function benchSteps(): Promise<string> {
  // Stock tfjs first: before selectBackend installs Troupe's BatchMatMul for wasm.
  await tf.setBackend('wasm');
  // Stock wasm cannot train the conv net at all: it has no Conv2DBackpropFilter kernel.
  const stockConv = await fitMs('conv', 3).catch((err: unknown) => ({ failed: String((err as Error).message ?? err) }));
  const stock = { mlp: await fitMs('mlp', 2), conv: typeof stockConv === 'number' ? stockConv : Number.NaN };
  await selectBackend({ prefer: 'wasm', log: null });
  const patched = { mlp: await fitMs('mlp', 4), conv: await fitMs('conv', 4) };
  // The peak is the best product seen at several moments of the run: this machine's speed drifts.
  let peak = matMulPeak();
  const out: string[] = [`### Step time (batch ${BATCH}, wasm, ${STEPS} steps per run, median after 2 warm-up steps)`, '', machineLine(), ''];
  const bubbleRows: string[][] = [];
  const overheadRows: string[][] = [];
  const targetRows: string[][] = [];
  for (const model of MODELS) {
    const flops = trainFlops(benchModel(model), BATCH);
    const measured: { name: string; ms: number }[] = [];
    const add = (name: string, ms: number) => measured.push({ name, ms });
    add('stock model.fit', stock[model]);
    if (Number.isNaN(stock[model]) && typeof stockConv !== 'number') measured[0]!.name += ` (${stockConv.failed.split('\n')[0]})`;
    add("model.fit with Troupe's wasm matMul", patched[model]);
    const one = await fleet(model, 1, 1, '1f1b');
    add('Troupe, 1 stage, 1 worker process', steady(one.stepMs));
    const oneAt: Record<number, number> = {};
    for (const m of MS) {
      const r = await fleet(model, 1, m, '1f1b');
      oneAt[m] = steady(r.stepMs);
      add(`Troupe, 1 stage, m=${m}`, oneAt[m]);
      const wall = r.stepMs.reduce((a, b) => a + b, 0);
      overheadRows.push([model, `1 stage, m=${m}`, ((wall - r.stats[0]!.busyMs) / (r.stepMs.length * m)).toFixed(3)]);
    }
    for (const schedule of ['1f1b', 'gpipe']) {
      for (const m of MS) {
        const r = await fleet(model, 2, m, schedule);
        const ms = steady(r.stepMs);
        add(`Troupe, 2 stages in 2 processes, ${schedule}, m=${m}`, ms);
        const theory = 1 / (m + 1);
        for (const s of r.stats) bubbleRows.push([model, schedule, String(m), String(s.rank), `${((s.idleMs / (s.idleMs + s.busyMs)) * 100).toFixed(1)}%`, `${(theory * 100).toFixed(1)}%`]);
        const ideal = 2 * (m / (m + 1));
        targetRows.push([model, schedule, String(m), (oneAt[m]! / ms).toFixed(2), ideal.toFixed(2), `${(((oneAt[m]! / ms) / ideal) * 100).toFixed(0)}%`]);
      }
    }
    peak = Math.max(peak, matMulPeak());
    const rows = measured.map(({ name, ms }) =>
      Number.isNaN(ms) ? [name, 'fails', '-', '-', '-'] : [name, ms.toFixed(1), Number.isNaN(stock[model]) ? '-' : (stock[model] / ms).toFixed(2), ((flops / (ms / 1000)) / 1e9).toFixed(2), `${(((flops / (ms / 1000)) / peak) * 100).toFixed(1)}%`],
    );
    out.push(`#### ${model === 'mlp' ? 'MLP 784-1024-1024-10' : 'conv net (conv16-pool-conv32-pool-dense128-dense10)'}: ${(flops / 1e9).toFixed(2)} GFLOP per step (forward + backward)`, '');
    out.push(table(['configuration', 'ms/step', 'speed-up vs stock fit', 'GFLOP/s', 'of matMul peak'], rows), '');
  }
  out.push(`matMul peak of the wasm backend on one core (1024 x 1024 x 1024, best product seen during the run): ${(peak / 1e9).toFixed(1)} GFLOP/s. "Of matMul peak" uses model FLOPs (forward + backward).`, '');
  out.push('### 2 stages against 1 stage at the same microbatch size', '', 'Throughput ratio (1-stage step time / 2-stage step time) against the ideal 2 x m/(m+p-1); target: at least 90 % of ideal.', '');
  out.push(table(['model', 'schedule', 'm', 'measured speed-up', 'ideal', 'of ideal'], targetRows), '');
  out.push('### Bubble: idle share of each stage against (p-1)/(m+p-1)', '', table(['model', 'schedule', 'm', 'stage', 'measured idle', 'theoretical'], bubbleRows), '');
  out.push('### Scheduling overhead per microbatch', '', '(sum of step wall times - the stage\'s busy time: compute, publishing, update) / (steps x m), one stage in a worker process: plans, INPUT frames, events and waiting, in ms; target under 0.5 ms.', '');
  out.push(table(['model', 'configuration', 'ms per microbatch'], overheadRows));
  return out.join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchSteps());
