/** One step over data-parallel replicas: the batch split by rows, the results merged. */
import { ConfigError } from '../errors.js';
import type { WireTensor } from '../protocol/frame.js';
import { concatRows } from '../protocol/rows.js';
import { releaseDevice, rowsOf } from '../compute/wire.js';
import { microbatchOffsets, microbatchSizes } from '../schedule/microbatch.js';
import type { StepExtra, StepResult, StepRunner } from './stepRunner.js';

/**
 * Runs one step (or evaluation) on every replica: replica i takes the i-th contiguous share
 * of the rows, every loss is averaged over the whole batch, and the results add up to the
 * whole batch's.
 */
export async function runReplicas(runners: readonly StepRunner[], xw: readonly WireTensor[], yw: readonly WireTensor[], forwardOnly: boolean, extra: StepExtra = {}, scale = 1): Promise<StepResult> {
  const k = runners.length;
  if (k === 1) return runners[0]!.runWire(xw, yw, forwardOnly, xw[0]!.shape[0]! * scale, extra);
  const total = xw[0]!.shape[0]!;
  if (total < k) throw new ConfigError(`a batch of ${total} cannot be split over ${k} replicas`);
  const sizes = microbatchSizes(total, k);
  const offsets = microbatchOffsets(sizes);
  const share = (ws: readonly WireTensor[], i: number) => ws.map((w) => rowsOf(w, offsets[i]!, sizes[i]!));
  if (extra.predict && xw[0]!.dtype !== 'float32') throw new ConfigError('predict with replicas merges float32 outputs only');
  const shares = runners.map((_, i) => ({ x: share(xw, i), y: share(yw, i) }));
  let results: StepResult[];
  try {
    results = await Promise.all(runners.map((r, i) => r.runWire(shares[i]!.x, shares[i]!.y, forwardOnly, total * scale, extra)));
  } finally {
    // Shares on a device are new tensors of their own; byte shares are views (nothing to free).
    for (const s of shares) releaseDevice([...s.x, ...s.y]);
  }
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
