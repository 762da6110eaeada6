/**
 * examples/compose.ts, run as a user runs it: their own machine drives a pipeline and a task
 * pool through `fromPromise` actors and listens to the pipeline's actors (`pipe.actors`).
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { countCorrect, runCompose } from '../../examples/compose.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('examples/compose.ts', () => {
  it("a user's machine trains, scores on the pool, and hears every state of the pipeline's actors", async () => {
    const steps = 6;
    const { losses, accuracy, seen, model, test } = await runCompose({ nats: nats.server.url, steps });
    try {
      expect(losses).toHaveLength(steps);
      expect(losses.at(-1)!).toBeLessThan(losses[0]!);
      // The pool's answer is the accuracy of the trained model's own predictions.
      const probabilities = (await (model.predict(test.x) as tf.Tensor).array()) as number[][];
      expect(accuracy).toBeCloseTo(countCorrect({ probabilities, labels: test.labels }) / test.labels.length, 1);
      expect(accuracy).toBeGreaterThan(0.9);
      // Every actor of the pipeline was followed through its step states.
      expect(Object.keys(seen).sort()).toEqual(['scheduler', 'stage-0', 'stage-1']);
      for (const stage of ['stage-0', 'stage-1'])
        for (const state of ['running', 'updating', 'idle']) expect(seen[stage]![state], `${stage} ${state}`).toBeGreaterThanOrEqual(steps);
      expect(seen['scheduler']!['active']).toBeGreaterThanOrEqual(steps);
    } finally {
      model.dispose();
      tf.dispose([test.x, test.y]);
    }
  });
});
