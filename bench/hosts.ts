/**
 * What the hosts and machines cost a step where messages, not compute, make it: in-process
 * pipelines (the driver and the stages share one thread) of a tiny MLP over a real
 * nats-server, one call queued behind the running one, as `troupe up` runs. Prints one JSON
 * line per case: median ms per step, and stage 0's machine and frame-handling ms per action
 * (its counters). Run it from two checkouts in alternation to compare them side by side:
 * `npx tsx bench/hosts.ts`.
 */
import * as tf from '@tensorflow/tfjs';
import { createPipeline, selectBackend } from '../src/index.js';
import { startNatsServer } from '../src/fleet/natsServer.js';
import { medianQueuedStepMs } from './queuedSteps.js';
import { seededMlp } from './seededMlp.js';

const STEPS = Number(process.env['BENCH_HOSTS_STEPS'] ?? 60);
const CASES = [
  { stages: 1, m: 16 },
  { stages: 2, m: 16 },
] as const;

async function main(): Promise<void> {
  await selectBackend({ prefer: 'wasm', log: null });
  const server = await startNatsServer();
  try {
    for (const c of CASES) {
      const sizes = [8, 8, 8, 2];
      const pipe = await createPipeline({
        model: seededMlp(sizes),
        stages: c.stages,
        microbatches: c.m,
        schedule: '1f1b',
        optimizer: tf.train.sgd(0.01),
        loss: 'categoricalCrossentropy',
        nats: { servers: server.url },
        backend: 'wasm',
      });
      const x = tf.randomUniform([64, sizes[0]!], 0, 1, 'float32', 1);
      const y = tf.oneHot(tf.randomUniform([64], 0, 2, 'int32', 2), 2).toFloat();
      try {
        for (let i = 0; i < 5; i++) await pipe.trainStep(x, y);
        const before = pipe.stats()[0]!;
        const msPerStep = await medianQueuedStepMs(pipe, x, y, STEPS);
        const after = pipe.stats()[0]!;
        const actions = STEPS * c.m * 2;
        process.stdout.write(
          `${JSON.stringify({
            stages: c.stages,
            m: c.m,
            msPerStep: +msPerStep.toFixed(3),
            machineUsPerAction: +((1000 * (after.machineMs - before.machineMs)) / actions).toFixed(1),
            framesUsPerAction: +((1000 * (after.framesMs - before.framesMs)) / actions).toFixed(1),
          })}\n`,
        );
      } finally {
        await pipe.close();
        tf.dispose([x, y]);
      }
    }
  } finally {
    await server.stop();
  }
}

await main();
