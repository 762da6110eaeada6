/** One step over data-parallel replicas: the batch split by rows, the results merged, a failure on one failing all. */
import { ConfigError, ShapeError, StateError, messageOf } from '../errors.js';
import type { WireTensor } from '../protocol/frame.js';
import { concatRows } from '../protocol/rows.js';
import { releaseDevice, rowsOf } from '../compute/wire.js';
import { microbatchOffsets, microbatchSizes } from '../schedule/microbatch.js';
import type { StepExtra, StepResult, StepRunner } from './stepRunner.js';

/**
 * Runs one step (or evaluation) on every replica: replica i takes the i-th contiguous share
 * of the rows, every loss is averaged over the whole batch, and the results add up to the
 * whole batch's.
 *
 * The replicas' step ids must stay in lockstep (the all-reduce pairs gradients by step), so
 * every check that can refuse the call runs on every replica's share before any replica
 * starts: a refused call starts nothing. A step that fails on one replica is failed on all
 * (their stages may wait in the all-reduce for the failed one's gradients) and aborted on
 * every stage before the error is thrown, so the next call finds every stage idle.
 */
export async function runReplicas(
  runners: readonly StepRunner[],
  xw: readonly WireTensor[],
  yw: readonly WireTensor[],
  forwardOnly: boolean,
  extra: StepExtra = {},
  scale = 1,
  /** Called once the call is accepted, just before it starts: what it returns joins `extra` (a refused call calls nothing). */
  accepted?: () => StepExtra,
): Promise<StepResult> {
  const k = runners.length;
  if (k === 1) {
    runners[0]!.check(xw, yw, forwardOnly, extra);
    return runners[0]!.runWire(xw, yw, forwardOnly, xw[0]!.shape[0]! * scale, { ...extra, ...accepted?.() });
  }
  const m = runners[0]!.microbatches;
  const total = checkSplit(xw, yw, k, m);
  const sizes = microbatchSizes(total, k);
  const offsets = microbatchOffsets(sizes);
  const share = (ws: readonly WireTensor[], i: number) => ws.map((w) => rowsOf(w, offsets[i]!, sizes[i]!));
  if (extra.predict && xw[0]!.dtype !== 'float32') throw new ConfigError('predict with replicas merges float32 outputs only');
  // Each replica's rows, made once: views of bytes, or (device wires) tensors of their own, freed below.
  const shares = runners.map((_, i) => ({ x: share(xw, i), y: share(yw, i) }));
  try {
    shares.forEach((sh, i) => runners[i]!.check(sh.x, sh.y, forwardOnly, extra));
    const step = runners[0]!.step + 1;
    if (runners.some((r) => r.step + 1 !== step))
      throw new StateError(`the replicas' steps disagree (${runners.map((r) => r.step).join(', ')}): the pipeline cannot go on`);
    const accepts = { ...extra, ...accepted?.() };

    let failed: { replica: number; error: unknown } | null = null;
    const cancelling: Promise<void>[] = [];
    const runs = runners.map((r, i) =>
      r.runWire(shares[i]!.x, shares[i]!.y, forwardOnly, total * scale, accepts).catch((error: unknown) => {
        if (failed === null) {
          failed = { replica: i, error };
          const why = `replica ${i} failed step ${step}: ${messageOf(error)}`;
          runners.forEach((o, j) => j !== i && cancelling.push(o.scheduler.cancel(step, 'REPLICA_FAILED', why)));
        }
        throw error;
      }),
    );
    const settled = await Promise.allSettled(runs);
    if (failed !== null) {
      await Promise.all(cancelling);
      // A stage left failed (an update that failed on its own) or still in the step goes idle.
      await Promise.all(runners.map((r) => r.scheduler.abortStages(step)));
      throw (failed as { error: unknown }).error;
    }
    return merge(settled.map((s) => (s as PromiseFulfilledResult<StepResult>).value));
  } finally {
    for (const sh of shares) releaseDevice([...sh.x, ...sh.y]);
  }
}

/** The replicas' results as the whole batch's. */
function merge(results: readonly StepResult[]): StepResult {
  const outputs = results[0]!.outputs ? concatRows(results.map((r) => r.outputs!)) : undefined;
  return {
    ...(outputs ? { outputs } : {}),
    step: results[0]!.step,
    loss: results.reduce((n, r) => n + r.loss, 0),
    metric: results[0]!.metric === null ? null : results.reduce((n, r) => n + r.metric!, 0),
    microbatchLosses: results.flatMap((r) => r.microbatchLosses),
    peakHeld: results[0]!.peakHeld.map((_, rank) => Math.max(...results.map((r) => r.peakHeld[rank]!))),
    rejected: results.reduce((n, r) => n + r.rejected, 0),
    begunEarly: results.every((r) => r.begunEarly),
  };
}

/** The batch's rows, after checking that they split over `k` replicas of `m` microbatches each; the error names what the caller passed. */
function checkSplit(xw: readonly WireTensor[], yw: readonly WireTensor[], k: number, m: number): number {
  const first = xw[0];
  if (!first || first.shape.length === 0) throw new ConfigError('x must hold at least one tensor with a batch dimension');
  const total = first.shape[0]!;
  for (const t of [...xw, ...yw]) {
    if (t.shape.length === 0 || t.shape[0] !== total)
      throw new ShapeError(`${t.name}: every input and label needs the same batch dimension ${total}, got [${t.shape.join(',')}]`);
  }
  // Shares differ by at most a row: the smallest has floor(total / k) rows, and needs m.
  if (total < k * m)
    throw new ConfigError(
      `a batch of ${total} rows cannot be split over ${k} replicas x ${m} microbatches: ` +
        `it needs at least ${k * m} rows (the smallest replica's share would be ${Math.floor(total / k)})`,
    );
  return total;
}
