/**
 * On a GPU (WebGPU through Dawn): pipelines train to the weights single-process
 * tfjs-webgpu reaches. Skipped where the machine has no GPU adapter; run it on one with
 * `TROUPE_BACKEND=webgpu npx vitest run test/gpu` (setup.ts then chooses webgpu). Every read
 * here is asynchronous: dataSync fails on WebGPU in Node.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { listGpuAdapters } from '../../src/compute/webgpu.js';
import { createPipeline, selectBackend } from '../../src/index.js';
import { data, mlpAndReference } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const adapters = await listGpuAdapters();
const onGpu = adapters.length > 0 && process.env['TROUPE_BACKEND'] === 'webgpu';

/** Largest |a - b| / (|b| + 1e-3) over the two models' weights, read asynchronously. */
async function maxRelDiffAsync(a: tf.LayersModel, b: tf.LayersModel): Promise<number> {
  const wa = a.getWeights();
  const wb = b.getWeights();
  let worst = 0;
  for (let i = 0; i < wa.length; i++) {
    const [x, y] = await Promise.all([wa[i]!.data(), wb[i]!.data()]);
    for (let k = 0; k < x.length; k++) worst = Math.max(worst, Math.abs(x[k]! - y[k]!) / (Math.abs(y[k]!) + 1e-3));
  }
  return worst;
}

describe.skipIf(!onGpu)('pipelines on WebGPU', () => {
  const nats = useNatsServer();

  it('the backend is webgpu, on the GPU adapter', async () => {
    const choice = await selectBackend();
    expect(choice.name).toBe('webgpu');
    expect(tf.getBackend()).toBe('webgpu');
    expect(choice.device).toContain(adapters[0]!);
  });

  it.each([
    { stages: 3, schedule: '1f1b', replicas: 1, handoff: true },
    { stages: 3, schedule: 'zbh1', replicas: 1, handoff: false },
    { stages: 2, schedule: '1f1b', replicas: 2, handoff: true },
  ] as const)('%o: 3 SGD steps, an evaluation and a prediction equal single-process tfjs-webgpu', async ({ stages, schedule, replicas, handoff }) => {
    const SIZES = [16, 64, 48, 32, 4];
    const { model, ref } = mlpAndReference(SIZES, 91, tf.train.sgd(0.1));
    const pipe = await createPipeline({
      model,
      stages,
      replicas,
      microbatches: 4,
      schedule,
      handoff,
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(32, SIZES[0]!, 4, 11);
    try {
      for (let s = 0; s < 3; s++) {
        const r = await pipe.trainStep(x, y);
        expect(Math.abs(r.loss - ((await ref.trainOnBatch(x, y)) as number))).toBeLessThan(1e-4);
      }
      expect(await maxRelDiffAsync(model, ref)).toBeLessThan(1e-5);
      const evaluated = await pipe.evaluate(x, y);
      const refEval = ref.evaluate(x, y) as tf.Scalar;
      expect(Math.abs(evaluated.loss - (await refEval.data())[0]!)).toBeLessThan(1e-4);
      const [predicted] = await pipe.predict(x);
      const want = ref.predict(x) as tf.Tensor;
      const diff = tf.max(tf.abs(tf.sub(predicted!, want)));
      expect((await diff.data())[0]!).toBeLessThan(1e-5);
      tf.dispose([refEval, predicted!, want, diff]);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
