/**
 * Exact optimizer state: N steps straight equal k steps, an export, an import (into a fresh or
 * a used optimizer, on another copy of the model, or resharded into another cut), and N - k
 * more steps, byte for byte, for every tf.train optimizer.
 */
import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { missingOptimizerState, readOptimizerState, writeOptimizerState } from '../../src/compute/optimizerState.js';
import { partitionModel, type StagePartition } from '../../src/compute/partition.js';
import { reshard } from '../../src/compute/reshard.js';
import { exportStageState, importStageState, type StageState } from '../../src/compute/stageState.js';
import { ShapeError } from '../../src/errors.js';
import { data } from '../helpers/models.js';

const N = 21;
const SIZES = [6, 10, 10, 3];

/** Every tf.train optimizer, with settings that exercise its state (Adamax with a decay uses its iteration). */
const OPTIMIZERS: Record<string, () => tf.Optimizer> = {
  'Adam (defaults)': () => tf.train.adam(),
  Adam: () => tf.train.adam(0.02, 0.8, 0.99),
  Adamax: () => tf.train.adamax(0.02, 0.9, 0.999, undefined, 0.05),
  Adagrad: () => tf.train.adagrad(0.1),
  Adadelta: () => tf.train.adadelta(1, 0.9),
  RMSProp: () => tf.train.rmsprop(0.01, 0.9, 0.5),
  'RMSProp centered': () => tf.train.rmsprop(0.01, 0.9, 0.5, undefined, true),
  Momentum: () => tf.train.momentum(0.05, 0.9, true),
  SGD: () => tf.train.sgd(0.1),
};

/** The MLP with its layers named, so another copy's weights and slots carry the same names. */
function model(seed: number): tf.LayersModel {
  const x = tf.input({ shape: [SIZES[0]!] });
  let h: tf.SymbolicTensor = x;
  for (let i = 1; i < SIZES.length; i++) {
    const last = i === SIZES.length - 1;
    h = tf.layers
      .dense({
        units: SIZES[i]!,
        activation: last ? 'softmax' : 'tanh',
        name: `layer${i}`,
        kernelInitializer: tf.initializers.glorotUniform({ seed: seed * 10 + i }),
        biasInitializer: tf.initializers.randomUniform({ minval: -0.1, maxval: 0.1, seed: seed * 10 + 5 + i }),
      })
      .apply(h) as tf.SymbolicTensor;
  }
  return tf.model({ inputs: x, outputs: h });
}

/** The batch of step s (1-based): each step its own data. */
const BATCHES = Array.from({ length: N + 4 }, (_, s) => data(8, SIZES[0]!, 3, 1000 + s));

/** A model cut into stages, each with its own optimizer (as the workers of a pipeline are). */
interface Run {
  readonly model: tf.LayersModel;
  readonly parts: StagePartition[];
  readonly opts: tf.Optimizer[];
}

function run(seed: number, make: () => tf.Optimizer, stages: number | number[] = 1): Run {
  const m = model(seed);
  const parts = partitionModel(m, stages);
  return { model: m, parts, opts: parts.map(() => make()) };
}

/** One training step: gradients of the whole model, each stage's optimizer applied to its own variables. */
function step(r: Run, s: number): void {
  const { x, y } = BATCHES[s]!;
  const vars = r.parts.flatMap((p) => [...p.variables]);
  const { value, grads } = tf.variableGrads(() => tf.losses.softmaxCrossEntropy(y, r.model.apply(x, { training: true }) as tf.Tensor), vars);
  r.parts.forEach((p, i) => r.opts[i]!.applyGradients(p.variables.map((v) => ({ name: v.name, tensor: grads[v.name]! }))));
  tf.dispose([value, ...Object.values(grads)]);
}

const hash = (ts: readonly { data: ArrayBufferView }[]) => {
  const h = createHash('sha256');
  for (const t of ts) h.update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength));
  return h.digest('hex');
};

/** SHA-256 of the weights' bytes, and of the optimizer state's. */
async function digest(r: Run): Promise<{ weights: string; optimizer: string }> {
  const states = await Promise.all(r.parts.map((p, i) => exportStageState(p, r.opts[i]!)));
  return {
    weights: hash(await Promise.all(r.model.weights.map(async (w) => ({ data: await w.read().data() })))),
    optimizer: hash(states.flatMap((s) => s.tensors.filter((t) => t.name.startsWith('o')))),
  };
}

const dispose = (r: Run) => {
  r.opts.forEach((o) => o.dispose());
  r.model.dispose();
};

/** N steps straight, with the state exported after every step k < N. */
async function straight(make: () => tf.Optimizer): Promise<{ final: { weights: string; optimizer: string }; at: StageState[] }> {
  const r = run(1, make);
  const at: StageState[] = [];
  for (let s = 1; s <= N; s++) {
    step(r, s);
    if (s < N) at[s] = await exportStageState(r.parts[0]!, r.opts[0]!);
  }
  const final = await digest(r);
  dispose(r);
  return { final, at };
}

describe('exact optimizer state', () => {
  it.each(Object.keys(OPTIMIZERS))(
    '%s: N = 21 steps straight equal k + (N - k) with an export and import at every k in 1..20, weights and state byte for byte',
    async (name) => {
      const make = OPTIMIZERS[name]!;
      const { final, at } = await straight(make);
      for (let k = 1; k < N; k++) {
        // Resume: another copy of the model (other initial weights), a fresh optimizer.
        const resumed = run(2, make);
        await importStageState(resumed.parts[0]!, resumed.opts[0]!, at[k]!);
        for (let s = k + 1; s <= N; s++) step(resumed, s);
        expect(await digest(resumed), `${name}, resumed after step ${k}`).toEqual(final);
        dispose(resumed);
        // Replay: an optimizer that already went on (as a stage that ran into a failed step) takes the state back.
        const replayed = run(3, make);
        for (let s = 1; s <= 3; s++) step(replayed, N + s);
        await importStageState(replayed.parts[0]!, replayed.opts[0]!, at[k]!);
        for (let s = k + 1; s <= N; s++) step(replayed, s);
        expect(await digest(replayed), `${name}, replayed from step ${k}`).toEqual(final);
        dispose(replayed);
      }
    },
    120_000,
  );

  it.each(Object.keys(OPTIMIZERS))(
    '%s: a state of 1 stage resharded into 3 (1 | 1 | 1 layers) goes on byte for byte',
    async (name) => {
      const make = OPTIMIZERS[name]!;
      const { final, at } = await straight(make);
      for (const k of [2, 5, 13]) {
        const three = run(4, make, 3);
        const moved = reshard([{ ...at[k]! }], three.parts);
        for (const [i, p] of three.parts.entries()) await importStageState(p, three.opts[i]!, moved[i]!);
        for (let s = k + 1; s <= N; s++) step(three, s);
        expect((await digest(three)).weights, `${name}, resharded after step ${k}`).toBe(final.weights);
        // And back into one stage: the optimizer state is the straight run's too.
        const one = run(5, make);
        await importStageState(
          one.parts[0]!,
          one.opts[0]!,
          reshard(await Promise.all(three.parts.map((p, i) => exportStageState(p, three.opts[i]!))), one.parts)[0]!,
        );
        expect(await digest(one), `${name}, resharded back after step ${k}`).toEqual(final);
        dispose(three);
        dispose(one);
      }
    },
    120_000,
  );

  it("a saved Adam state names its running products; one without them (saved before) falls back to tfjs's pow(beta, t + 1), which is not exact", async () => {
    const make = OPTIMIZERS['Adam (defaults)']!;
    const { final, at } = await straight(make);
    expect(at[2]!.optimizerNames.slice(0, 3)).toEqual(['iter', 'accBeta1', 'accBeta2']);
    const opt = make();
    expect(missingOptimizerState(opt, at[2]!.optimizerNames)).toEqual([]);
    expect(missingOptimizerState(opt, [])).toEqual([]); // weights only: nothing to restore
    // A state as Troupe saved it before: iter and the moments, without accBeta1/2.
    const old = (s: StageState): StageState => {
      const os = s.tensors.filter((t) => t.name.startsWith('o'));
      const keep = s.optimizerNames.map((n, i) => [n, os[i]!] as const).filter(([n]) => !n.startsWith('accBeta'));
      return {
        weightNames: s.weightNames,
        optimizerNames: keep.map(([n]) => n),
        tensors: [...s.tensors.filter((t) => t.name.startsWith('w')), ...keep.map(([, t], i) => ({ ...t, name: `o${i}` }))],
      };
    };
    expect(missingOptimizerState(opt, old(at[2]!).optimizerNames)).toEqual(['accBeta1', 'accBeta2']);
    opt.dispose();
    const resumed = run(2, make);
    await importStageState(resumed.parts[0]!, resumed.opts[0]!, old(at[2]!));
    const [, accBeta1] = await readOptimizerState(resumed.opts[0]!);
    const pow = tf.pow(0.9, 3);
    expect(Array.from(await accBeta1!.tensor.data())).toEqual(Array.from(await pow.data()));
    pow.dispose();
    for (let s = 3; s <= N; s++) step(resumed, s);
    // After step 2, 0.9 * 0.9 * 0.9 and pow(0.9, 3) differ in float32: the old state drifts.
    expect((await digest(resumed)).weights).not.toBe(final.weights);
    dispose(resumed);
  });

  it('loading states again and again into one optimizer keeps its tensor count (old slots are freed)', async () => {
    for (const name of Object.keys(OPTIMIZERS)) {
      const make = OPTIMIZERS[name]!;
      const r = run(6, make);
      step(r, 1);
      const state = await exportStageState(r.parts[0]!, r.opts[0]!);
      await importStageState(r.parts[0]!, r.opts[0]!, state);
      const before = tf.memory().numTensors;
      for (let i = 0; i < 5; i++) await importStageState(r.parts[0]!, r.opts[0]!, state);
      expect(tf.memory().numTensors, name).toBe(before);
      dispose(r);
    }
  });

  it('writing back what an optimizer read (its own tensors) changes nothing and frees nothing it still uses', async () => {
    for (const name of Object.keys(OPTIMIZERS)) {
      const make = OPTIMIZERS[name]!;
      const plain = run(7, make);
      const round = run(7, make);
      for (let s = 1; s <= 3; s++) [plain, round].forEach((r) => step(r, s));
      const own = await readOptimizerState(round.opts[0]!);
      await writeOptimizerState(round.opts[0]!, own);
      tf.dispose(own.map((o) => o.tensor).filter((t) => !(t instanceof tf.Variable)));
      for (let s = 4; s <= 6; s++) [plain, round].forEach((r) => step(r, s));
      expect(await digest(round), name).toEqual(await digest(plain));
      dispose(plain);
      dispose(round);
    }
  });

  it('refuses a running value of the wrong shape or dtype, naming it', async () => {
    const opt = tf.train.adam();
    const bad = [
      { name: 'iter', tensor: tf.scalar(3, 'int32') },
      { name: 'accBeta1', tensor: tf.tensor1d([0.5, 0.5]) },
    ];
    await expect(writeOptimizerState(opt, bad)).rejects.toThrow(ShapeError);
    await expect(writeOptimizerState(opt, bad)).rejects.toThrow(/accBeta1 is float32\[2\], expected a float32 scalar/);
    tf.dispose(bad.map((b) => b.tensor));
    opt.dispose();
  });
});
