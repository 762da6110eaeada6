/**
 * Forged and conflicting frames (#20 item 1). A process holding stage 0's NATS password may
 * publish on stage 1's FORWARD subject, but it cannot seal as stage 0: its frames are refused
 * and the weights are an unattacked run's, byte for byte. A frame that does carry the seal
 * but conflicts with the one stage 1 holds for its slot fails its step loudly; the next works.
 */
import * as tf from '@tensorflow/tfjs';
import { describe, expect, it, vi } from 'vitest';
import { waitFor } from 'xstate';
import { createPipeline, StageError, StateError, type Pipeline } from '../../src/index.js';
import { encodeFrame, Phase, subjects } from '../../src/protocol/index.js';
import { Bus } from '../../src/transport/index.js';
import { decodeReply, type RejectEvent } from '../../src/protocol/messages.js';
import { parseSealKey, sealFrame } from '../../src/protocol/seal.js';
import { countingLock } from '../helpers/countingLock.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const SIZES = [8, 32, 32, 32, 4];
const M = 4;
const BATCH = 16;
const STEPS = 6;

/** A 3-stage Adam pipeline of the seeded MLP, and its model. */
async function pipeline(job: string): Promise<{ pipe: Pipeline; model: tf.LayersModel }> {
  const model = mlp(SIZES, 23);
  const pipe = await createPipeline({
    model,
    stages: 3,
    microbatches: M,
    schedule: '1f1b',
    job,
    optimizer: { className: 'Adam', config: { learningRate: 0.01 } },
    loss: 'categoricalCrossentropy',
    nats: { servers: nats.server.url },
  });
  return { pipe, model };
}

/** Every step called at once: each begins (plans and inputs out) while the one before runs, as troupe up runs them. */
async function train(pipe: Pipeline, x: tf.Tensor, y: tf.Tensor, steps = STEPS): Promise<PromiseSettledResult<unknown>[]> {
  return Promise.allSettled(Array.from({ length: steps }, () => pipe.trainStep(x, y)));
}

/** The model's weights as bytes. */
async function weightBytes(model: tf.LayersModel): Promise<Uint8Array[]> {
  return Promise.all(model.getWeights().map(async (w) => new Uint8Array((await w.data()).buffer.slice(0))));
}

/** Resolves once stage 1 holds step `step`'s plan queued behind the step it runs. */
function queuedOnStage1(pipe: Pipeline, step: number): Promise<unknown> {
  return waitFor(pipe.actors.stages[1]!, (s) => s.context.next?.step === step, { timeout: 30_000 });
}

/** A FORWARD frame to stage 1 of `job`: zeros where activations go. */
function zeroFrame(pipe: Pipeline, job: string, step: number, microbatch: number, from = 'stage.0') {
  const width = pipe.partitions[1]!.inputs[0]!.shape[0]!;
  const rows = BATCH / M;
  return {
    key: { job, step, microbatch, phase: Phase.FORWARD },
    from,
    tensors: [{ name: 't0', dtype: 'float32' as const, shape: [rows, width], data: new Float32Array(rows * width) }],
  };
}

describe('forged frames', () => {
  it(`960 zero-filled FORWARD frames for coming steps, published with stage 0's password while a 3-stage job trains, are all refused: \
the weights are an unattacked run's, byte for byte`, async () => {
    const { x, y } = data(BATCH, SIZES[0]!, 4, 29);
    const clean = await pipeline('forge-ref');
    const attacked = await pipeline('forge');
    // The attacker: stage 0's user (its password leaked), a connection of its own.
    const attacker = await Bus.connect({ role: 'stage0', servers: nats.server.url, name: 'attacker' });
    const spy = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'spy' });
    const rejects: RejectEvent[] = [];
    const refused = countingLock(960);
    spy.subscribe(subjects.schedSubject('forge', 1, subjects.SchedEvent.REJECT), (m) => {
      rejects.push(decodeReply('reject', m.data));
      refused.count();
    });
    await spy.flush();
    try {
      const reference = await train(clean.pipe, x, y);
      expect(reference.every((r) => r.status === 'fulfilled')).toBe(true);
      // Once stage 1 holds step 3's plan (queued behind step 2), frames for steps 3..5: 80 copies of each key.
      const attack = queuedOnStage1(attacked.pipe, 3).then(async () => {
        const subject = subjects.stageSubject('forge', 1, Phase.FORWARD);
        for (let copy = 0; copy < 80; copy++) {
          for (let step = 3; step <= 5; step++) {
            for (let mb = 0; mb < M; mb++)
              for (const msg of encodeFrame(zeroFrame(attacked.pipe, 'forge', step, mb), 1 << 20)) await attacker.publish(subject, msg.data, msg.headers);
          }
        }
        await attacker.flush();
      });
      const results = await train(attacked.pipe, x, y);
      await attack;
      await refused.wait(30_000);
      expect(results.map((r) => r.status)).toEqual(Array(STEPS).fill('fulfilled'));
      expect(rejects).toHaveLength(960);
      // Refused for want of stage 0's seal (the queued step), or as frames of a step the stage does not hold.
      expect(new Set(rejects.map((r) => r.code))).toEqual(new Set(['FORGED_FRAME', 'UNEXPECTED_FRAME']));
      expect(rejects.filter((r) => r.code === 'FORGED_FRAME').length).toBeGreaterThan(0);
      expect(attacked.pipe.stats()[1]!.conflicts).toBe(0);
      const [a, b] = await Promise.all([weightBytes(attacked.model), weightBytes(clean.model)]);
      expect(a.length).toBe(b.length);
      a.forEach((bytes, i) => expect(Buffer.compare(bytes, b[i]!)).toBe(0));
    } finally {
      await attacker.close();
      await spy.close();
      await clean.pipe.close();
      await attacked.pipe.close();
      tf.dispose([x, y]);
    }
  });

  it(`a sealed frame conflicting with the one stage 1 holds fails its step loudly (neither frame used); \
the steps queued behind it are not run, and the next step trains`, async () => {
    const { x, y } = data(BATCH, SIZES[0]!, 4, 31);
    const { pipe } = await pipeline('conflict');
    const admin = await Bus.connect({ role: 'admin', servers: nats.server.url, name: 'conflicter' });
    try {
      // Stage 0's seal key, as the driver asks for it: this frame is one stage 0 could have sent.
      const key = parseSealKey(decodeReply('key', await admin.request(subjects.ctlSubject('conflict', 0, subjects.CtlVerb.KEY), new Uint8Array(0), 5_000)).key);
      const subject = subjects.stageSubject('conflict', 1, Phase.FORWARD);
      // Stage 1 is kept in step 2 (its UPDATE held back) while stage 0, granted its update early,
      // goes on to step 3 and sends its real first frame: stage 1 then holds it for the queued
      // step 3, and the forged one comes second for the same slot, whatever the machine's load.
      let conflictIn!: () => void;
      const released = new Promise<void>((r) => (conflictIn = r));
      const publish = Bus.prototype.publish;
      const update1 = subjects.stageSubject('conflict', 1, Phase.UPDATE);
      const hold = vi.spyOn(Bus.prototype, 'publish').mockImplementation(async function (
        this: Bus,
        to: string,
        data: Uint8Array,
        headers?: Record<string, string>,
      ) {
        if (to === update1 && headers?.['Troupe-Step'] === '2') await released;
        return publish.call(this, to, data, headers);
      });
      const slot = `${Phase.FORWARD}:0`;
      const sent = waitFor(pipe.actors.stages[1]!, (s) => s.context.next?.step === 3 && s.context.early[slot] !== undefined, { timeout: 30_000 }).then(
        async () => {
          for (const msg of encodeFrame(sealFrame(zeroFrame(pipe, 'conflict', 3, 0), subject, key), 1 << 20))
            await admin.publish(subject, msg.data, msg.headers);
          await admin.flush();
          await vi.waitFor(() => expect(pipe.stats()[1]!.conflicts).toBe(1), { timeout: 30_000 });
          conflictIn();
        },
      );
      const results = await train(pipe, x, y, 4);
      await sent;
      hold.mockRestore();
      expect(results.slice(0, 2).map((r) => r.status)).toEqual(['fulfilled', 'fulfilled']);
      const failed = results[2]!;
      expect(failed.status).toBe('rejected');
      const err = (failed as PromiseRejectedResult).reason as StageError;
      expect(err).toBeInstanceOf(StageError);
      expect(err.reason).toBe('CONFLICTING_FRAME');
      expect(err.message).toMatch(/conflict\/3\/0\/FORWARD from stage\.0: received twice with different bytes; neither is used, and step 3 fails/);
      expect((results[3] as PromiseRejectedResult).reason).toBeInstanceOf(StateError);
      expect(pipe.stats()[1]!.conflicts).toBe(1);
      // The next step works.
      const next = await pipe.trainStep(x, y);
      expect(Number.isFinite(next.loss)).toBe(true);
    } finally {
      await admin.close();
      await pipe.close();
      tf.dispose([x, y]);
    }
  });
});
