/**
 * subscribeFrames, the one way frames are received (#21 item 4): headers checked, the
 * receiver's admit hook before any byte is assembled, chunks reassembled under a size limit,
 * refusals counted and reported; and the receivers that had no size limit now have one.
 */
import { describe, expect, it } from 'vitest';
import { FrameError, UnexpectedFrameError, type TroupeError } from '../../src/errors.js';
import { encodeFrame, type Frame } from '../../src/protocol/frame.js';
import { Phase } from '../../src/protocol/phase.js';
import { encodeTensors } from '../../src/serve/tensorMessage.js';
import { Bus } from '../../src/transport/bus.js';
import { useNatsServer } from '../helpers/nats.js';
import { countingLock } from '../helpers/countingLock.js';

const nats = useNatsServer();

const frame = (step: number, floats: number, job = 'j'): Frame => ({
  key: { job, step, microbatch: 0, phase: Phase.FORWARD },
  from: 'stage.0',
  tensors: [{ name: 't0', dtype: 'float32', shape: [floats], data: new Float32Array(floats).fill(step) }],
});

describe('subscribeFrames', () => {
  it(`takes whole frames (chunked too), refuses with the admit hook before assembling, over the size limit, and malformed; \
counts and reports each refusal`, async () => {
    const pub = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const sub = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const got: Frame[] = [];
    const refusals: { subject: string; error: TroupeError }[] = [];
    const lock = countingLock(5);
    const frames = sub.subscribeFrames('sf.stage.1.*', {
      maxBytes: 4096,
      admit: (h) => (h.key.job === 'j' ? null : new UnexpectedFrameError(`job ${h.key.job}`)),
      onFrame: (f) => {
        got.push(f);
        lock.count();
      },
      onRefuse: (subject, error) => {
        refusals.push({ subject, error });
        lock.count();
      },
    });
    try {
      await sub.flush();
      // Whole, in one message; whole, in 4 chunks of 1 KB.
      for (const m of encodeFrame(frame(1, 16), 1 << 20)) await pub.publish('sf.stage.1.FORWARD', m.data, m.headers);
      for (const m of encodeFrame(frame(2, 1024), 1024)) await pub.publish('sf.stage.1.FORWARD', m.data, m.headers);
      // Refused by the hook: its first chunk (of 4) already, so nothing is held for it; then the other 3 too.
      const foreign = encodeFrame(frame(3, 1024, 'other'), 1024);
      await pub.publish('sf.stage.1.FORWARD', foreign[0]!.data, foreign[0]!.headers);
      await pub.flush();
      // Over the 4096-byte limit.
      for (const m of encodeFrame(frame(4, 2048), 1 << 20)) await pub.publish('sf.stage.1.FORWARD', m.data, m.headers);
      // The phase of the subject and of the header disagree.
      for (const m of encodeFrame(frame(5, 4), 1 << 20)) await pub.publish('sf.stage.1.BACKWARD', m.data, m.headers);
      await pub.flush();
      await lock.wait(10_000);
      expect(got.map((f) => [f.key.step, f.tensors[0]!.data.length, f.tensors[0]!.data[0]])).toEqual([
        [1, 16, 1],
        [2, 1024, 2],
      ]);
      expect(refusals.map((r) => [r.subject, r.error.constructor])).toEqual([
        ['sf.stage.1.FORWARD', UnexpectedFrameError],
        ['sf.stage.1.FORWARD', FrameError],
        ['sf.stage.1.BACKWARD', FrameError],
      ]);
      expect(refusals[1]!.error.message).toMatch(/frame of 8192 bytes is over the 4096-byte limit/);
      expect(refusals[2]!.error.message).toMatch(/phase FORWARD sent on the BACKWARD subject/);
      expect(frames.refused).toBe(3);
      expect(frames.heldBytes).toBe(0);
    } finally {
      await frames.drain();
      await pub.close();
      await sub.close();
    }
  });

  it("a prediction's outputs have a size limit and the last stage's seal: an oversize or unsealed output is refused, not kept", async () => {
    const { SchedulerHost } = await import('../../src/runtime/schedulerHost.js');
    const driver = await Bus.connect({ role: 'driver', servers: nats.server.url });
    const stage = await Bus.connect({ role: 'stage1', servers: nats.server.url });
    const sched = await SchedulerHost.start({ bus: driver, job: 'outs', stages: 2, maxFrameBytes: 1024 });
    try {
      await driver.flush();
      for (const m of encodeFrame({ ...frame(1, 512, 'outs'), key: { job: 'outs', step: 1, microbatch: 0, phase: Phase.FORWARD } }, 1 << 20))
        await stage.publish('troupe.outs.output', m.data, m.headers);
      for (const m of encodeFrame({ ...frame(1, 4, 'outs'), key: { job: 'outs', step: 1, microbatch: 1, phase: Phase.FORWARD } }, 1 << 20))
        await stage.publish('troupe.outs.output', m.data, m.headers);
      await stage.flush();
      await driver.flush();
      await expect.poll(() => sched.malformedEvents).toBe(2);
      expect(() => sched.takeOutputs(1, 2)).toThrow(/the outputs of microbatches 0, 1 did not arrive/);
    } finally {
      await sched.close();
      await stage.close();
      await driver.close();
    }
  });
});

describe('serving speaks frames', () => {
  it('a module runtime answers a request that is a frame, with a frame', async () => {
    const tf = await import('@tensorflow/tfjs');
    const { ModuleRuntime } = await import('../../src/serve/moduleRuntime.js');
    const { decodeTensors } = await import('../../src/serve/tensorMessage.js');
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    const runtime = await ModuleRuntime.start({
      bus,
      name: 'frames',
      modules: [{ name: 'double', inputs: [{ shape: [3], dtype: 'float32' }], forward: ([x]) => [tf.mul(x!, 2)], maxWaitMs: 0 }],
    });
    try {
      // A frame as encodeFrame makes it: headers naming the tensor, its bytes as the body.
      const req = encodeFrame(
        {
          key: { job: 'serve', step: 0, microbatch: 0, phase: Phase.FORWARD },
          from: 'me',
          tensors: [{ name: 'x0', dtype: 'float32', shape: [1, 3], data: new Float32Array([1, 2, 3]) }],
        },
        1 << 20,
      )[0]!;
      expect(req).toEqual(encodeTensors([{ name: 'x0', dtype: 'float32', shape: [1, 3], data: new Float32Array([1, 2, 3]) }], 'forward', 'me'));
      const reply = await bus.requestMessage('troupe.serve.frames.double.forward', req.data, 5_000, req.headers);
      expect(reply.header('Troupe-Tensors')).toBe('y0:float32:1,3');
      const out = decodeTensors(reply);
      expect('tensors' in out && Array.from(out.tensors[0]!.data)).toEqual([2, 4, 6]);
    } finally {
      await runtime.stop();
      await bus.close();
    }
  });
});
