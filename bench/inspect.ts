/**
 * Step time with inspection off and on, measured side by side in one run: two "off" series
 * (their ratio is the noise) and one "on" series, interleaved round by round.
 *
 *   npx tsx bench/inspect.ts            (part of npm run bench)
 */
import * as tf from '@tensorflow/tfjs';
import { createPipeline, selectBackend, startNatsServer, type Pipeline } from '../src/index.js';
import { machineLine, median, table } from './report.js';
import { seededMlp } from './seededMlp.js';

const ROUNDS = Number(process.env['ROUNDS'] ?? 10);
const STEPS = Number(process.env['STEPS'] ?? 20);

export async function benchInspect(): Promise<string> {
  await selectBackend({ log: null });
  const server = await startNatsServer();
  const x = tf.randomUniform([64, 784], 0, 1, 'float32', 1);
  const y = tf.oneHot(tf.randomUniform([64], 0, 10, 'int32', 2), 10).toFloat();
  const make = (job: string, inspect: boolean) =>
    createPipeline({
      model: seededMlp([784, 256, 256, 10]),
      stages: 2,
      microbatches: 4,
      job,
      inspect,
      optimizer: tf.train.adam(1e-3),
      loss: 'categoricalCrossentropy',
      nats: { servers: server.url },
    });
  const series: Record<string, { pipe: Pipeline; ms: number[] }> = {
    'off (A)': { pipe: await make('bench-off-a', false), ms: [] },
    'off (B)': { pipe: await make('bench-off-b', false), ms: [] },
    on: { pipe: await make('bench-on', true), ms: [] },
  };
  try {
    for (const s of Object.values(series)) for (let i = 0; i < 3; i++) await s.pipe.trainStep(x, y); // warm-up
    for (let r = 0; r < ROUNDS; r++) {
      for (const s of Object.values(series)) {
        const t0 = performance.now();
        for (let i = 0; i < STEPS; i++) await s.pipe.trainStep(x, y);
        s.ms.push((performance.now() - t0) / STEPS);
      }
    }
  } finally {
    for (const s of Object.values(series)) await s.pipe.close();
    await server.stop();
    tf.dispose([x, y]);
  }
  const base = median(series['off (A)']!.ms);
  const rows = Object.entries(series).map(([name, s]) => [
    name,
    median(s.ms).toFixed(2),
    (median(s.ms) / base).toFixed(3),
    `${Math.min(...s.ms).toFixed(2)}-${Math.max(...s.ms).toFixed(2)}`,
  ]);
  return [
    `### Inspection off vs on`,
    ``,
    `In-process 2-stage 1F1B pipeline over nats-server, MLP 784-256-256-10, batch 64, m = 4, Adam;`,
    `${ROUNDS} interleaved rounds of ${STEPS} steps per series. ${machineLine()}`,
    ``,
    table(['inspection', 'ms/step (median)', 'ratio to off (A)', 'range of round means'], rows),
    ``,
    `off (B) / off (A) is the noise; "off" creates actors with no inspect callback at all.`,
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(await benchInspect());
}
