import * as tf from '@tensorflow/tfjs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { Bus } from '../../src/transport/index.js';
import { StageCompute } from '../../src/compute/stageCompute.js';
import { decodeMessage, type ActionEvent } from '../../src/protocol/messages.js';
import type { Frame } from '../../src/protocol/frame.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

afterEach(() => {
  vi.restoreAllMocks();
});

/** A 2-stage 1F1B pipeline of a small MLP in this process (so both stages share one clock). */
async function twoStages(job: string, schedule = '1f1b') {
  return createPipeline({
    model: mlp([6, 8, 8, 3], 5),
    stages: 2,
    microbatches: 4,
    schedule,
    job,
    optimizer: tf.train.sgd(0.1),
    loss: 'categoricalCrossentropy',
    nats: { servers: nats.server.url },
  });
}

describe('action events say where the time went', () => {
  it('carry when the output was handed to the bus and when the consumed frame arrived, in causal order', async () => {
    const job = 'timings';
    const pipe = await twoStages(job);
    const spy = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'timings-spy' });
    const events: ActionEvent[] = [];
    spy.subscribe(`troupe.${job}.sched.*.action`, (m) => events.push(decodeMessage('action', m.data)));
    await spy.flush();
    const { x, y } = data(8, 6, 3, 9);
    try {
      await pipe.trainStep(x, y);
      await spy.flush();
      const at = (rank: number, action: string) => events.find((e) => e.rank === rank && e.action === action && e.step === 1)!;
      for (let mb = 0; mb < 4; mb++) {
        const f0 = at(0, `F${mb}`);
        const f1 = at(1, `F${mb}`);
        const b1 = at(1, `B${mb}`);
        const b0 = at(0, `B${mb}`);
        // Stage 0's F and stage 1's B publish a frame within the action; stage 0's B sends nothing.
        for (const e of [f0, b1]) {
          expect(e.sendAt).toBeGreaterThanOrEqual(0);
          expect(e.sendMs).toBeGreaterThanOrEqual(0);
          expect(e.sendAt! + e.sendMs!).toBeLessThanOrEqual(e.ms + 1e-9);
        }
        for (const e of [f0, f1, b0, b1]) {
          // Reading other frames while the action awaited is the host's time, not the action's sending.
          expect(e.hostMs).toBeGreaterThanOrEqual(0);
          expect(e.hostMs! + (e.sendMs ?? 0)).toBeLessThanOrEqual(e.ms + 1e-9);
        }
        expect(b0.sendAt).toBeUndefined();
        expect(f1.sendAt).toBeUndefined(); // the last stage's forward sends nothing on
        // Every action that consumed a frame says when it was whole: after its sender handed it
        // over (one clock: both stages are in this process) and before the action began.
        expect(f1.inAt!).toBeGreaterThanOrEqual(f0.t0 + f0.sendAt!);
        expect(f1.inAt!).toBeLessThanOrEqual(f1.t0);
        expect(b0.inAt!).toBeGreaterThanOrEqual(b1.t0 + b1.sendAt!);
        expect(b0.inAt!).toBeLessThanOrEqual(b0.t0);
        expect(f0.inAt!).toBeLessThanOrEqual(f0.t0); // stage 0's INPUT from the scheduler
      }
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});

describe('a stage sends what is ready as soon as it is ready', () => {
  it('1F1B: the input gradients go upstream before the weight gradients are computed', async () => {
    // The order of the stage's own calls: publishing the BACKWARD frame of microbatch i, and
    // computing W of microbatch i (within an unsplit backward).
    const log: string[] = [];
    const publish = Bus.prototype.publishFrame;
    vi.spyOn(Bus.prototype, 'publishFrame').mockImplementation(function (this: Bus, subject: string, frame: Frame) {
      if (subject.endsWith('.BACKWARD')) log.push(`send ${frame.key.microbatch}`);
      return publish.call(this, subject, frame);
    });
    const weights = StageCompute.prototype.backwardWeights;
    vi.spyOn(StageCompute.prototype, 'backwardWeights').mockImplementation(function (this: StageCompute, mb: number) {
      if (this.partition.rank === 1) log.push(`W ${mb}`);
      return weights.call(this, mb);
    });
    const pipe = await twoStages('early-send');
    const { x, y } = data(8, 6, 3, 10);
    try {
      await pipe.trainStep(x, y);
      expect(log).toEqual(['send 0', 'W 0', 'send 1', 'W 1', 'send 2', 'W 2', 'send 3', 'W 3']);
    } finally {
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
