/**
 * What the machines alone cost, in memory (no NATS, no tensors): N steps of a middle 1F1B
 * stage (p = 3, m = 16, every frame in at once, compute a no-op) and N steps of the scheduler
 * (p = 2, m = 16: plans acked at once, every loss, DONE and UPDATED, stage 0's releases).
 * Prints one JSON line: µs per step of each, best of ROUNDS. Run it from two checkouts in
 * alternation to compare them: `npx tsx bench/machines.ts`.
 */
import { createActor, fromPromise, waitFor } from 'xstate';
import { actionRunner, stageMachine, updateRunner } from '../actors/stageMachine.js';
import { schedulerMachine, type StepRequest } from '../actors/schedulerMachine.js';
import type { Frame } from '../src/protocol/frame.js';
import { Phase } from '../src/protocol/phase.js';
import { oneFOneB } from '../src/schedule/oneFOneB.js';
import { formatStageActions } from '../src/schedule/action.js';

const STEPS = Number(process.env['BENCH_MACHINE_STEPS'] ?? 300);
const ROUNDS = Number(process.env['BENCH_MACHINE_ROUNDS'] ?? 5);
const M = 16;

async function stageSteps(): Promise<number> {
  const machine = stageMachine.provide({ actions: { startRun: actionRunner(async () => {}), startUpdate: updateRunner(() => {}) } });
  const actor = createActor(machine, {
    input: { job: 'b', rank: 1, stages: 3, inputs: [{ shape: [3], dtype: 'float32' }], outputs: [{ shape: [2], dtype: 'float32' }] },
  });
  actor.start();
  await waitFor(actor, (s) => s.matches('idle'));
  const actions = formatStageActions(oneFOneB(3, M)[1]!);
  const t = (name: string, shape: number[]) => ({ name, dtype: 'float32' as const, shape, data: new Float32Array(shape[0]! * shape[1]!) });
  const t0 = performance.now();
  for (let step = 1; step <= STEPS; step++) {
    actor.send({
      type: 'STEP',
      plan: {
        step,
        microbatches: M,
        batchSize: 2 * M,
        totalBatch: 2 * M,
        forwardOnly: false,
        predict: false,
        update: true,
        granted: false,
        actions,
        order: '',
      },
    });
    for (let mb = 0; mb < M; mb++) {
      const f: Frame = { key: { job: 'b', step, microbatch: mb, phase: Phase.FORWARD }, from: 'x', tensors: [t('t0', [2, 3])] };
      const b: Frame = { key: { job: 'b', step, microbatch: mb, phase: Phase.BACKWARD }, from: 'x', tensors: [t('t0', [2, 2])] };
      actor.send({ type: 'FRAME', frame: f });
      actor.send({ type: 'FRAME', frame: b });
    }
    await waitFor(actor, (s) => s.matches('awaitingUpdate'));
    actor.send({ type: 'UPDATE', step });
  }
  const us = ((performance.now() - t0) * 1000) / STEPS;
  actor.stop();
  return us;
}

async function schedulerSteps(): Promise<number> {
  const machine = schedulerMachine.provide({ actors: { beginStep: fromPromise(async () => 0), abortStep: fromPromise(async () => {}) } });
  const actor = createActor(machine, { input: { stages: 2 } });
  actor.start();
  const t0 = performance.now();
  for (let step = 1; step <= STEPS; step++) {
    const req: StepRequest = { step, microbatches: M, forwardOnly: false, update: true, feedBound: M, releasedBy: 'B', timeoutMs: 60_000, grantInPlan: false };
    actor.send({ type: 'START', req });
    await waitFor(actor, (s) => !s.matches({ active: 'starting' }));
    for (let mb = 0; mb < M; mb++) {
      actor.send({ type: 'ACTION', rank: 0, step, action: `B${mb}` });
      actor.send({ type: 'LOSS', step, microbatch: mb, loss: 1, metric: null });
    }
    for (const rank of [1, 0]) actor.send({ type: 'DONE', rank, step, peakHeld: 2 });
    for (const rank of [0, 1]) actor.send({ type: 'UPDATED', rank, step });
    await waitFor(actor, (s) => s.matches('idle'));
  }
  const us = ((performance.now() - t0) * 1000) / STEPS;
  actor.stop();
  return us;
}

const stage: number[] = [];
const sched: number[] = [];
for (let r = 0; r < ROUNDS; r++) {
  stage.push(await stageSteps());
  sched.push(await schedulerSteps());
}
process.stdout.write(`${JSON.stringify({ stageUsPerStep: +Math.min(...stage).toFixed(1), schedulerUsPerStep: +Math.min(...sched).toFixed(1) })}\n`);
