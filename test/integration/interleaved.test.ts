/**
 * Devices hosting several stages: the stages of one device take turns in the device's order
 * (interleaved 1F1B), as the action events of a real run over nats-server show.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { decodeMessage, type ActionEvent } from '../../src/protocol/messages.js';
import { SchedEvent, schedWildcard } from '../../src/protocol/subjects.js';
import { formatAction } from '../../src/schedule/action.js';
import { deviceOf } from '../../src/schedule/interleaved.js';
import { Bus } from '../../src/transport/bus.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

describe('interleaved 1F1B over a real nats-server', () => {
  it("each device's stages run their actions exactly in the device's order", async () => {
    const job = 'interleave-order';
    const sizes = [8, 12, 12, 12, 12, 3];
    const model = mlp(sizes, 3);
    const d = 2;
    const v = 2;
    const m = 4;
    const pipe = await createPipeline({
      model,
      stages: d * v,
      virtualStages: v,
      microbatches: m,
      schedule: 'interleaved',
      job,
      optimizer: tf.train.sgd(0.05),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const watcher = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'watcher' });
    const events: ActionEvent[] = [];
    const sub = watcher.subscribe(schedWildcard(job, SchedEvent.ACTION), (msg) => events.push(decodeMessage('action', msg.data)));
    await watcher.flush();
    const { x, y } = data(16, sizes[0]!, 3, 2);
    try {
      const r = await pipe.trainStep(x, y);
      await watcher.flush();
      const ran = events.filter((e) => e.step === r.step);
      expect(ran).toHaveLength(d * v * m * 2);
      for (let dev = 0; dev < d; dev++) {
        const order = ran
          .filter((e) => deviceOf(e.rank, d) === dev)
          .sort((a, b) => a.t0 - b.t0)
          .map((e) => `${e.rank}${e.action}`);
        expect(order).toEqual(pipe.devices![dev]!.map(formatAction));
      }
    } finally {
      await sub.drain();
      await watcher.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
