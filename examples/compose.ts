/**
 * Your own xstate machine in charge of Troupe's actors: `trainer` trains a pipeline step by
 * step and then scores held-out data on a task pool, each an invoked promise actor
 * (`fromPromise`), and listens to the pipeline's scheduler and stage actors (`pipe.actors`),
 * counting the states each goes through.
 *
 *   npx tsx examples/compose.ts        # starts a nats-server from nats.conf, 8 steps
 */
import * as tf from '@tensorflow/tfjs';
import { assign, createActor, fromPromise, setup, toPromise } from 'xstate';
import { createPipeline, startNatsServer, type Pipeline } from '../src/index.js';
import { Pool, PoolWorker } from '../src/pool/index.js';
import { Bus } from '../src/transport/index.js';

/** What the pool's workers are asked: one chunk of predicted probabilities and the labels. */
interface Chunk {
  readonly probabilities: number[][];
  readonly labels: number[];
}

/** The pool's task: how many of the chunk's predictions are right. */
export function countCorrect({ probabilities, labels }: Chunk): number {
  return probabilities.filter((p, i) => p.indexOf(Math.max(...p)) === labels[i]).length;
}

/** The user's machine: train `steps` steps, then score; `STAGE` events count the pipeline actors' states. */
export const trainer = setup({
  types: {
    context: {} as { step: number; steps: number; losses: number[]; accuracy: number | null; seen: Record<string, Record<string, number>> },
    events: {} as { type: 'ACTOR_STATE'; actor: string; state: string },
    input: {} as { steps: number },
    output: {} as { losses: number[]; accuracy: number; seen: Record<string, Record<string, number>> },
  },
  actors: {
    trainStep: fromPromise<number, { step: number }>(async () => {
      throw new Error('trainer: provide trainStep');
    }),
    score: fromPromise<number, void>(async () => {
      throw new Error('trainer: provide score');
    }),
  },
  guards: { moreSteps: ({ context }) => context.step < context.steps },
}).createMachine({
  id: 'trainer',
  context: ({ input }) => ({ step: 0, steps: input.steps, losses: [], accuracy: null, seen: {} }),
  on: {
    ACTOR_STATE: {
      actions: assign({
        seen: ({ context, event }) => {
          const mine = context.seen[event.actor] ?? {};
          return { ...context.seen, [event.actor]: { ...mine, [event.state]: (mine[event.state] ?? 0) + 1 } };
        },
      }),
    },
  },
  initial: 'training',
  states: {
    training: {
      invoke: {
        src: 'trainStep',
        input: ({ context }) => ({ step: context.step + 1 }),
        onDone: {
          target: 'deciding',
          actions: assign({ step: ({ context }) => context.step + 1, losses: ({ context, event }) => [...context.losses, event.output] }),
        },
      },
    },
    deciding: { always: [{ guard: 'moreSteps', target: 'training' }, { target: 'scoring' }] },
    scoring: {
      invoke: { src: 'score', onDone: { target: 'done', actions: assign({ accuracy: ({ event }) => event.output }) } },
    },
    done: { type: 'final' },
  },
  output: ({ context }) => ({ losses: context.losses, accuracy: context.accuracy ?? 0, seen: context.seen }),
});

/** Two classes of points around (-1, -1) and (1, 1), deterministic. */
function blobs(n: number, seed: number): { x: tf.Tensor2D; y: tf.Tensor2D; labels: number[] } {
  let s = seed >>> 0;
  const rnd = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32) * 2 - 1;
  const labels = Array.from({ length: n }, (_, i) => i % 2);
  const xs = labels.flatMap((c) => [(c ? 1 : -1) + rnd(), (c ? 1 : -1) + rnd()]);
  return { x: tf.tensor2d(xs, [n, 2]), y: tf.oneHot(tf.tensor1d(labels, 'int32'), 2) as tf.Tensor2D, labels };
}

/** Runs the trainer against a pipeline and a pool on the NATS server at `nats`. */
export async function runCompose(o: { nats: string; steps?: number }) {
  const model = tf.sequential({
    layers: [
      tf.layers.dense({ inputShape: [2], units: 16, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }),
      tf.layers.dense({ units: 16, activation: 'relu', kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }),
      tf.layers.dense({ units: 2, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: 3 }) }),
    ],
  });
  const train = blobs(64, 7);
  const test = blobs(40, 8);
  const pipe: Pipeline = await createPipeline({
    model,
    stages: 2,
    microbatches: 4,
    optimizer: tf.train.adam(0.05),
    loss: 'categoricalCrossentropy',
    nats: { servers: o.nats },
  });
  const bus = await Bus.connect({ servers: o.nats, role: 'pool' });
  const worker = await PoolWorker.start({ bus, pool: 'score', task: countCorrect });
  const pool = new Pool<Chunk, number>({ bus, name: 'score' });
  const actor = createActor(
    trainer.provide({
      actors: {
        trainStep: fromPromise(async () => (await pipe.trainStep(train.x, train.y)).loss),
        score: fromPromise(async () => {
          const [out] = await pipe.predict(test.x);
          const probabilities = (await out!.array()) as number[][];
          out!.dispose();
          // Four chunks, scored by whichever pool workers are up.
          const chunks = [0, 10, 20, 30].map((at) => ({ probabilities: probabilities.slice(at, at + 10), labels: test.labels.slice(at, at + 10) }));
          const correct = await pool.map(chunks);
          return correct.reduce((a, b) => a + b, 0) / test.labels.length;
        }),
      },
    }),
    { input: { steps: o.steps ?? 8 } },
  );
  // Listening to the pipeline's own actors: every state they go through becomes an event of ours.
  const { scheduler, stages } = pipe.actors;
  const tell = (who: string, value: string | object) =>
    actor.send({ type: 'ACTOR_STATE', actor: who, state: typeof value === 'string' ? value : Object.keys(value)[0]! });
  const listening = [scheduler.subscribe((s) => tell(scheduler.id, s.value)), ...stages.map((st) => st.subscribe((s) => tell(st.id, s.value)))];
  try {
    actor.start();
    const output = await toPromise(actor);
    return { ...output, model, test };
  } finally {
    for (const l of listening) l.unsubscribe();
    actor.stop();
    await worker.stop();
    await bus.close();
    await pipe.close();
    tf.dispose([train.x, train.y]);
  }
}

if (import.meta.url === `file://${process.argv[1]}`) {
  const server = await startNatsServer();
  try {
    const { losses, accuracy, seen, model, test } = await runCompose({ nats: server.url });
    console.log(`losses: ${losses.map((l) => l.toFixed(3)).join(' ')}`);
    console.log(`held-out accuracy (scored on the pool): ${(accuracy * 100).toFixed(1)}%`);
    for (const [a, states] of Object.entries(seen))
      console.log(
        `${a}: ${Object.entries(states)
          .map(([s, n]) => `${s} x${n}`)
          .join(', ')}`,
      );
    model.dispose();
    tf.dispose([test.x, test.y]);
  } finally {
    await server.stop();
  }
}
