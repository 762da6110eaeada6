/** One hand-made step for a scheduler host: what `createPipeline` would hand it, for tests that drive hosts directly. */
import type { WireTensor } from '../../src/protocol/frame.js';
import { Phase } from '../../src/protocol/phase.js';
import type { StepWork } from '../../src/runtime/schedulerHost.js';
import { formatStageActions } from '../../src/schedule/action.js';
import { oneFOneB } from '../../src/schedule/oneFOneB.js';

/** Rows [mb * half, (mb + 1) * half) of a 2-microbatch batch. */
function half(w: WireTensor, mb: number): WireTensor {
  const rows = w.shape[0]! / 2;
  const n = w.data.length / 2;
  return { ...w, shape: [rows, ...w.shape.slice(1)], data: w.data.subarray(mb * n, mb * n + n) };
}

/**
 * Step 1 of a 2-stage 1F1B pipeline in 2 microbatches that updates the weights: `x` goes to
 * rank 0 and the labels `y` to rank 1, each split in halves by rows.
 */
export function twoStageStep(job: string, x: WireTensor, y: WireTensor, timeoutMs: number): StepWork {
  const s = oneFOneB(2, 2);
  const batchSize = x.shape[0]!;
  const input = (rank: number, w: WireTensor, mb: number) => ({
    rank,
    frame: { key: { job, step: 1, microbatch: mb, phase: Phase.INPUT }, from: 'sched', tensors: [half(w, mb)] },
  });
  return {
    step: 1,
    microbatches: 2,
    forwardOnly: false,
    update: true,
    feedBound: 2,
    releasedBy: 'B',
    timeoutMs,
    grantInPlan: false,
    plan: (r) => ({
      step: 1,
      microbatches: 2,
      batchSize,
      totalBatch: batchSize,
      forwardOnly: false,
      predict: false,
      update: true,
      granted: false,
      actions: formatStageActions(s[r]!),
      order: '',
    }),
    inputs: (mb) => [input(0, x, mb), input(1, y, mb)],
  };
}
