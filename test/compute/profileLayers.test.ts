/**
 * Time-balanced cuts: per-layer forward + backward times measured on this backend, and the
 * cut they give where parameter counts mislead.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { PartitionError } from '../../src/errors.js';
import { partitionModel, stageStarts } from '../../src/compute/partition.js';
import { profileLayers } from '../../src/compute/profileLayers.js';
import { skipModel } from '../helpers/models.js';

/** Two convolutions (most of the work, few parameters), then two dense layers (many parameters, little work). */
function convThenDense(): tf.Sequential {
  const init = (k: number) => tf.initializers.glorotUniform({ seed: 60 + k });
  const m = tf.sequential();
  m.add(
    tf.layers.conv2d({ inputShape: [24, 24, 16], filters: 16, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(1), name: 'c1' }),
  );
  m.add(tf.layers.conv2d({ filters: 16, kernelSize: 3, padding: 'same', activation: 'relu', kernelInitializer: init(2), name: 'c2' }));
  m.add(tf.layers.flatten({ name: 'flat' }));
  m.add(tf.layers.dense({ units: 64, activation: 'relu', kernelInitializer: init(3), name: 'd1' }));
  m.add(tf.layers.dense({ units: 10, activation: 'softmax', kernelInitializer: init(4), name: 'd2' }));
  return m;
}

describe('profileLayers and time-balanced cuts', () => {
  it('measures every layer on its own input and leaves no tensor behind', async () => {
    const model = skipModel();
    const before = tf.memory().numTensors;
    const ms = await profileLayers(model, { rows: 8, repeats: 1 });
    expect(ms).toHaveLength(model.layers.filter((l) => l.getClassName() !== 'InputLayer').length);
    expect(ms.every((t) => t >= 0 && Number.isFinite(t))).toBe(true);
    expect(tf.memory().numTensors).toBe(before);
  });

  it('cuts a conv net where the time is, not where the parameters are', async () => {
    const model = convThenDense();
    const byParams = stageStarts(model, 2);
    // The dense layer d1 holds ~99 % of the parameters, so a parameter cut gives it (with the flatten) a stage of its own.
    expect(byParams).toEqual([0, 2, 5]);
    const ms = await profileLayers(model, { rows: 16 });
    // The two equal convolutions take most of the time: a time cut separates them.
    expect(ms[0]! + ms[1]!).toBeGreaterThan(ms[3]! + ms[4]!);
    const byTime = partitionModel(model, 2, { costs: ms });
    expect(byTime[0]!.layerNames).toEqual(['c1']);
    const cost = (starts: number[], k: number) => ms.slice(starts[k], starts[k + 1]).reduce((a, b) => a + b, 0);
    const timeStarts = [0, 1, 5];
    expect(Math.max(cost(timeStarts, 0), cost(timeStarts, 1))).toBeLessThan(Math.max(cost(byParams, 0), cost(byParams, 1)));
  });

  it('refuses costs of the wrong length or sign', () => {
    const model = convThenDense();
    expect(() => stageStarts(model, 2, [1, 2, 3])).toThrow(PartitionError);
    expect(() => stageStarts(model, 2, [1, 2, -3, 4, 5])).toThrow(/non-negative/);
  });
});
