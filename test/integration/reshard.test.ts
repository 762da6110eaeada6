/**
 * Checkpoints keyed by layer: a state saved from a 2-stage pipeline loads into a 3-stage
 * pipeline with other boundaries, on another copy of the model, optimizer state included;
 * training goes on exactly as single-process training would.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { reshard } from '../../src/compute/reshard.js';
import { dumpStates, loadStates } from '../../src/runtime/stageStates.js';
import { Bus } from '../../src/transport/bus.js';
import { copyWeights, data, maxAbsDiff, maxRelDiff, mlp, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

/** The helper MLP with its layers named, as the same model code names them in any process. */
function named(sizes: number[], seed: number): tf.LayersModel {
  const m = mlp(sizes, seed);
  const x = tf.input({ shape: [sizes[0]!] });
  let h: tf.SymbolicTensor = x;
  const out = m.layers.map((l, i) => tf.layers.dense({ ...(l.getConfig() as unknown as { units: number }), name: `layer${i}` }));
  for (const l of out) h = l.apply(h) as tf.SymbolicTensor;
  const model = tf.model({ inputs: x, outputs: h });
  model.setWeights(m.getWeights());
  m.dispose();
  return model;
}

describe('resharding a checkpoint', () => {
  it('2 steps on 2 stages, saved, loaded into 3 stages with other boundaries, 2 more steps: equals 4 single-process steps (Adam)', async () => {
    const SIZES = [8, 12, 12, 12, 3];
    const model = named(SIZES, 51);
    const ref = named(SIZES, 52);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy' });
    const driver = await Bus.connect({ role: 'driver', servers: nats.server.url });
    const { x, y } = data(16, SIZES[0]!, 3, 8);
    const common = { microbatches: 4, optimizer: tf.train.adam(0.02), loss: 'categoricalCrossentropy' as const, nats: { servers: nats.server.url } };
    let states;
    const two = await createPipeline({ ...common, model, stages: 2, job: 'reshard-a', optimizer: tf.train.adam(0.02) });
    try {
      expect(two.partitions.map((p) => p.layers.length)).toEqual([2, 2]);
      for (let s = 0; s < 2; s++) await stepBoth(two, ref, x, y);
      states = await dumpStates(driver, 'reshard-a', 2);
      // Adam's slots travel under the layers' names, not this model's variable names.
      expect(states[0]!.optimizerNames).toContain(`${states[0]!.weightNames[0]}/m`);
    } finally {
      await two.close();
    }
    // Another copy of the model (its variables get other names), cut 1 | 2 | 1.
    const other = named(SIZES, 53);
    const three = await createPipeline({ ...common, model: other, stages: [1, 3], job: 'reshard-b', optimizer: tf.train.adam(0.02) });
    try {
      expect(three.partitions.map((p) => p.layers.length)).toEqual([1, 2, 1]);
      const moved = reshard(states, three.partitions).map((s, rank) => ({ ...s, rank, step: 0 }));
      await loadStates(driver, 'reshard-b', moved);
      expect(maxRelDiff(other, model)).toBeLessThan(1e-7);
      for (let s = 0; s < 2; s++) {
        const [r, refLoss] = await stepBoth(three, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      // Absolute: Adam divides by sqrt(v), so float noise in a gradient near zero moves its
      // weight by a few 1e-7, which a relative measure with a 1e-3 floor would blow up.
      expect(maxAbsDiff(other, ref)).toBeLessThan(1e-5);
    } finally {
      await three.close();
      await driver.close();
      tf.dispose([x, y]);
    }
  });
});
