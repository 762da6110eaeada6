import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { copyWeights, data, maxRelDiff, mlp, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('evaluate (forward only)', () => {
  it('returns model.evaluate loss and accuracy and leaves the weights alone', async () => {
    const SIZES = [10, 16, 16, 4];
    const model = mlp(SIZES, 21);
    const ref = mlp(SIZES, 22);
    copyWeights(model, ref);
    ref.compile({ optimizer: tf.train.sgd(0.1), loss: 'categoricalCrossentropy', metrics: ['accuracy'] });
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 3,
      schedule: 'gpipe',
      optimizer: tf.train.sgd(0.1),
      loss: 'categoricalCrossentropy',
      metric: 'accuracy',
      nats: { servers: nats.server.url },
    });
    const { x, y } = data(30, SIZES[0]!, 4, 9);
    try {
      const before = model.getWeights().map((w) => w.clone());
      const r = await pipe.evaluate(x, y);
      const [refLoss, refAcc] = ref.evaluate(x, y, { batchSize: 30 }) as tf.Scalar[];
      expect(r.loss).toBeCloseTo(refLoss!.dataSync()[0]!, 5);
      expect(r.metric).toBeCloseTo(refAcc!.dataSync()[0]!, 5);
      expect(r.peakHeld).toEqual([0, 0]); // nothing is held for a backward when evaluating
      model.getWeights().forEach((w, i) => expect(tf.max(tf.abs(tf.sub(w, before[i]!))).dataSync()[0]).toBe(0));
      // Train, then evaluate again: still the reference's numbers.
      await stepBoth(pipe, ref, x, y);
      const again = await pipe.evaluate(x, y);
      const [l2] = ref.evaluate(x, y, { batchSize: 30 }) as tf.Scalar[];
      expect(again.loss).toBeCloseTo(l2!.dataSync()[0]!, 5);
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      tf.dispose([...before, refLoss!, refAcc!, l2!]);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
