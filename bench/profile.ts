/**
 * Which kernels a stage's step spends its time in, on the wasm backend with Troupe's matMul:
 * forward and backward (recompute + gradients) of a whole model as one stage, per kernel,
 * slowest first, for the batch in one microbatch and in 16. This is where the next fast
 * kernel has to come from, and what splitting a batch into microbatches costs.
 */
import * as tf from '@tensorflow/tfjs';
import { selectBackend } from '../src/index.js';
import { partitionModel, resolveLoss, StageCompute } from '../src/compute/index.js';
import { microbatchSizes } from '../src/schedule/index.js';
import { microbatchOffsets } from '../src/schedule/microbatch.js';
import { fromTensor } from '../src/compute/wire.js';
import { sliceRows } from '../src/protocol/rows.js';
import { BATCH, benchData, benchModel } from './jobs/bench.job.js';
import { table } from './report.js';

/** Microbatch counts profiled side by side. */
const MS = [1, 16];
const ROUNDS = 3;

type Totals = Map<string, { ms: number; n: number }>;

async function profileStep(kind: 'mlp' | 'conv', m: number): Promise<Totals> {
  const model = benchModel(kind);
  const [partition] = partitionModel(model, 1);
  const { loss } = resolveLoss('categoricalCrossentropy');
  const stage = new StageCompute({ partition: partition!, optimizer: tf.train.sgd(0.01), loss });
  const { x, y } = benchData(BATCH, kind);
  const xw = await fromTensor(x, 'x0');
  const yw = await fromTensor(y, 'y0');
  const sizes = microbatchSizes(BATCH, m);
  const offsets = microbatchOffsets(sizes);
  const step = async () => {
    for (let mb = 0; mb < m; mb++) {
      await stage.forward(mb, [sliceRows(xw, offsets[mb]!, sizes[mb]!)], [sliceRows(yw, offsets[mb]!, sizes[mb]!)], sizes[mb]!, BATCH, true);
      await stage.backward(mb, [], BATCH);
    }
    stage.update();
  };
  await step(); // warm-up
  const totals: Totals = new Map();
  for (let r = 0; r < ROUNDS; r++) {
    const info = await tf.profile(async () => step());
    for (const k of info.kernels) {
      const t = totals.get(k.name) ?? { ms: 0, n: 0 };
      t.ms += (typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0) / ROUNDS;
      t.n += 1 / ROUNDS;
      totals.set(k.name, t);
    }
  }
  tf.dispose([x, y]);
  stage.dispose();
  model.dispose();
  return totals;
}

async function profileOne(kind: 'mlp' | 'conv'): Promise<string[][]> {
  const [one, many] = [await profileStep(kind, MS[0]!), await profileStep(kind, MS[1]!)];
  const sum = (t: Totals) => [...t.values()].reduce((a, b) => a + b.ms, 0);
  const names = [...new Set([...one.keys(), ...many.keys()])].sort((a, b) => (many.get(b)?.ms ?? 0) - (many.get(a)?.ms ?? 0));
  const cell = (t: Totals, k: string) => {
    const v = t.get(k);
    return v ? [String(Math.round(v.n)), v.ms.toFixed(1)] : ['0', '0.0'];
  };
  const rows = names.slice(0, 8).map((k) => [kind, k, ...cell(one, k), ...cell(many, k), ((many.get(k)?.ms ?? 0) - (one.get(k)?.ms ?? 0)).toFixed(1)]);
  rows.push([kind, 'all kernels', '', sum(one).toFixed(1), '', sum(many).toFixed(1), (sum(many) - sum(one)).toFixed(1)]);
  return rows;
}

export async function benchProfile(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null });
  const rows = [...(await profileOne('mlp')), ...(await profileOne('conv'))];
  return [
    `### Kernel profile of one training step (1 stage, batch ${BATCH}, wasm with Troupe's matMul)`,
    '',
    `Kernel time per step (mean of ${ROUNDS} profiled steps), the batch in one microbatch and in ${MS[1]}, slowest at m=${MS[1]} first; ` +
      'the last column is what splitting the batch adds (negative: what it saves). ' +
      `Every microbatch computes and adds its own weight gradients: a matMul whose inner dimension is the microbatch's rows, ` +
      'and an Add of the whole gradient.',
    '',
    table(['model', 'kernel', `calls, m=${MS[0]}`, `ms, m=${MS[0]}`, `calls, m=${MS[1]}`, `ms, m=${MS[1]}`, 'added ms'], rows),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchProfile());
