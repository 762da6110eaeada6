/**
 * The machine's ceiling for a 2-stage cut, with no messages at all: each stage's compute
 * (forward + backward of m microbatches and the update) alone in a process, then both
 * stages in two processes at once, against the whole model in one process. What 2 stages
 * in a pipeline could gain here if scheduling, messages and bubbles cost nothing.
 *
 * `npx tsx bench/halves.ts <model> <all|0|1> <m> <seconds>` runs one part and prints JSON.
 */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/index.js';
import { partitionModel, resolveLoss, StageCompute } from '../src/compute/index.js';
import { fromTensor } from '../src/compute/wire.js';
import { BATCH, benchData, benchModel } from './jobs/bench.job.js';
import { machineLine, table } from './report.js';

const run = promisify(execFile);
const SECONDS = Number(process.env['BENCH_HALVES_SECONDS'] ?? 4);

/** Median ms per step of one part of the model, computed in this process. */
async function partMs(kind: string, which: string, m: number, seconds: number): Promise<number> {
  await selectBackend({ prefer: 'wasm', log: null });
  const rows = BATCH / m;
  const model = benchModel(kind);
  const part = which === 'all' ? partitionModel(model, 1)[0]! : partitionModel(model, 2)[Number(which)]!;
  const last = part.rank === part.stages - 1;
  const { loss } = resolveLoss('categoricalCrossentropy');
  const sc = new StageCompute({ partition: part, optimizer: tf.train.sgd(0.01), ...(last ? { loss } : {}) });
  const wire = async (shape: readonly number[], name: string) => {
    const t = tf.randomNormal([rows, ...shape]);
    const w = await fromTensor(t, name);
    t.dispose();
    return w;
  };
  const xw = [await wire(part.inputs[0]!.shape, 'x0')];
  const { x, y } = benchData(rows, kind);
  const yw = [await fromTensor(y, 'y0')];
  tf.dispose([x, y]);
  const dyw = [await wire(part.outputs[0]!.shape, 'g0')];
  const step = async () => {
    for (let i = 0; i < m; i++) {
      await sc.forward(i, xw, last ? yw : [], rows, BATCH, true);
      await sc.backward(i, last ? [] : dyw, BATCH);
    }
    sc.update();
  };
  await step();
  await step();
  const times: number[] = [];
  const t0 = performance.now();
  while (performance.now() - t0 < seconds * 1000) {
    const a = performance.now();
    await step();
    times.push(performance.now() - a);
  }
  times.sort((a, b) => a - b);
  return times[times.length >> 1]!;
}

async function child(kind: string, which: string, m: number): Promise<number> {
  const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL(import.meta.url).pathname, kind, which, String(m), String(SECONDS)], {
    env: { ...process.env, TROUPE_BACKEND: 'wasm' },
  });
  return (JSON.parse(stdout.trim().split('\n').pop()!) as { ms: number }).ms;
}

export async function benchHalves(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null });
  const rows: string[][] = [];
  for (const kind of ['mlp', 'uniform']) {
    for (const m of [4, 16]) {
      const all = await child(kind, 'all', m);
      const alone = [await child(kind, '0', m), await child(kind, '1', m)];
      const together = await Promise.all([child(kind, '0', m), child(kind, '1', m)]);
      const slow = together.map((t, i) => t / alone[i]!);
      const ceiling = all / Math.max(...together);
      rows.push([
        kind,
        String(m),
        all.toFixed(1),
        `${alone[0]!.toFixed(1)} / ${alone[1]!.toFixed(1)}`,
        `${together[0].toFixed(1)} / ${together[1].toFixed(1)}`,
        `${slow.map((x) => `${((x - 1) * 100).toFixed(0)}%`).join(' / ')}`,
        ceiling.toFixed(2),
        // 1F1B's fill and drain on top, ceiling x m/(m+1), over the target's ideal 2 x m/(m+1): ceiling / 2.
        `${((ceiling / 2) * 100).toFixed(0)}%`,
      ]);
    }
  }
  return [
    "### The machine's ceiling for 2 stages: stage compute alone and at once, no messages",
    '',
    `Each part trains its share of a ${BATCH}-row batch in m microbatches (forward, backward, SGD update) in a process of its own, ` +
      `${SECONDS} s each, median ms per step. "At once": both stages' processes run together. ` +
      `"Ceiling": the whole model's time over the slower stage's time at once, the most 2 stages could gain with free scheduling, ` +
      `messages and bubbles. ${machineLine()}`,
    '',
    "The last column is the ceiling with 1F1B's bubble, ceiling x m/(m+1), over the issue's ideal 2 x m/(m+1) (that is, " +
      'ceiling / 2): the most of that ideal a 1F1B pipeline of this cut could reach on this machine.',
    '',
    table(['model', 'm', 'whole model', 'stage 0 / 1 alone', 'stage 0 / 1 at once', 'slower at once', 'ceiling', 'ceiling of the ideal'], rows),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const [kind, which, m, seconds] = process.argv.slice(2);
  if (kind && which) console.log(JSON.stringify({ ms: await partMs(kind, which, Number(m), Number(seconds ?? SECONDS)) }));
  else console.log(await benchHalves());
}
