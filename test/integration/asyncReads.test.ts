/**
 * No synchronous tensor read in anything a step, an evaluation or a prediction runs: on a GPU
 * backend in Node (WebGPU) `dataSync` fails. Here, on wasm, every synchronous read is made to
 * throw once the pipeline exists; 1, 2 and 3 stages (1F1B, ZB-H1, replicas, tensors handed over
 * in-process or sent as bytes) still train to the weights single-process tfjs reaches.
 */
import * as tf from '@tensorflow/tfjs';
import { afterEach, describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { data, maxRelDiff, mlp, mlpAndReference } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

type Patched = { target: object; key: string; original: unknown };
let patched: Patched[] = [];

/** Makes every synchronous read throw, naming it; `allowSyncReads` undoes it. */
function forbidSyncReads(): void {
  const engine = tf.engine() as unknown as Record<string, unknown>;
  const proto = tf.Tensor.prototype as unknown as Record<string, unknown>;
  const targets: [Record<string, unknown>, string][] = [
    [proto, 'dataSync'],
    [proto, 'arraySync'],
    [proto, 'bufferSync'],
    [engine, 'readSync'],
  ];
  for (const [target, key] of targets) {
    patched.push({ target, key, original: target[key] });
    target[key] = () => {
      throw new Error(`synchronous read: ${key}`);
    };
  }
}

function allowSyncReads(): void {
  for (const p of patched) (p.target as Record<string, unknown>)[p.key] = p.original;
  patched = [];
}

afterEach(allowSyncReads);

const cases = [
  { stages: 1, schedule: '1f1b', replicas: 1, handoff: false },
  { stages: 2, schedule: '1f1b', replicas: 1, handoff: false },
  { stages: 3, schedule: 'zbh1', replicas: 1, handoff: false },
  { stages: 2, schedule: 'zbh1', replicas: 2, handoff: false },
  { stages: 3, schedule: '1f1b', replicas: 1, handoff: true },
  { stages: 2, schedule: 'zbh1', replicas: 2, handoff: true },
] as const;

describe('the step path reads tensors only asynchronously', () => {
  it.each(cases)(
    '%o: 3 Adam steps, an evaluation and a prediction with synchronous reads forbidden equal single-process tfjs',
    async ({ stages, schedule, replicas, handoff }) => {
      const SIZES = [8, 16, 12, 10, 4];
      const { model, ref } = mlpAndReference(SIZES, 61, tf.train.adam(0.01));
      const pipe = await createPipeline({
        model,
        stages,
        replicas,
        microbatches: 3,
        schedule,
        handoff,
        optimizer: tf.train.adam(0.01),
        loss: 'categoricalCrossentropy',
        metric: 'accuracy',
        nats: { servers: nats.server.url },
      });
      const { x, y } = data(18, SIZES[0]!, 4, 5);
      try {
        const losses: number[] = [];
        forbidSyncReads();
        for (let s = 0; s < 3; s++) losses.push((await pipe.trainStep(x, y)).loss);
        const evaluated = await pipe.evaluate(x, y);
        const [predicted] = await pipe.predict(x);
        allowSyncReads();
        for (const l of losses) expect(l).toBeCloseTo((await ref.trainOnBatch(x, y)) as number, 5);
        expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
        expect(evaluated.loss).toBeCloseTo((ref.evaluate(x, y) as tf.Scalar).dataSync()[0]!, 5);
        const want = ref.predict(x) as tf.Tensor;
        expect(tf.max(tf.abs(tf.sub(predicted!, want))).dataSync()[0]!).toBeLessThan(1e-5);
        tf.dispose([predicted!, want]);
      } finally {
        allowSyncReads();
        await pipe.close();
        tf.dispose([x, y]);
      }
    },
  );

  it('the forbidding works: a synchronous read in a loss function fails the step, naming the read', async () => {
    const model = mlp([8, 6, 4], 63);
    const peeking = (yTrue: tf.Tensor, yPred: tf.Tensor) => {
      yPred.dataSync();
      return tf.metrics.categoricalCrossentropy(yTrue, yPred);
    };
    const pipe = await createPipeline({ model, stages: 2, microbatches: 2, optimizer: tf.train.sgd(0.1), loss: peeking, nats: { servers: nats.server.url } });
    const { x, y } = data(4, 8, 4, 6);
    try {
      forbidSyncReads();
      await expect(pipe.trainStep(x, y)).rejects.toThrow(/synchronous read: dataSync/);
    } finally {
      allowSyncReads();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
