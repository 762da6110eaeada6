import * as tf from '@tensorflow/tfjs';
import { describe, expect, it } from 'vitest';
import { waitFor } from 'xstate';
import { StepTimeoutError } from '../../src/index.js';
import { SchedulerHost, StageHost } from '../../src/runtime/index.js';
import { subjects } from '../../src/protocol/index.js';
import { Bus } from '../../src/transport/index.js';
import { partitionModel, StageCompute } from '../../src/compute/index.js';
import type { SchedulerHostOptions } from '../../src/runtime/schedulerHost.js';
import { fromTensor } from '../../src/compute/wire.js';
import { data, mlp } from '../helpers/models.js';
import { useNatsServer } from '../helpers/nats.js';
import { twoStageStep } from '../helpers/stepWork.js';

const nats = useNatsServer();
const enc = new TextEncoder();

/**
 * A real stage 0, and a rank 1 that answers control requests (`probe` with the given reply,
 * everything else ok) but never computes. Runs one 1F1B step of 2 microbatches and hands the
 * step's error (and stage 0) to `check`.
 */
async function stepWithSilentRankOne(
  job: string,
  o: { probe?: object; sched?: Partial<SchedulerHostOptions>; timeoutMs: number },
  check: (err: unknown, stage0: StageHost, compute: StageCompute) => Promise<void>,
): Promise<void> {
  const parts = partitionModel(mlp([4, 8, 2], 41), 2);
  const [busA, busB, busC] = await Promise.all([0, 1, 2].map(() => Bus.connect({ role: 'admin', servers: nats.server.url })));
  const compute = new StageCompute({ partition: parts[0]!, optimizer: tf.train.sgd(0.1) });
  const stage0 = await StageHost.start({ bus: busA!, job, partition: parts[0]!, compute });
  // Its seal key, asked before the first step, is any 32 bytes: it never sends a frame.
  const key = JSON.stringify({ key: Buffer.alloc(32, 7).toString('base64') });
  busC!.subscribe(subjects.ctlWildcard(job, 1), (m) =>
    m.respond(enc.encode(o.probe && m.subject.endsWith('.probe') ? JSON.stringify(o.probe) : m.subject.endsWith('.key') ? key : '{"ok":true}')),
  );
  await busC!.flush();
  const sched = await SchedulerHost.start({ bus: busB!, job, stages: 2, ...o.sched });
  const { x, y } = data(4, 4, 2);
  const xw = await fromTensor(x, 'x0');
  const yw = await fromTensor(y, 'y0');
  try {
    const err = await sched.run(twoStageStep(job, xw, yw, o.timeoutMs)).catch((e: unknown) => e);
    await check(err, stage0, compute);
  } finally {
    await sched.close();
    await stage0.close();
    compute.dispose();
    await Promise.all([busA!.close(), busB!.close(), busC!.close()]);
    tf.dispose([x, y]);
  }
}

describe('a hung stage', () => {
  it('ends the step with StepTimeoutError naming the stages not done, and stage 0 is aborted clean', async () => {
    // Rank 1 answers control requests but never computes: a hung stage.
    await stepWithSilentRankOne('hung', { timeoutMs: 400 }, async (err, stage0, compute) => {
      expect(err).toBeInstanceOf(StepTimeoutError);
      expect((err as Error).message).toMatch(/stages not done: 0, 1/);
      expect((err as Error).message).toMatch(/microbatches without loss: 0, 1/);
      // The abort reached stage 0: idle again, nothing held.
      await waitFor(stage0.actor, (snap) => snap.matches('idle'), { timeout: 2000 });
      expect(compute.held).toBe(0);
    });
  });

  it('a step that makes no progress fails as STEP_STALLED with its action grid: each stage, its state, the action it is at and what it waits for', async () => {
    const silent: string[] = [];
    // Rank 1 is alive (it answers plans and probes) but never receives its activations.
    const probe = { rank: 1, step: 1, state: 'running.waiting', action: 'F0', awaiting: ['FORWARD:0'] };
    await stepWithSilentRankOne(
      'stalled',
      { probe, timeoutMs: 20_000, sched: { stallTimeoutMs: 600, heartbeatMs: 100, onSilent: (r) => silent.push(r) } },
      async (err, stage0) => {
        const message = (err as Error).message;
        expect((err as { reason?: string }).reason).toBe('STEP_STALLED');
        expect(message).toMatch(/step 1 made no progress for \d+ ms/);
        // Stage 0 has done its forwards and waits for the first gradient; stage 1 waits for an activation.
        expect(message).toMatch(/stage 0 {2}running\.waiting\s+F0 F1 \[B0\] ·· {3}waiting for BACKWARD:0/);
        expect(message).toMatch(/stage 1 {2}running\.waiting\s+\[F0\] ·· ·· ·· {3}waiting for FORWARD:0/);
        expect(silent[0]).toBe(message.slice(message.indexOf('step 1 made')));
        await waitFor(stage0.actor, (snap) => snap.matches('idle'), { timeout: 2000 });
      },
    );
  });
});
