/**
 * Embedding models with int32 token ids train on wasm through a pipeline (the ids travel as
 * int32 frames end to end) and equal single-process trainOnBatch, like every other model.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { copyWeights, maxRelDiff } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const VOCAB = 30;
const LEN = 6;

/** Token ids in, 3 classes out: an int32 input, an Embedding, then Flatten + Dense or an LSTM + Dense. */
function tokenModel(kind: 'dense' | 'lstm', seed: number): tf.LayersModel {
  const init = (k: number) => tf.initializers.glorotUniform({ seed: seed * 10 + k });
  const ids = tf.input({ shape: [LEN], dtype: 'int32' });
  let h = tf.layers
    .embedding({ inputDim: VOCAB, outputDim: 5, embeddingsInitializer: tf.initializers.randomUniform({ minval: -0.3, maxval: 0.3, seed }) })
    .apply(ids) as tf.SymbolicTensor;
  if (kind === 'dense') {
    h = tf.layers.flatten().apply(h) as tf.SymbolicTensor;
    h = tf.layers.dense({ units: 8, activation: 'tanh', kernelInitializer: init(1) }).apply(h) as tf.SymbolicTensor;
  } else {
    h = tf.layers
      .lstm({ units: 7, kernelInitializer: init(1), recurrentInitializer: tf.initializers.orthogonal({ seed: seed * 10 + 2 }) })
      .apply(h) as tf.SymbolicTensor;
  }
  const out = tf.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: init(3) }).apply(h) as tf.SymbolicTensor;
  return tf.model({ inputs: ids, outputs: out });
}

function tokens(n: number, seed: number): { x: tf.Tensor2D; y: tf.Tensor2D } {
  let s = seed >>> 0;
  const rnd = () => (s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32;
  const x = tf.tensor2d(
    Int32Array.from({ length: n * LEN }, () => Math.floor(rnd() * VOCAB)),
    [n, LEN],
    'int32',
  );
  const y = tf
    .oneHot(
      tf.tensor1d(
        Int32Array.from({ length: n }, () => Math.floor(rnd() * 3)),
        'int32',
      ),
      3,
    )
    .toFloat() as tf.Tensor2D;
  return { x, y };
}

describe('Embedding models on wasm', () => {
  it.each([
    ['Embedding + Flatten + Dense', 'dense', [1, 3]],
    ['Embedding + LSTM + Dense', 'lstm', [1]],
  ] as const)('%s, int32 token ids: each step equals trainOnBatch within 1e-5', async (_name, kind, boundaries) => {
    expect(tf.getBackend()).toBe('wasm');
    const model = tokenModel(kind, 3);
    const ref = tokenModel(kind, 4);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.sgd(0.5), loss: 'categoricalCrossentropy' });
    const pipe = await createPipeline({
      model,
      stages: [...boundaries],
      microbatches: 4,
      schedule: '1f1b',
      optimizer: tf.train.sgd(0.5),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = tokens(16, 5);
    try {
      // Stage 0 takes the ids as int32, the model's own input dtype.
      expect(pipe.partitions[0]!.inputs).toEqual([{ shape: [LEN], dtype: 'int32' }]);
      for (let s = 0; s < 3; s++) {
        const r = await pipe.trainStep(x, y);
        const refLoss = (await ref.trainOnBatch(x, y)) as number;
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });

  it("a float32-input Sequential (tfjs's default) takes its ids as float32 and trains the same", async () => {
    const build = (seed: number) => {
      const m = tf.sequential();
      m.add(
        tf.layers.embedding({
          inputDim: VOCAB,
          outputDim: 4,
          inputLength: LEN,
          embeddingsInitializer: tf.initializers.randomUniform({ minval: -0.3, maxval: 0.3, seed }),
        }),
      );
      m.add(tf.layers.flatten());
      m.add(tf.layers.dense({ units: 3, activation: 'softmax', kernelInitializer: tf.initializers.glorotUniform({ seed: seed + 1 }) }));
      return m;
    };
    const model = build(8);
    const ref = build(9);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.sgd(0.5), loss: 'categoricalCrossentropy' });
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 2,
      optimizer: tf.train.sgd(0.5),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = tokens(8, 6);
    const ids = x.toFloat();
    try {
      for (let s = 0; s < 2; s++) {
        const r = await pipe.trainStep(ids, y);
        const refLoss = (await ref.trainOnBatch(ids, y)) as number;
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
    } finally {
      await pipe.close();
      tf.dispose([x, y, ids]);
    }
  });
});
