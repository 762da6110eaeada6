import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { createPipeline } from '../../src/index.js';
import { encodeFrame, Phase, subjects } from '../../src/protocol/index.js';
import { Bus } from '../../src/transport/index.js';
import { data, maxRelDiff, mlpAndReference, stepBoth } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';
import { countingLock } from '../helpers/countingLock.js';
import { decodeReply } from '../../src/protocol/messages.js';
import { parseSealKey, sealFrame } from '../../src/protocol/seal.js';

const nats = useNatsServer();

describe('malformed frames on a running job', () => {
  it('are refused with typed errors while the stages finish the step and train exactly', async () => {
    const SIZES = [8, 32, 32, 4];
    const { model, ref } = mlpAndReference(SIZES, 11, tf.train.sgd(0.05));
    const job = 'badframes';
    const pipe = await createPipeline({
      model,
      stages: 2,
      microbatches: 16,
      schedule: '1f1b',
      job,
      optimizer: tf.train.sgd(0.05),
      loss: 'categoricalCrossentropy',
      nats: { servers: nats.server.url },
    });
    const spy = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'spy' });
    const rejects: { rank: number; code: string; message: string }[] = [];
    const lock = countingLock(6);
    spy.subscribe(subjects.schedWildcard(job, 'reject'), (m) => {
      rejects.push(JSON.parse(new TextDecoder().decode(m.data)));
      lock.count();
    });
    const to1 = (phase: string) => `troupe.${job}.stage.1.${phase}`;
    let injected = false;
    // On the first activation of step 2 reaching stage 1, send stage 1 one bad frame of each kind.
    spy.subscribe(subjects.stageSubject(job, 1, Phase.FORWARD), (m) => {
      if (injected || m.header('Troupe-Step') !== '2') return;
      injected = true;
      const headers: Record<string, string> = {};
      for (const h of [
        'Troupe-Job',
        'Troupe-Step',
        'Troupe-Mb',
        'Troupe-Phase',
        'Troupe-From',
        'Troupe-Tensors',
        'Troupe-Bytes',
        'Troupe-Chunk',
        'Troupe-Seal',
      ])
        headers[h] = m.header(h)!;
      const send = (subject: string, h: Record<string, string>, body: Uint8Array) => void spy.publish(subject, body, h);
      // 1. duplicate key: the very same frame again
      send(m.subject, headers, m.data);
      // 2. bad header: no step
      const { ['Troupe-Step']: _s, ...noStep } = headers;
      send(m.subject, noStep, m.data);
      // 3. wrong byte length
      send(m.subject, headers, m.data.subarray(0, m.data.byteLength - 4));
      // 4. unknown phase
      send(to1('SIDEWAYS'), { ...headers, 'Troupe-Phase': 'SIDEWAYS' }, m.data);
      // 5. stale step
      send(m.subject, { ...headers, 'Troupe-Step': '1' }, m.data);
      // 6. wrong shape for a microbatch not yet received: refused, and the real one still counts
      //    (sealed with stage 0's key, as stage 0 would send it: the shape is what is wrong)
      const wrong = encodeFrame(
        sealFrame(
          {
            key: { job, step: 2, microbatch: 15, phase: Phase.FORWARD },
            from: 'spy',
            tensors: [{ name: 'a0', dtype: 'float32', shape: [1, 31], data: new Float32Array(31) }],
          },
          m.subject,
          stage0Key,
        ),
        1 << 20,
      )[0]!;
      send(m.subject, wrong.headers, wrong.data);
    });
    await spy.flush();
    // Stage 0's seal key, as the driver asks it (an admin may too).
    const stage0Key = parseSealKey(decodeReply('key', await spy.request(subjects.ctlSubject(job, 0, subjects.CtlVerb.KEY), new Uint8Array(0), 5_000)).key);
    const { x, y } = data(64, SIZES[0]!, 4, 5);
    try {
      for (let s = 0; s < 3; s++) {
        const [r, refLoss] = await stepBoth(pipe, ref, x, y);
        expect(Math.abs(r.loss - refLoss) / refLoss).toBeLessThan(1e-5);
      }
      await lock.wait(10_000);
      expect(injected).toBe(true);
      expect(rejects.every((r) => r.rank === 1)).toBe(true);
      expect(rejects.map((r) => r.code).sort()).toEqual(['DUPLICATE_KEY', 'FRAME', 'FRAME', 'FRAME', 'SHAPE', 'STALE_STEP']);
      const messages = rejects.map((r) => r.message).join('\n');
      expect(messages).toMatch(/Troupe-Step is missing/);
      expect(messages).toMatch(/has \d+ bytes, expected \d+/);
      expect(messages).toMatch(/unknown phase "SIDEWAYS"/);
      expect(messages).toMatch(/received twice/);
      expect(messages).toMatch(/step 1 is over/);
      expect(messages).toMatch(/expected float32\[4,32\]|expected float32\[\d+,32\]/);
      // Nothing lost, nothing applied twice: the weights are single-process training's.
      expect(maxRelDiff(model, ref)).toBeLessThan(1e-5);
      expect(pipe.stats()[1]!.rejected).toBe(6);
    } finally {
      await spy.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
