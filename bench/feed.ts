/**
 * Feeding stage 0 a step's inputs at once (`feed: 'step'`) against the bound plus one and one
 * per release (`feed: 'bounded'`), side by side: in-process pipelines over a real nats-server
 * (the driver and the stages share one thread, so every message's cost is on the step's path),
 * on models small enough that messages, not compute, make the step. One queued step at a
 * time, as `troupe up` runs. Rounds alternate the two modes; median ms per step.
 */
import * as tf from '@tensorflow/tfjs';
import { createPipeline, selectBackend, type FeedMode } from '../src/index.js';
import { startNatsServer } from '../src/fleet/natsServer.js';
import { machineLine, median, table } from './report.js';
import { medianQueuedStepMs } from './queuedSteps.js';
import { seededMlp } from './seededMlp.js';

const ROUNDS = Number(process.env['BENCH_FEED_ROUNDS'] ?? 5);
const STEPS = Number(process.env['BENCH_FEED_STEPS'] ?? 60);

interface Case {
  readonly name: string;
  readonly sizes: readonly number[];
  readonly batch: number;
  readonly stages: number;
  readonly m: number;
}

const CASES: Case[] = [
  { name: 'MLP 8-8-8-2, batch 64', sizes: [8, 8, 8, 2], batch: 64, stages: 1, m: 16 },
  { name: 'MLP 8-8-8-2, batch 64', sizes: [8, 8, 8, 2], batch: 64, stages: 2, m: 16 },
  { name: "MLP 784-256-128-10 (npm start's), batch 64", sizes: [784, 256, 128, 10], batch: 64, stages: 2, m: 4 },
];

/** Median ms per step of `STEPS` steps, one call queued behind the running one. */
async function stepMs(c: Case, feed: FeedMode, url: string): Promise<number> {
  const pipe = await createPipeline({
    model: seededMlp(c.sizes),
    stages: c.stages,
    microbatches: c.m,
    schedule: '1f1b',
    feed,
    optimizer: tf.train.sgd(0.01),
    loss: 'categoricalCrossentropy',
    nats: { servers: url },
    backend: 'wasm',
  });
  const x = tf.randomUniform([c.batch, c.sizes[0]!], 0, 1, 'float32', 1);
  const y = tf.oneHot(tf.randomUniform([c.batch], 0, c.sizes.at(-1), 'int32', 2), c.sizes.at(-1)!).toFloat();
  try {
    for (let i = 0; i < 5; i++) await pipe.trainStep(x, y);
    return await medianQueuedStepMs(pipe, x, y, STEPS);
  } finally {
    await pipe.close();
    tf.dispose([x, y]);
  }
}

export async function benchFeed(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null });
  const server = await startNatsServer();
  const rows: string[][] = [];
  try {
    for (const c of CASES) {
      const by: Record<FeedMode, number[]> = { step: [], bounded: [] };
      for (let r = 0; r < ROUNDS; r++) for (const feed of ['bounded', 'step'] as const) by[feed].push(await stepMs(c, feed, server.url));
      const ratios = by.step.map((s, i) => s / by.bounded[i]!);
      rows.push([
        c.name,
        String(c.stages),
        String(c.m),
        median(by.bounded).toFixed(2),
        median(by.step).toFixed(2),
        median(ratios).toFixed(2),
        `${Math.min(...ratios).toFixed(2)}-${Math.max(...ratios).toFixed(2)}`,
      ]);
    }
  } finally {
    await server.stop();
  }
  return [
    `### Feeding stage 0: a step's inputs at once against one per release (in-process, ${ROUNDS} alternating rounds of ${STEPS} steps)`,
    '',
    'Median ms per step, one step queued behind the running one, 1F1B, SGD. ' +
      `\`step\`: every input of a step goes out as it begins (the default); \`bounded\`: the schedule's bound plus one, ` +
      `then one per microbatch stage 0 releases, which stage 0 reports at once. The ratio is taken within each round. ${machineLine()}`,
    '',
    table(['model', 'stages', 'm', "ms/step, feed 'bounded'", "ms/step, feed 'step'", 'step / bounded', 'range'], rows),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchFeed());
