/**
 * The main job (`npm start`): runs examples/mnist.job.ts exactly as `troupe up` does (a
 * nats-server from nats.conf, one worker process per stage, joined only by NATS), then
 * trains the same model single-process with TensorFlow.js on the same batches, and fails
 * unless the pipeline reaches the single-process held-out accuracy.
 *
 *   npm start                  # 3 epochs
 *   EPOCHS=1 npm start         # one
 */
import * as tf from '@tensorflow/tfjs';
import { runJob, selectBackend } from '../src/index.js';
import { fromTensor } from '../src/compute/wire.js';
import { sliceRows } from '../src/protocol/rows.js';
import job, { buildModel, LEARNING_RATE } from './mnist.job.js';

const CONFIG = new URL('./mnist.job.ts', import.meta.url).pathname;

async function reference(steps: number): Promise<{ loss: number; accuracy: number; seconds: number }> {
  const { train, test } = await job.data();
  const model = buildModel();
  model.compile({ optimizer: tf.train.adam(LEARNING_RATE), loss: 'categoricalCrossentropy', metrics: ['accuracy'] });
  const [xw, yw] = await Promise.all([fromTensor(train.x, 'x'), fromTensor(train.y, 'y')]);
  const perEpoch = Math.floor(train.x.shape[0] / job.batchSize);
  const t0 = performance.now();
  for (let s = 0; s < steps; s++) {
    const at = (s % perEpoch) * job.batchSize;
    const [x, y] = [xw, yw].map((w) => {
      const r = sliceRows(w, at, job.batchSize);
      return tf.tensor(r.data, [...r.shape]);
    });
    await model.trainOnBatch(x!, y!);
    tf.dispose([x!, y!]);
  }
  const seconds = (performance.now() - t0) / 1000;
  const [loss, acc] = await Promise.all((model.evaluate(test!.x, test!.y, { batchSize: 500 }) as tf.Scalar[]).map(async (t) => (await t.data())[0]!));
  return { loss: loss!, accuracy: acc!, seconds };
}

async function main(): Promise<void> {
  await selectBackend();
  const run = await runJob({ config: CONFIG });
  const pipeAcc = run.heldOut?.metric ?? 0;
  console.log(`\nsingle-process TensorFlow.js, same model, same ${run.steps} batches:`);
  const ref = await reference(run.steps);
  // Like with like: the wall time of the training steps on both sides (the pipeline's start-up and held-out evaluation apart).
  const pipeTraining = run.stepMs.reduce((a, b) => a + b, 0) / 1000;
  console.log(
    `  pipeline (${run.stats.length} worker processes over NATS): held-out accuracy ${(pipeAcc * 100).toFixed(2)}%, ` +
      `loss ${run.heldOut!.loss.toFixed(4)}, ${pipeTraining.toFixed(1)} s of training (${run.seconds.toFixed(1)} s in all, ` +
      'with nats-server and worker start-up and the held-out evaluation)',
  );
  console.log(
    `  single process:                          held-out accuracy ${(ref.accuracy * 100).toFixed(2)}%, loss ${ref.loss.toFixed(4)}, ` +
      `${ref.seconds.toFixed(1)} s of training`,
  );
  if (pipeAcc < ref.accuracy - 0.005) throw new Error(`the pipeline's accuracy ${pipeAcc} is below single-process ${ref.accuracy}`);
  console.log('  the pipeline reaches the single-process accuracy');
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
