import * as tf from '@tensorflow/tfjs';
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { PartitionError } from '../../src/errors.js';
import { balanceByCost, minMaxCut } from '../../src/compute/balance.js';
import { partitionModel, stageStarts, type StagePartition } from '../../src/compute/partition.js';
import { mlp, skipModel } from '../helpers/models.js';

/** Runs the stages one after another, each on the previous one's outputs, not training. */
function chained(stages: readonly StagePartition[], x: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    let acts: tf.Tensor[] = [x];
    for (const s of stages) acts = s.run(acts, false);
    expect(acts).toHaveLength(1);
    return acts[0]!;
  });
}

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => a.sub(b).abs().max().dataSync()[0]!);
}

/** Every contiguous split of `costs` into p non-empty stages, as start lists. */
function allSplits(n: number, p: number): number[][] {
  if (p === 1) return [[0, n]];
  const out: number[][] = [];
  const rec = (starts: number[], k: number) => {
    if (k === p) return out.push([...starts, n]);
    const prev = starts[starts.length - 1]!;
    for (let s = prev + 1; s <= n - (p - k); s++) rec([...starts, s], k + 1);
  };
  rec([0], 1);
  return out;
}

const layerNamesOf = (m: tf.LayersModel) => m.layers.filter((l) => l.getClassName() !== 'InputLayer').map((l) => l.name);

let before = 0;
beforeEach(() => {
  before = tf.memory().numTensors;
});
afterEach(() => {
  tf.disposeVariables();
  expect(tf.memory().numTensors).toBe(before);
});

describe('balanceByCost', () => {
  it.each([
    [[4, 1, 1, 4], 2, [0, 2, 4]],
    [[1, 1, 1, 1], 4, [0, 1, 2, 3, 4]],
    [[5], 1, [0, 1]],
    [[1, 2, 3], 1, [0, 3]],
    [[1, 2, 3, 4, 5], 2, [0, 3, 5]],
    [[1, 2, 3, 4, 5], 3, [0, 3, 4, 5]],
    [[10, 1, 1, 1], 2, [0, 1, 4]],
    [[1, 1, 1, 10], 2, [0, 3, 4]],
    [[40, 54, 21, 8], 2, [0, 1, 4]],
    [[40, 54, 21, 8], 3, [0, 1, 2, 4]],
  ])('%j into %i stages -> %j', (costs, p, want) => {
    expect(balanceByCost(costs, p)).toEqual(want);
  });

  it('is optimal: its largest stage is the smallest over every split (small exhaustive check)', () => {
    const costs = [7, 2, 9, 4, 4, 1, 8, 3];
    for (let p = 1; p <= costs.length; p++) {
      const cost = (starts: number[]) => Math.max(...starts.slice(0, -1).map((s, k) => costs.slice(s, starts[k + 1]).reduce((a, b) => a + b, 0)));
      const got = balanceByCost(costs, p);
      expect(got).toHaveLength(p + 1);
      expect(got[0]).toBe(0);
      expect(got[p]).toBe(costs.length);
      for (let k = 0; k < p; k++) expect(got[k + 1]!).toBeGreaterThan(got[k]!);
      expect(cost(got)).toBe(Math.min(...allSplits(costs.length, p).map(cost)));
    }
  });

  it('minMaxCut, the one DP under balanceByCost and the memory-budget cut, is optimal for a cost that depends on the stage too', () => {
    const weights = [3, 8, 1, 6, 2, 5, 4];
    // As the memory budget's estimate: a stage holds more of its activations the earlier it is in the pipeline.
    const stageCost = (p: number) => (from: number, to: number, stage: number) =>
      weights.slice(from, to).reduce((a, b) => a + b, 0) * (1 + (p - 1 - stage) * 0.5);
    for (let p = 1; p <= weights.length; p++) {
      const cost = stageCost(p);
      const worst = (starts: number[]) => Math.max(...starts.slice(0, -1).map((s, k) => cost(s, starts[k + 1]!, k)));
      const got = minMaxCut(weights.length, p, cost);
      expect(got).toHaveLength(p + 1);
      expect(worst(got)).toBe(Math.min(...allSplits(weights.length, p).map(worst)));
    }
    expect(() => minMaxCut(3, 4, () => 0)).toThrow(/cannot cut 3 layers into 4 stages/);
  });

  it('refuses more stages than items, or fewer than one', () => {
    expect(() => balanceByCost([1, 2], 3)).toThrow(PartitionError);
    expect(() => balanceByCost([1, 2], 0)).toThrow(PartitionError);
    expect(() => balanceByCost([], 1)).toThrow(/cannot cut 0 layers into 1 stages/);
  });
});

describe('partitionModel', () => {
  it('splits an MLP evenly by parameter count', () => {
    // Dense params: 4*8+8 = 40, 8*6+6 = 54, 6*3+3 = 21, 3*2+2 = 8.
    const model = mlp([4, 8, 6, 3, 2]);
    const names = layerNamesOf(model);
    expect(model.layers.map((l) => l.countParams())).toEqual([40, 54, 21, 8]);

    const two = partitionModel(model, 2);
    expect(two.map((s) => s.layerNames)).toEqual([[names[0]], names.slice(1)]);
    expect(two.map((s) => s.params)).toEqual([40, 83]);
    expect(two.map((s) => [s.rank, s.stages])).toEqual([
      [0, 2],
      [1, 2],
    ]);

    const three = partitionModel(model, 3);
    expect(three.map((s) => s.layerNames)).toEqual([[names[0]], [names[1]], names.slice(2)]);
    expect(three.map((s) => s.params)).toEqual([40, 54, 29]);

    // Hand check: no other split of 2 or 3 stages has a smaller largest stage.
    const costs = [40, 54, 21, 8];
    for (const [p, parts] of [
      [2, two],
      [3, three],
    ] as const) {
      const best = Math.min(...allSplits(4, p).map((st) => Math.max(...st.slice(0, -1).map((s, k) => costs.slice(s, st[k + 1]).reduce((a, b) => a + b, 0)))));
      expect(Math.max(...parts.map((s) => s.params))).toBe(best);
    }

    // Cut tensors: the widths between the layers.
    expect(three.map((s) => s.inputs)).toEqual([[{ shape: [4], dtype: 'float32' }], [{ shape: [8], dtype: 'float32' }], [{ shape: [6], dtype: 'float32' }]]);
    expect(three.map((s) => s.outputs)).toEqual([[{ shape: [8], dtype: 'float32' }], [{ shape: [6], dtype: 'float32' }], [{ shape: [2], dtype: 'float32' }]]);
  });

  it('one stage is the whole model', () => {
    const model = mlp([4, 8, 3]);
    const [only, ...rest] = partitionModel(model, 1);
    expect(rest).toEqual([]);
    expect(only!.layerNames).toEqual(layerNamesOf(model));
    expect(only!.params).toBe(model.countParams());
  });

  it('takes explicit boundaries by index and by layer name', () => {
    const model = mlp([4, 8, 6, 3, 2]);
    const names = layerNamesOf(model);
    const byIndex = partitionModel(model, [2]);
    expect(byIndex.map((s) => s.layerNames)).toEqual([names.slice(0, 2), names.slice(2)]);
    const byName = partitionModel(model, [names[1]!, names[3]!]);
    expect(byName.map((s) => s.layerNames)).toEqual([[names[0]], names.slice(1, 3), [names[3]]]);
    const mixed = partitionModel(model, [1, names[2]!]);
    expect(mixed.map((s) => s.layerNames)).toEqual([[names[0]], [names[1]], names.slice(2)]);
    expect(stageStarts(model, [1, names[2]!])).toEqual([0, 1, 2, 4]);
  });

  it('chained stages equal model.predict (MLP, 3 stages)', () => {
    const model = mlp([5, 7, 6, 4, 3]);
    const x = tf.randomUniform([9, 5], -1, 1, 'float32', 11);
    const want = model.predict(x) as tf.Tensor;
    for (const spec of [3, [2], [1, 3]] as const) {
      const got = chained(partitionModel(model, spec), x);
      expect(got.shape).toEqual([9, 3]);
      expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
      got.dispose();
    }
    tf.dispose([x, want]);
  });

  it('chained stages equal model.predict with a skip connection (cut at skip_b, skip_c)', () => {
    const model = skipModel();
    expect(layerNamesOf(model)).toEqual(['skip_a', 'skip_b', 'skip_add', 'skip_c', 'skip_out']);
    const stages = partitionModel(model, ['skip_b', 'skip_c']);
    expect(stages.map((s) => s.layerNames)).toEqual([['skip_a'], ['skip_b', 'skip_add'], ['skip_c', 'skip_out']]);
    const x = tf.randomUniform([5, 6], -1, 1, 'float32', 5);
    const want = model.predict(x) as tf.Tensor;
    const got = chained(stages, x);
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
    tf.dispose([x, want, got]);
  });

  it('two tensors cross a cut and one passes through a stage (cut at skip_b, skip_add)', () => {
    const model = skipModel();
    const stages = partitionModel(model, ['skip_b', 'skip_add']);
    expect(stages.map((s) => s.layerNames)).toEqual([['skip_a'], ['skip_b'], ['skip_add', 'skip_c', 'skip_out']]);
    const f8 = { shape: [8], dtype: 'float32' };
    expect(stages.map((s) => s.inputs.length)).toEqual([1, 1, 2]);
    expect(stages[1]!.outputs).toEqual([f8, f8]); // a passed through, and b
    expect(stages[2]!.inputs).toEqual([f8, f8]);

    const x = tf.randomUniform([4, 6], -1, 1, 'float32', 9);
    const want = model.predict(x) as tf.Tensor;
    const got = chained(stages, x);
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
    // The pass-through output is stage 1's input tensor itself.
    tf.tidy(() => {
      const [a] = stages[0]!.run([x], false);
      const outs = stages[1]!.run([a!], false);
      expect(outs.filter((t) => t === a)).toHaveLength(1);
    });
    tf.dispose([x, want, got]);
  });

  it('shares the model weights: stage variables are the model variables themselves', () => {
    const model = mlp([4, 8, 6, 3]);
    const stages = partitionModel(model, 3);
    const own = model.trainableWeights.map((w) => w.read());
    const vars = stages.flatMap((s) => s.variables);
    expect(vars).toHaveLength(own.length);
    vars.forEach((v, i) => expect(v).toBe(own[i]));
    expect(stages.map((s) => s.variables.length)).toEqual([2, 2, 2]);

    // A change to a model weight shows in the stage's output.
    const x = tf.ones([2, 4]);
    const y0 = chained(stages, x);
    const kernel = own[4] as tf.Variable; // layer 2's kernel
    tf.tidy(() => kernel.assign(kernel.mul(2)));
    const y1 = chained(stages, x);
    const want = model.predict(x) as tf.Tensor;
    expect(maxAbsDiff(y1, want)).toBeLessThan(1e-6);
    expect(maxAbsDiff(y0, y1)).toBeGreaterThan(1e-4);
    tf.dispose([x, y0, y1, want]);
  });

  it('refuses bad stage specs with PartitionError', () => {
    const model = mlp([4, 8, 6, 3]); // 3 layers
    const names = layerNamesOf(model);
    const cases: [Parameters<typeof partitionModel>[1], RegExp][] = [
      [4, /cannot cut 3 layers into 4 stages/],
      [0, /positive integer/],
      [1.5, /positive integer/],
      [[0], /outside 1\.\.2/],
      [[3], /outside 1\.\.2/],
      [[-1], /outside 1\.\.2/],
      [[2, 1], /must increase/],
      [[1, 1], /must increase/],
      [['nope'], /no layer named "nope"/],
      [[names[1]!, 'nope'], /boundary 1: no layer named "nope"/],
    ];
    for (const [spec, msg] of cases) {
      let err: unknown;
      try {
        partitionModel(model, spec);
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(spec)).toBeInstanceOf(PartitionError);
      expect((err as PartitionError).code).toBe('PARTITION');
      expect((err as Error).message).toMatch(msg);
    }
  });

  it('refuses a Dropout layer when stages recompute, allows it when they keep their tape', () => {
    const build = (rate: number) => {
      const m = tf.sequential();
      m.add(tf.layers.dense({ units: 5, inputShape: [3], kernelInitializer: tf.initializers.glorotUniform({ seed: 1 }) }));
      m.add(tf.layers.dropout({ rate, name: `drop_${String(rate).replace('.', '_')}` }));
      m.add(tf.layers.dense({ units: 2, kernelInitializer: tf.initializers.glorotUniform({ seed: 2 }) }));
      return m;
    };
    const m = build(0.5);
    expect(() => partitionModel(m, 2, { recompute: true })).toThrow(PartitionError);
    expect(() => partitionModel(m, 2, { recompute: true })).toThrow(/drop_0_5 \(Dropout\) cannot be recomputed/);
    const stages = partitionModel(m, [2]);
    expect(stages.map((s) => s.layerNames.length)).toEqual([2, 1]);
    const x = tf.randomUniform([3, 3], -1, 1, 'float32', 2);
    const want = m.predict(x) as tf.Tensor;
    const got = chained(stages, x);
    expect(maxAbsDiff(got, want)).toBeLessThan(1e-6);
    tf.dispose([x, want, got]);
    // A dropout of rate 0 draws no mask: allowed for training.
    expect(partitionModel(build(0), 2, { recompute: true })).toHaveLength(2);
  });

  it('a stage refuses the wrong number of inputs', () => {
    const stages = partitionModel(skipModel(), ['skip_b', 'skip_add']);
    const x = tf.zeros([1, 8]);
    expect(() => stages[2]!.run([x], false)).toThrow(/stage 2 takes 2 inputs, got 1/);
    x.dispose();
  });
});
