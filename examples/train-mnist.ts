/**
 * The main job: trains an MLP on real MNIST digits with a 2-stage 1F1B pipeline whose stage
 * actors talk only over a nats-server started from nats.conf, and checks it against
 * single-process TensorFlow.js training of the same model on the same batches.
 *
 *   npm start                 # 3 epochs
 *   EPOCHS=1 npm start        # shorter
 *   TROUPE_NATS=nats://host:4222 npm start   # use a running server
 */
import * as tf from '@tensorflow/tfjs';
import { createPipeline, selectBackend, startNatsServer, type NatsServer } from '../src/index.js';
import { loadDigits } from '../src/data/mnist.js';

const EPOCHS = Number(process.env['EPOCHS'] ?? 3);
const BATCH = 64;
const MICROBATCHES = 4;
const LR = 1e-3;

function buildModel(): tf.LayersModel {
  const m = tf.sequential();
  m.add(tf.layers.dense({ units: 256, activation: 'relu', inputShape: [784], kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }));
  m.add(tf.layers.dense({ units: 128, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }));
  m.add(tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: 3 }) }));
  return m;
}

function maxAbsDiff(a: tf.LayersModel, b: tf.LayersModel): number {
  return tf.tidy(() => Math.max(...a.getWeights().map((w, i) => tf.max(tf.abs(tf.sub(w, b.getWeights()[i]!))).dataSync()[0]!)));
}

async function main(): Promise<void> {
  const backend = await selectBackend();
  const t0 = performance.now();
  const { train, test } = loadDigits();
  const n = train.x.shape[0];
  const steps = Math.floor(n / BATCH);
  console.log(`MNIST digits: ${n} train, ${test.x.shape[0]} test; ${EPOCHS} epochs x ${steps} steps of ${BATCH} (${MICROBATCHES} microbatches) on ${backend.name}`);

  let server: NatsServer | undefined;
  const url = process.env['TROUPE_NATS'] ?? (server = await startNatsServer()).url;
  console.log(`NATS: ${url}${server ? ` (nats-server pid ${server.pid}, from nats.conf)` : ''}`);

  const model = buildModel();
  const reference = buildModel();
  reference.setWeights(model.getWeights());
  reference.compile({ optimizer: tf.train.adam(LR), loss: 'categoricalCrossentropy', metrics: ['accuracy'] });

  const pipe = await createPipeline({
    model, stages: 2, microbatches: MICROBATCHES, schedule: '1f1b', job: 'mnist',
    optimizer: tf.train.adam(LR), loss: 'categoricalCrossentropy', metric: 'accuracy', nats: { servers: url },
  });
  console.log(`stages: ${pipe.partitions.map((p) => `[${p.layerNames.join(', ')}] ${p.params} params`).join(' | ')}`);
  let pipeMs = 0;
  let refMs = 0;
  try {
    for (let epoch = 1; epoch <= EPOCHS; epoch++) {
      let lossSum = 0;
      let accSum = 0;
      for (let s = 0; s < steps; s++) {
        const [x, y] = [train.x.slice(s * BATCH, BATCH), train.y.slice(s * BATCH, BATCH)];
        const a = performance.now();
        const r = await pipe.trainStep(x, y);
        const b = performance.now();
        await reference.trainOnBatch(x, y);
        refMs += performance.now() - b;
        pipeMs += b - a;
        lossSum += r.loss;
        accSum += r.metric ?? 0;
        tf.dispose([x, y]);
        if ((s + 1) % 25 === 0 || s === steps - 1) {
          const rate = ((epoch - 1) * steps + s + 1) * BATCH / (pipeMs / 1000);
          process.stdout.write(`\repoch ${epoch}/${EPOCHS} step ${s + 1}/${steps} loss ${(lossSum / (s + 1)).toFixed(4)} acc ${(accSum / (s + 1)).toFixed(4)} ${rate.toFixed(0)} samples/s`);
        }
      }
      const ev = await pipe.evaluate(test.x, test.y);
      process.stdout.write(`  | held-out loss ${ev.loss.toFixed(4)} acc ${(ev.metric! * 100).toFixed(2)}%\n`);
    }
    const ev = await pipe.evaluate(test.x, test.y);
    const [refLoss, refAcc] = (reference.evaluate(test.x, test.y, { batchSize: 500 }) as tf.Scalar[]).map((t) => t.dataSync()[0]!);
    const diff = maxAbsDiff(model, reference);
    console.log('\nsummary');
    console.log(`  pipeline (2 stages, NATS): held-out accuracy ${(ev.metric! * 100).toFixed(2)}%  loss ${ev.loss.toFixed(4)}  train time ${(pipeMs / 1000).toFixed(1)} s`);
    console.log(`  single-process tfjs:       held-out accuracy ${(refAcc! * 100).toFixed(2)}%  loss ${refLoss!.toFixed(4)}  train time ${(refMs / 1000).toFixed(1)} s`);
    console.log(`  max |weight difference|:   ${diff.toExponential(2)}`);
    for (const st of pipe.stats()) {
      console.log(`  stage ${st.rank}: busy ${(st.busyMs / 1000).toFixed(1)} s, ${st.forwards} F / ${st.backwards} B, in ${(st.bytesIn / 1e6).toFixed(1)} MB, out ${(st.bytesOut / 1e6).toFixed(1)} MB, peak held ${st.peakHeld}, refused ${st.rejected}`);
    }
    console.log(`  total ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    if (ev.metric! < refAcc! - 0.005) throw new Error(`pipeline accuracy ${ev.metric} is below single-process ${refAcc}`);
    if (ev.metric! < 0.9) throw new Error(`held-out accuracy ${ev.metric} is below 90%`);
  } finally {
    await pipe.close();
    await server?.stop();
  }
}

main().catch((err: unknown) => {
  console.error(err);
  process.exitCode = 1;
});
