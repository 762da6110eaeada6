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
import { selectBackend, startNatsServer } from '../src/index.js';
import type { StatsMessage } from '../src/protocol/messages.js';
import { BATCH, UNIFORM_LAYERS, UNIFORM_WIDTH, benchData, benchModel } from './jobs/bench.job.js';
import { trainFlops } from './flops.js';
import { receiveMsPerByte } from './receiveCost.js';
import { machineLine, median, table } from './report.js';

const run = promisify(execFile);
const STEPS = Number(process.env['BENCH_STEPS'] ?? 12);
const MS = [4, 8, 16];
const MODELS = (process.env['BENCH_MODELS'] ?? 'mlp,conv').split(',') as ('mlp' | 'conv')[];

/** Step times, the stages' final counters, and their counters after every step (published at each DONE). */
interface FleetResult {
  stepMs: number[];
  stats: StatsMessage[];
  steps: StatsMessage[];
}

async function fleet(model: string, stages: number, m: number, schedule: string): Promise<FleetResult> {
  // The uniform MLP's steps are 5x longer: fewer of them.
  const steps = model === 'uniform' ? Math.min(STEPS, 8) : STEPS;
  const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL('./fleetRun.ts', import.meta.url).pathname], {
    env: {
      ...process.env,
      BENCH_MODEL: model,
      BENCH_STAGES: String(stages),
      BENCH_M: String(m),
      BENCH_SCHEDULE: schedule,
      BENCH_BATCH: String(BATCH),
      BENCH_STEPS: String(steps),
      TROUPE_BACKEND: 'wasm',
    },
    maxBuffer: 1 << 24,
  });
  return JSON.parse(stdout.trim().split('\n').pop()!) as FleetResult;
}

/** Steps before the steady state (JIT, first packing of weights). */
const WARM = 2;

/** Median step time after the first two (warm-up) steps. */
const steady = (ms: readonly number[]) => median(ms.slice(WARM));

/**
 * Scheduling overhead of a 1-stage run, ms per microbatch, in the steady state: the wall time
 * of the steps after the warm-up less what the stage was busy meanwhile (its counters after
 * the last warm-up step and after the last step), over their microbatches.
 */
function overheadPerMicrobatch(r: FleetResult, m: number): number {
  const wall = r.stepMs.slice(WARM).reduce((a, b) => a + b, 0);
  return (wall - afterWarmUp(r, 0, 'busyMs')) / ((r.stepMs.length - WARM) * m);
}

/** Stage 0's `counter` ms per microbatch after the warm-up (the parts of the overhead the stage counts). */
function perMicrobatch(r: FleetResult, m: number, counter: TimeCounter): number {
  return afterWarmUp(r, 0, counter) / ((r.stepMs.length - WARM) * m);
}

/** Stage `rank`'s busy ms per step after the warm-up. */
function steadyBusy(r: FleetResult, rank: number): number {
  return afterWarmUp(r, rank, 'busyMs') / (r.stepMs.length - WARM);
}

type TimeCounter = 'busyMs' | 'machineMs' | 'framesMs' | 'bytesIn';

/** Stage `rank`'s `counter` ms over the steps after the warm-up: its counters after the last step less those after the last warm-up step. */
function afterWarmUp(r: FleetResult, rank: number, counter: TimeCounter): number {
  const at = (step: number) => r.steps.find((s) => s.rank === rank && s.step === step)?.[counter];
  const n = r.stepMs.length;
  const from = at(WARM);
  const to = at(n);
  if (from === undefined || to === undefined) throw new Error(`stage ${rank} published no counters after step ${from === undefined ? WARM : n}`);
  return to - from;
}

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

/** Rounds of the fleet runs: each round runs every configuration once, so ratios are taken within a round. */
const ROUNDS = Number(process.env['BENCH_ROUNDS'] ?? 2);
const SCHEDULES = ['1f1b', 'gpipe'];
/** The uniform MLP (8 equal layers) is cut into equal halves: the 2-against-1 table shows it beside the others. */
const UNIFORM = process.env['BENCH_UNIFORM'] !== '0';

type ModelKind = 'mlp' | 'conv' | 'uniform';

/** One round's fleet runs of a model: 1 stage (m = 1 and each m), 2 stages per schedule and m. */
interface Round {
  one: number;
  oneAt: Record<number, FleetResult>;
  two: Record<string, Record<number, FleetResult>>;
}

async function round(model: ModelKind, schedules: readonly string[], withM1: boolean): Promise<Round> {
  const r: Round = { one: Number.NaN, oneAt: {}, two: {} };
  if (withM1) r.one = steady((await fleet(model, 1, 1, '1f1b')).stepMs);
  for (const m of MS) {
    r.oneAt[m] = await fleet(model, 1, m, '1f1b');
    for (const sch of schedules) (r.two[sch] ??= {})[m] = await fleet(model, 2, m, sch);
  }
  return r;
}

const pct = (x: number) => `${(x * 100).toFixed(0)}%`;
const range = (xs: readonly number[], f: (x: number) => string) => (xs.length > 1 ? `${f(Math.min(...xs))}-${f(Math.max(...xs))}` : f(xs[0]!));

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
  const server = await startNatsServer();
  try {
    const out: string[] = [
      `### Step time (batch ${BATCH}, wasm, ${STEPS} steps per run, median after 2 warm-up steps; median of ${ROUNDS} rounds)`,
      '',
      machineLine(),
      '',
    ];
    const bubbleRows: string[][] = [];
    const overheadRows: string[][] = [];
    const targetRows: string[][] = [];
    const kinds: ModelKind[] = [...MODELS, ...(UNIFORM ? (['uniform'] as const) : [])];
    for (const model of kinds) {
      const ratioOnly = model === 'uniform';
      // The even cut also runs ZB-H1, whose bubble (p-1)/(3m+p-1) is the smallest of the 2-device schedules.
      const schedules = ratioOnly ? ['1f1b', 'zbh1'] : SCHEDULES;
      const rounds: Round[] = [];
      for (let i = 0; i < ROUNDS; i++) rounds.push(await round(model, schedules, !ratioOnly));
      const med = (f: (r: Round) => number) => median(rounds.map(f));
      for (const sch of schedules) {
        for (const m of MS) {
          // Per round: 1 stage against 2 stages run minutes apart at most, so the VM's drift mostly cancels.
          const speedups = rounds.map((r) => steady(r.oneAt[m]!.stepMs) / steady(r.two[sch]![m]!.stepMs));
          const ideal = 2 * (m / (m + 1));
          // This cut's best: the busier stage's compute plus one microbatch of the other (fill and drain), with the stage times of that run.
          const best = rounds.map((r) => {
            const two = r.two[sch]![m]!;
            const busy = two.stats.map((st) => steadyBusy(two, st.rank));
            const max = Math.max(...busy);
            const rest = busy.reduce((a, b) => a + b, 0) - max;
            return { speedup: steady(r.oneAt[m]!.stepMs) / (max + rest / m), share: max / (max + rest), eff: (max + rest / m) / steady(two.stepMs) };
          });
          const s = median(speedups);
          targetRows.push([
            model,
            sch,
            String(m),
            s.toFixed(2),
            range(speedups, (x) => x.toFixed(2)),
            ideal.toFixed(2),
            pct(s / ideal),
            pct(median(best.map((b) => b.share))),
            median(best.map((b) => b.speedup)).toFixed(2),
            pct(median(best.map((b) => b.eff))),
          ]);
          const last = rounds[rounds.length - 1]!.two[sch]![m]!;
          const theory = sch === 'zbh1' ? 1 / (3 * m + 1) : 1 / (m + 1);
          for (const st of last.stats)
            bubbleRows.push([
              model,
              sch,
              String(m),
              String(st.rank),
              `${((st.idleMs / (st.idleMs + st.busyMs)) * 100).toFixed(1)}%`,
              `${(theory * 100).toFixed(1)}%`,
            ]);
        }
      }
      for (const m of MS) {
        const per = rounds.map((r) => overheadPerMicrobatch(r.oneAt[m]!, m));
        const machine = median(rounds.map((r) => perMicrobatch(r.oneAt[m]!, m, 'machineMs')));
        const frames = median(rounds.map((r) => perMicrobatch(r.oneAt[m]!, m, 'framesMs')));
        // Receiving the bytes is transfer: priced at what a raw NATS subscriber's loop spends per byte of that size, measured now.
        const bytes = median(rounds.map((r) => perMicrobatch(r.oneAt[m]!, m, 'bytesIn')));
        const receive = bytes * (await receiveMsPerByte(server.url, Math.round(bytes), Math.max(16, Math.ceil(32e6 / bytes))));
        const sched = median(per) - receive;
        overheadRows.push([
          model,
          `1 stage, m=${m}`,
          median(per).toFixed(3),
          range(per, (x) => x.toFixed(3)),
          `${(bytes / 1024).toFixed(0)} KB`,
          receive.toFixed(3),
          sched.toFixed(3),
          machine.toFixed(3),
          frames.toFixed(3),
          (sched - machine - frames).toFixed(3),
        ]);
      }
      if (ratioOnly) continue;
      const flops = trainFlops(benchModel(model), BATCH);
      const measured: { name: string; ms: number }[] = [];
      const add = (name: string, ms: number) => measured.push({ name, ms });
      add('stock model.fit', stock[model]);
      if (Number.isNaN(stock[model]) && typeof stockConv !== 'number') measured[0]!.name += ` (${stockConv.failed.split('\n')[0]})`;
      add("model.fit with Troupe's wasm matMul", patched[model]);
      add(
        'Troupe, 1 stage, 1 worker process',
        med((r) => r.one),
      );
      for (const m of MS)
        add(
          `Troupe, 1 stage, m=${m}`,
          med((r) => steady(r.oneAt[m]!.stepMs)),
        );
      for (const sch of schedules)
        for (const m of MS)
          add(
            `Troupe, 2 stages in 2 processes, ${sch}, m=${m}`,
            med((r) => steady(r.two[sch]![m]!.stepMs)),
          );
      peak = Math.max(peak, matMulPeak());
      const base = stock[model];
      const rows = measured.map(({ name, ms }) =>
        Number.isNaN(ms)
          ? [name, 'fails', '-', '-', '-']
          : [
              name,
              ms.toFixed(1),
              Number.isNaN(base) ? '-' : (base / ms).toFixed(2),
              (flops / (ms / 1000) / 1e9).toFixed(2),
              `${((flops / (ms / 1000) / peak) * 100).toFixed(1)}%`,
            ],
      );
      out.push(
        `#### ${model === 'mlp' ? 'MLP 784-1024-1024-10' : 'conv net (conv16-pool-conv32-pool-dense128-dense10)'}: ` +
          `${(flops / 1e9).toFixed(2)} GFLOP per step (forward + backward)`,
        '',
      );
      out.push(table(['configuration', 'ms/step', 'speed-up vs stock fit', 'GFLOP/s', 'of matMul peak'], rows), '');
    }
    out.push(
      `matMul peak of the wasm backend on one core (1024 x 1024 x 1024, best product seen during the run): ${(peak / 1e9).toFixed(1)} GFLOP/s. ` +
        '"Of matMul peak" uses model FLOPs (forward + backward).',
      '',
    );
    out.push(
      '### 2 stages against 1 stage at the same microbatch size',
      '',
      `Throughput ratio (1-stage step time / 2-stage step time, taken within each of ${ROUNDS} rounds; ` +
        'median and range) against the ideal 2 x m/(m+p-1); target: at least 90 % of ideal.',
      '"Busier stage" is its share of the two stages\' compute (busy time per step after the warm-up steps) in the 2-stage run; 50 % is an even cut.',
      "\"This cut's best\" is the speed-up if the step took only the busier stage's compute plus one microbatch of the other's (the fill and drain),",
      'with the stage times of that run; "of it" is that time over the measured step: how much of the step messages and waiting took.',
      `uniform: an MLP of ${UNIFORM_LAYERS} equal ${UNIFORM_WIDTH}-wide layers (batch ${BATCH}, ${Math.min(STEPS, 8)} steps per run), cut into equal halves.`,
      '',
    );
    out.push(table(['model', 'schedule', 'm', 'measured speed-up', 'range', 'ideal', 'of ideal', 'busier stage', "this cut's best", 'of it'], targetRows), '');
    out.push(
      '### Bubble: idle share of each stage against (p-1)/(m+p-1), ZB-H1 (p-1)/(3m+p-1) (last round)',
      '',
      table(['model', 'schedule', 'm', 'stage', 'measured idle', 'theoretical'], bubbleRows),
      '',
    );
    out.push(
      '### Scheduling overhead per microbatch',
      '',
      `"Outside compute": (wall time of the steps after the ${WARM} warm-up steps - the stage's busy time meanwhile: compute, publishing, ` +
        'update) / (those steps x m), one stage in a worker process, in ms. Median and range of the rounds.',
      '"Receiving": the transfer part of it, an estimate: the bytes the stage received per microbatch (its INPUT frames, ' +
        'plans and UPDATEs) times the event-loop time a raw NATS subscriber process spends per byte of messages that size, ' +
        'measured in this run (`receiveCost.ts`).',
      '"Scheduling overhead" is the rest (target: under 0.5 ms). ' +
        "Of it, from the stage's own counters (medians): the stage machine handling its events (each run's end, each frame, plans, updates), " +
        'and judging and assembling frames outside the machine;',
      "what remains is the event loop's turns between actions, the step boundary's messages, the driver, and the error of the receiving estimate.",
      '',
    );
    out.push(
      table(
        [
          'model',
          'configuration',
          'outside compute (ms per microbatch)',
          'range',
          'received per microbatch',
          'receiving (est.)',
          'scheduling overhead',
          'stage machine',
          'reading frames',
          'the rest',
        ],
        overheadRows,
      ),
    );
    return out.join('\n');
  } finally {
    await server.stop();
  }
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchSteps());
