import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { ShapeError, StateError } from '../../src/errors.js';
import { resolveLoss } from '../../src/compute/loss.js';
import { partitionModel } from '../../src/compute/partition.js';
import { StageCompute } from '../../src/compute/stageCompute.js';
import { fromTensor } from '../../src/compute/wire.js';
import { sliceRows } from '../../src/protocol/rows.js';
import { microbatchOffsets, microbatchSizes } from '../../src/schedule/microbatch.js';
import { copyWeights, data, maxRelDiff, mlp, skipModel } from '../helpers/models.js';

/** How the backward runs: B and W at once, recomputing the forward, or W deferred until every B is done (zero-bubble style, in reverse order). */
type Mode = 'tape' | 'recompute' | 'split';
const MODES: Mode[] = ['tape', 'recompute', 'split'];

/** Runs stages in one process with no transport: all forwards, then all backwards, then update. */
async function trainInProcess(stages: StageCompute[], x: tf.Tensor, y: tf.Tensor, m: number, mode: Mode = 'tape'): Promise<number> {
  const B = x.shape[0];
  const sizes = microbatchSizes(B, m);
  const offs = microbatchOffsets(sizes);
  const xw = await fromTensor(x, 'x0');
  const yw = await fromTensor(y, 'y0');
  let loss = 0;
  const last = stages.length - 1;
  for (let i = 0; i < m; i++) {
    let acts = [sliceRows(xw, offs[i]!, sizes[i]!)];
    const labels = [sliceRows(yw, offs[i]!, sizes[i]!)];
    for (const [r, s] of stages.entries()) {
      const res = await s.forward(i, acts, r === last ? labels : [], sizes[i]!, B, true);
      if (res.loss !== undefined) loss += res.loss;
      acts = res.tensors;
    }
  }
  for (let i = 0; i < m; i++) {
    let grads: Awaited<ReturnType<StageCompute['backward']>>['tensors'] = [];
    for (let r = last; r >= 0; r--) {
      const res = mode === 'split' ? await stages[r]!.backwardInputs(i, grads, B) : await stages[r]!.backward(i, grads, B);
      if (res.loss !== undefined) loss += res.loss;
      grads = res.tensors;
    }
  }
  if (mode === 'split') for (let i = m - 1; i >= 0; i--) stages.forEach((s) => s.backwardWeights(i));
  stages.forEach((s) => s.update());
  return loss;
}

function stagesOf(model: tf.LayersModel, spec: number | string[], opt: () => tf.Optimizer, mode: Mode = 'tape'): StageCompute[] {
  const { loss } = resolveLoss('categoricalCrossentropy');
  return partitionModel(model, spec).map((partition) => new StageCompute({ partition, optimizer: opt(), loss, recompute: mode === 'recompute' }));
}

describe('StageCompute', () => {
  it.each(MODES)('2 stages x 4 microbatches, 3 SGD steps equal trainOnBatch on the whole batch (%s)', async (mode) => {
    const model = mlp([10, 16, 12, 3]);
    const ref = mlp([10, 16, 12, 3], 2);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.sgd(0.1), loss: 'categoricalCrossentropy' });
    const stages = stagesOf(model, 2, () => tf.train.sgd(0.1), mode);
    const { x, y } = data(24, 10, 3);
    for (let step = 0; step < 3; step++) {
      const l = await trainInProcess(stages, x, y, 4, mode);
      const refLoss = (await ref.trainOnBatch(x, y)) as number;
      expect(l).toBeCloseTo(refLoss, 5);
    }
    expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
  });

  it.each(MODES)('a skip connection crossing the cut trains like the whole model (Adam, %s)', async (mode) => {
    const model = skipModel();
    const ref = skipModel(8);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.adam(0.01), loss: 'categoricalCrossentropy' });
    const stages = stagesOf(model, ['skip_b', 'skip_c'], () => tf.train.adam(0.01), mode);
    const { x, y } = data(12, 6, 3);
    for (let step = 0; step < 3; step++) {
      await trainInProcess(stages, x, y, 3, mode);
      await ref.trainOnBatch(x, y);
    }
    expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
  });

  it.each(MODES)('keeps tf.memory flat across steps (%s)', async (mode) => {
    const model = mlp([10, 16, 3]);
    const stages = stagesOf(model, 2, () => tf.train.adam(0.01), mode);
    const { x, y } = data(16, 10, 3);
    await trainInProcess(stages, x, y, 4, mode);
    await trainInProcess(stages, x, y, 4, mode);
    const after2 = tf.memory().numTensors;
    const bytes2 = tf.memory().numBytes;
    for (let i = 0; i < 8; i++) await trainInProcess(stages, x, y, 4, mode);
    expect(tf.memory().numTensors).toBe(after2);
    expect(tf.memory().numBytes).toBe(bytes2);
  });

  it('holds a microbatch until its W; refuses W before B and B twice; reset frees a half-done step', async () => {
    const stages = stagesOf(mlp([10, 16, 12, 3]), 2, () => tf.train.sgd(0.1));
    const [s0, s1] = stages as [StageCompute, StageCompute];
    const { x, y } = data(8, 10, 3);
    const before = tf.memory().numTensors;
    const a = await s0.forward(0, [await fromTensor(x, 'x0')], [], 8, 8, true);
    await s1.forward(0, a.tensors, [await fromTensor(y, 'y0')], 8, 8, true);
    expect(() => s1.backwardWeights(0)).toThrow(/before its input gradients/);
    const g = await s1.backwardInputs(0, [], 8);
    expect(g.tensors).toHaveLength(1);
    await expect(s1.backwardInputs(0, [], 8)).rejects.toThrow(/already backpropagated/);
    expect(s1.held).toBe(1);
    expect(() => s1.update()).toThrow(/still waiting for their backward \(B or W\)/);
    s1.backwardWeights(0);
    expect(s1.held).toBe(0);
    await s0.backwardInputs(0, g.tensors, 8); // stage 0 sends no input gradient; its W stays owed
    expect(s0.held).toBe(1);
    stages.forEach((s) => s.reset());
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses a wrong input shape with a ShapeError and holds nothing', async () => {
    const [s0] = stagesOf(mlp([10, 16, 3]), 2, () => tf.train.sgd(0.1));
    const bad = await fromTensor(tf.zeros([4, 9]), 'x0');
    const before = tf.memory().numTensors;
    await expect(s0!.forward(0, [bad], [], 4, 4, true)).rejects.toThrow(ShapeError);
    expect(s0!.held).toBe(0);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('refuses a backward without its forward', async () => {
    const [s0] = stagesOf(mlp([10, 16, 3]), 2, () => tf.train.sgd(0.1));
    await expect(s0!.backward(3, [], 4)).rejects.toThrow(StateError);
  });

  it('refuses a model with two outputs at the last stage, naming the count', () => {
    const x = tf.input({ shape: [4] });
    const a = tf.layers.dense({ units: 2 }).apply(x) as tf.SymbolicTensor;
    const b = tf.layers.dense({ units: 3 }).apply(x) as tf.SymbolicTensor;
    const [part] = partitionModel(tf.model({ inputs: x, outputs: [a, b] }), 1);
    const { loss } = resolveLoss('meanSquaredError');
    expect(() => new StageCompute({ partition: part!, optimizer: tf.train.sgd(0.1), loss })).toThrow(/2 outputs; a pipeline trains models with one output/);
  });
});
