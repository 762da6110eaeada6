/**
 * Which kernels a stage's step spends its time in, on the wasm backend with Troupe's matMul:
 * one forward and one backward (recompute + gradients) of a whole model as one stage, per
 * kernel, slowest first. This is where the next fast kernel has to come from.
 */
import * as tf from '@tensorflow/tfjs';
import { partitionModel, resolveLoss, selectBackend, StageCompute } from '../src/index.js';
import { fromTensor } from '../src/compute/wire.js';
import { BATCH, benchData, benchModel } from './jobs/bench.job.js';
import { table } from './report.js';

async function profileOne(kind: 'mlp' | 'conv'): Promise<string[][]> {
  const model = benchModel(kind);
  const [partition] = partitionModel(model, 1);
  const { loss } = resolveLoss('categoricalCrossentropy');
  const stage = new StageCompute({ partition: partition!, optimizer: tf.train.sgd(0.01), loss });
  const { x, y } = benchData(BATCH, kind);
  const xw = [fromTensor(x, 'x0')];
  const yw = [fromTensor(y, 'y0')];
  const step = () => {
    stage.forward(0, xw, yw, BATCH, BATCH, true);
    stage.backward(0, [], BATCH);
    stage.update();
  };
  step(); // warm-up
  const totals = new Map<string, { ms: number; n: number }>();
  const info = await tf.profile(async () => step());
  for (const k of info.kernels) {
    const t = totals.get(k.name) ?? { ms: 0, n: 0 };
    t.ms += typeof k.kernelTimeMs === 'number' ? k.kernelTimeMs : 0;
    t.n++;
    totals.set(k.name, t);
  }
  const all = [...totals.values()].reduce((a, b) => a + b.ms, 0);
  tf.dispose([x, y]);
  stage.dispose();
  return [...totals.entries()]
    .sort((a, b) => b[1].ms - a[1].ms)
    .slice(0, 8)
    .map(([name, t]) => [kind, name, String(t.n), t.ms.toFixed(1), `${((t.ms / all) * 100).toFixed(1)}%`]);
}

export async function benchProfile(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null });
  const rows = [...(await profileOne('mlp')), ...(await profileOne('conv'))];
  return ['### Kernel profile of one training step (1 stage, batch ' + BATCH + ', wasm with Troupe\'s matMul)', '', table(['model', 'kernel', 'calls', 'ms', 'share'], rows)].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchProfile());
