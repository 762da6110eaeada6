/**
 * The held tape: a forward recorded once, backpropagated later as B (input gradients) and W
 * (weight gradients). Its gradients must be those of tfjs's own one-call `engine.gradients()`.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { HeldTape } from '../../src/compute/heldTape.js';
import { skipModel, mlp } from '../helpers/models.js';

function maxDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

function variablesOf(model: tf.LayersModel): tf.Variable[] {
  return model.trainableWeights.map((w) => (w as unknown as { val: tf.Variable }).val);
}

function convNet(): tf.Sequential {
  const init = (k: number) => tf.initializers.glorotUniform({ seed: 40 + k });
  const m = tf.sequential();
  m.add(tf.layers.conv2d({ inputShape: [8, 8, 2], filters: 3, kernelSize: 3, activation: 'relu', kernelInitializer: init(1) }));
  m.add(tf.layers.maxPooling2d({ poolSize: 2 }));
  m.add(tf.layers.flatten());
  m.add(tf.layers.dense({ units: 4, kernelInitializer: init(2) }));
  return m;
}

const models: { name: string; make: () => tf.LayersModel; input: number[] }[] = [
  { name: 'MLP (fused dense kernels)', make: () => mlp([5, 7, 6, 3]), input: [4, 5] },
  { name: 'functional model with a skip connection', make: () => skipModel(), input: [4, 6] },
  { name: 'conv net (conv, pool, flatten, dense)', make: convNet, input: [3, 8, 8, 2] },
];

describe('HeldTape', () => {
  it.each(models)('B then W equals engine.gradients for the $name', ({ make, input }) => {
    const model = make();
    const vars = variablesOf(model);
    const x = tf.randomNormal(input, 0, 1, 'float32', 5);
    const dy = tf.tidy(() => tf.randomNormal((model.apply(x) as tf.Tensor).shape, 0, 1, 'float32', 6));
    const ref = tf.engine().gradients(() => tf.sum(tf.mul(model.apply(x) as tf.Tensor, dy)), [x, ...vars]);

    const before = tf.memory().numTensors;
    const { outputs, tape } = HeldTape.record(() => [model.apply(x) as tf.Tensor], [x], vars);
    tf.dispose(outputs); // the output may go before the backward: the tape keeps what it needs
    const [dx] = tape.backwardInputs([dy]);
    const dw = tape.backwardWeights();

    expect(maxDiff(dx!, ref.grads[0]!)).toBeLessThan(1e-6);
    dw.forEach((g, i) => expect(maxDiff(g!, ref.grads[i + 1]!)).toBeLessThan(1e-6));
    tf.dispose([dx!, ...(dw as tf.Tensor[])]);
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose([x, dy, ref.value, ...ref.grads]);
  });

  it('a scalar output (a loss) takes no upstream gradient', () => {
    const model = mlp([5, 4, 3]);
    const vars = variablesOf(model);
    const x = tf.randomNormal([6, 5], 0, 1, 'float32', 1);
    const ref = tf.engine().gradients(() => tf.mean(model.apply(x) as tf.Tensor), vars);
    const { outputs, tape } = HeldTape.record(() => [tf.mean(model.apply(x) as tf.Tensor)], [], vars);
    const { inputs, variables } = tape.backward([]);
    expect(inputs).toEqual([]);
    variables.forEach((g, i) => expect(maxDiff(g!, ref.grads[i]!)).toBeLessThan(1e-7));
    tf.dispose([x, ...outputs, ...(variables as tf.Tensor[]), ref.value, ...ref.grads]);
  });

  it('without input gradients (a first stage), B computes nothing and W everything', () => {
    const model = mlp([5, 4, 3]);
    const vars = variablesOf(model);
    const x = tf.randomNormal([6, 5], 0, 1, 'float32', 1);
    const dy = tf.onesLike(model.apply(x) as tf.Tensor);
    const ref = tf.engine().gradients(() => tf.sum(tf.mul(model.apply(x) as tf.Tensor, dy)), vars);
    const { outputs, tape } = HeldTape.record(() => [model.apply(x) as tf.Tensor], [], vars);
    expect(tape.backwardInputs([dy])).toEqual([]);
    const dw = tape.backwardWeights();
    dw.forEach((g, i) => expect(maxDiff(g!, ref.grads[i]!)).toBeLessThan(1e-6));
    tf.dispose([x, dy, ...outputs, ...(dw as tf.Tensor[]), ref.value, ...ref.grads]);
  });

  it('a dropout mask drawn in the forward is the one its backward uses', () => {
    const drop = tf.layers.dropout({ rate: 0.5 });
    const x = tf.ones([64, 8]);
    const { outputs, tape } = HeldTape.record(() => [drop.apply(x, { training: true }) as tf.Tensor], [x], []);
    const y = outputs[0]!;
    const [dx] = tape.backwardInputs([tf.onesLike(y)]);
    // x is all ones, so y is the scaled mask; the gradient of sum(y) is the same mask.
    expect(tf.tidy(() => tf.sum(tf.equal(y, 0)).dataSync()[0]!)).toBeGreaterThan(0);
    expect(maxDiff(dx!, y)).toBe(0);
    tape.backwardWeights();
    tf.dispose([x, y, dx!]);
  });

  it('refuses W before B and a second B; dispose frees the saved tensors', () => {
    const model = mlp([5, 4, 3]);
    const x = tf.randomNormal([2, 5]);
    const before = tf.memory().numTensors;
    const { outputs, tape } = HeldTape.record(() => [model.apply(x) as tf.Tensor], [x], variablesOf(model));
    expect(tape.size).toBeGreaterThan(0);
    expect(tf.memory().numTensors).toBeGreaterThan(before + outputs.length); // saved activations
    expect(() => tape.backwardWeights()).toThrow(/W before B/);
    tf.dispose(outputs);
    tape.dispose();
    expect(tf.memory().numTensors).toBe(before);
    tf.dispose(x);
  });

  it('a forward that throws leaves no tape and no saved tensors', () => {
    const model = mlp([5, 4, 3]);
    const x = tf.randomNormal([2, 5]);
    const before = tf.memory().numTensors;
    expect(() =>
      HeldTape.record(
        () => {
          model.apply(x);
          throw new Error('boom');
        },
        [x],
        variablesOf(model),
      ),
    ).toThrow('boom');
    expect(tf.memory().numTensors).toBe(before);
    // The engine records no tape outside a recording.
    tf.tidy(() => model.apply(x) as tf.Tensor);
    expect((tf.engine() as unknown as { state: { activeTape: unknown } }).state.activeTape).toBeNull();
    tf.dispose(x);
  });
});
