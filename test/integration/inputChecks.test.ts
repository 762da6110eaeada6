/**
 * Inputs and labels of the wrong shape or dtype: the driver refuses them before publishing
 * anything, with a ShapeError naming the tensor; a bad INPUT frame that reaches a stage
 * anyway fails its step at once with the stage's reason, not at the step timeout.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { waitFor } from 'xstate';
import { createPipeline, ShapeError, StageError } from '../../src/index.js';
import { partitionModel, resolveLoss, StageCompute } from '../../src/compute/index.js';
import { SchedulerHost, StageHost } from '../../src/runtime/index.js';
import { Bus } from '../../src/transport/index.js';
import { fromTensor } from '../../src/compute/wire.js';
import { copyWeights, data, maxRelDiff, mlp, mlpAndReference, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';
import { twoStageStep } from '../helpers/stepWork.js';

const nats = useNatsServer();

/** A float32-input Sequential (tfjs's default) reading token ids: Embedding, Flatten, Dense. */
function embeddingModel(seed: number): tf.Sequential {
  const m = tf.sequential();
  m.add(
    tf.layers.embedding({
      inputDim: 20,
      outputDim: 4,
      inputLength: 5,
      embeddingsInitializer: tf.initializers.randomUniform({ minval: -0.5, maxval: 0.5, seed }),
    }),
  );
  m.add(tf.layers.flatten());
  m.add(tf.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }));
  return m;
}

describe("the driver's check of inputs and labels", () => {
  it(`a wrong feature width, int32 ids for a float32 input, or labels of the wrong width throw ShapeError naming the tensor; \
nothing is published`, async () => {
    const SIZES = [8, 16, 3];
    const job = 'checks';
    const pipe = await createPipeline({
      model: mlp(SIZES, 5),
      stages: 2,
      microbatches: 2,
      job,
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const emb = await createPipeline({
      model: embeddingModel(7),
      stages: 2,
      microbatches: 2,
      job: 'checks-emb',
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const spy = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'spy' });
    const seen: string[] = [];
    spy.subscribe(`troupe.${job}.>`, (m) => seen.push(`${m.subject} step ${m.header('Troupe-Step') ?? new TextDecoder().decode(m.data)}`));
    spy.subscribe(`troupe.checks-emb.>`, (m) => seen.push(m.subject));
    await spy.flush();
    const { x, y } = data(8, 8, 3, 9);
    const narrow = tf.zeros([8, 7]);
    const wideLabels = tf.zeros([8, 4]);
    const ids = tf.tensor2d(
      Array.from({ length: 40 }, (_, i) => i % 20),
      [8, 5],
      'int32',
    );
    const onehot = tf.oneHot(tf.tensor1d([0, 1, 2, 0, 1, 2, 0, 1], 'int32'), 3);
    try {
      const wide = await pipe.trainStep(narrow, y).catch((e: unknown) => e);
      expect(wide).toBeInstanceOf(ShapeError);
      expect((wide as Error).message).toMatch(/^input x0: got float32\[8,7\], expected float32\[8,8\]/);
      const labels = await pipe.evaluate(x, wideLabels).catch((e: unknown) => e);
      expect(labels).toBeInstanceOf(ShapeError);
      expect((labels as Error).message).toMatch(/^label y0: got float32\[8,4\], expected float32\[8,3\], the shape of the model's output 0/);
      await expect(pipe.predict(narrow)).rejects.toThrow(ShapeError);
      const tokens = await emb.trainStep(ids, onehot).catch((e: unknown) => e);
      expect(tokens).toBeInstanceOf(ShapeError);
      expect((tokens as Error).message).toMatch(/^input x0: got int32\[8,5\], expected float32\[8,5\] \(the model's input 0\); the model's input is float32/);
      expect((tokens as Error).message).toMatch(/dtype: 'int32'/);
      // Nothing went out for the refused calls: the next step is step 1, and its frames are all the spy saw.
      const good = await pipe.trainStep(x, y);
      expect(good.step).toBe(1);
      await spy.flush();
      const inputs = seen.filter((s) => s.includes('.INPUT'));
      expect(inputs).toEqual([
        `troupe.${job}.stage.0.INPUT step 1`,
        `troupe.${job}.stage.1.INPUT step 1`,
        `troupe.${job}.stage.0.INPUT step 1`,
        `troupe.${job}.stage.1.INPUT step 1`,
      ]);
      expect(seen.filter((s) => s.startsWith('troupe.checks-emb.'))).toEqual([]);
    } finally {
      await spy.close();
      await pipe.close();
      await emb.close();
      tf.dispose([x, y, narrow, wideLabels, ids, onehot]);
    }
  });

  it(`labels in the shapes tfjs's losses take: sparse class ids as [n] int32 or [n, 1] float32, [n] for an [n, 1] output, int32 one-hot; \
each step equals trainOnBatch`, async () => {
    const SIZES = [6, 12, 4];
    const sparse = mlp(SIZES, 21);
    const sparseRef = mlp(SIZES, 22);
    copyWeights(sparse, sparseRef);
    sparseRef.compile({ optimizer: tf.train.sgd(0.1), loss: 'sparseCategoricalCrossentropy' });
    const { model: oneHotModel, ref: oneHotRef } = mlpAndReference(SIZES, 23, tf.train.sgd(0.1));
    const pipe = await createPipeline({
      model: sparse,
      stages: 2,
      microbatches: 2,
      optimizer: tf.train.sgd(0.1),
      loss: 'sparseCategoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    // A regression to one output: labels as a plain [n] vector, which tfjs takes as [n, 1].
    const build = (seed: number) => {
      const m = tf.sequential();
      m.add(tf.layers.dense({ units: 5, inputShape: [6], activation: 'tanh', kernelInitializer: tf.initializers.glorotUniform({ seed }) }));
      m.add(tf.layers.dense({ units: 1, kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }));
      return m;
    };
    const reg = build(30);
    const regRef = build(40);
    copyWeights(reg, regRef);
    regRef.compile({ optimizer: tf.train.sgd(0.05), loss: 'meanSquaredError' });
    const regPipe = await createPipeline({
      model: reg,
      stages: 2,
      microbatches: 2,
      optimizer: tf.train.sgd(0.05),
      loss: 'meanSquaredError',
      nats: { servers: nats.server.url },
    });
    const { x } = data(8, 6, 4, 13);
    const ids = tf.tensor1d([0, 3, 1, 2, 2, 1, 3, 0], 'int32');
    const column = ids.toFloat().reshape([8, 1]);
    const target = tf.tensor1d([0.5, -1, 0.25, 2, -0.5, 1, 0, 1.5]);
    const wrong = tf.zeros([8, 4]);
    try {
      // tfjs's own trainOnBatch refuses int32 ids (its floor takes float32): the reference gets them as float32.
      for (const [y, refY] of [
        [ids, column],
        [column, column],
      ] as const) {
        const r = await pipe.trainStep(x, y);
        const refLoss = (await sparseRef.trainOnBatch(x, refY)) as number;
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      expect(maxRelDiff(sparse, sparseRef)).toBeLessThan(1e-5);
      // Labels that are no class ids of this output: refused, naming them.
      await expect(pipe.trainStep(x, wrong)).rejects.toThrow(/^label y0: got float32\[8,4\], expected int32 or float32 class ids \[8\] or \[8,1\]/);
      // One-hot labels straight from tf.oneHot are int32: they train as their float32 values would.
      const onehot = tf.oneHot(ids, 4);
      const mlpPipe = await createPipeline({
        model: oneHotModel,
        stages: 2,
        microbatches: 2,
        optimizer: tf.train.sgd(0.1),
        loss: 'categoricalCrossentropy',
        nats: { servers: nats.server.url },
      });
      try {
        const r = await mlpPipe.trainStep(x, onehot);
        const refLoss = (await oneHotRef.trainOnBatch(x, onehot.toFloat())) as number;
        expect(onehot.dtype).toBe('int32');
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
        expect(maxRelDiff(oneHotModel, oneHotRef)).toBeLessThan(1e-5);
      } finally {
        await mlpPipe.close();
        onehot.dispose();
      }
      for (let s = 0; s < 2; s++) {
        const [r, refLoss] = await stepBoth(regPipe, regRef, x, target);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      expect(maxRelDiff(reg, regRef)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      await regPipe.close();
      tf.dispose([x, ids, column, target, wrong]);
    }
  });
});

describe('an INPUT frame a stage refuses', () => {
  it("fails the step at once with the stage's reason (a frame past the driver's check)", async () => {
    const job = 'refused-input';
    const parts = partitionModel(mlp([8, 16, 3], 41), 2);
    const buses = await Promise.all([0, 1, 2].map(() => Bus.connect({ role: 'admin', servers: nats.server.url })));
    const { loss } = resolveLoss('categoricalCrossentropy');
    const computes = parts.map((p) => new StageCompute({ partition: p, optimizer: tf.train.sgd(0.1), loss }));
    const stages = await Promise.all(parts.map((p, r) => StageHost.start({ bus: buses[r]!, job, partition: p, compute: computes[r]! })));
    const sched = await SchedulerHost.start({ bus: buses[2]!, job, stages: 2 });
    const { x, y } = data(4, 8, 3);
    const zeros = tf.zeros([4, 7]);
    const narrow = await fromTensor(zeros, 'x0'); // 7 features where stage 0 takes 8
    const yw = await fromTensor(y, 'y0');
    try {
      const err = await sched
        // Ten minutes: a step that waited for its timeout would outlast the test.
        .run(twoStageStep(job, narrow, yw, 600_000))
        .catch((e: unknown) => e);
      expect(err).toBeInstanceOf(StageError);
      const e = err as StageError;
      expect(e.rank).toBe(0);
      expect(e.reason).toBe('SHAPE');
      expect(e.key).toMatch(/^refused-input\/1\/[01]\/INPUT$/);
      expect(e.message).toMatch(/refused INPUT frame: refused-input\/1\/[01]\/INPUT inputs tensor 0: got float32\[2,7\], expected float32\[2,8\]/);
      expect(sched.lastRejects.some((r) => r.code === 'SHAPE' && r.phase === 'INPUT' && r.step === 1)).toBe(true);
      // Every stage was aborted clean and takes the next step.
      for (const st of stages) await waitFor(st.actor, (snap) => snap.matches('idle'), { timeout: 5000 });
      expect(computes.map((c) => c.held)).toEqual([0, 0]);
    } finally {
      await sched.close();
      await Promise.all(stages.map((st) => st.close()));
      for (const c of computes) c.dispose();
      await Promise.all(buses.map((b) => b.close()));
      tf.dispose([x, y, zeros]);
    }
  });
});
