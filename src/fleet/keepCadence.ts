/**
 * How often `troupe up --restarts` keeps the stages' state: rarely enough that keeping costs
 * little of the run's bytes and time, often enough that a recovery replays few steps.
 */
import type { CutTensor, StagePartition } from '../compute/partition.js';

/** Keeping moves at most this share of the bytes the steps move between stages. */
const BYTES_SHARE = 0.25;
/** Keeping takes at most this share of the time the steps between keeps take. */
const TIME_SHARE = 0.04;
/** A recovery replays at most this many steps. */
const MOST = 100;

/** Bytes of the tensors crossing into a stage, per example (float32 and int32: 4 bytes an element). */
const bytesPerRow = (ts: readonly CutTensor[]) => ts.reduce((n, t) => n + t.shape.reduce((a, b) => a * b, 1) * 4, 0);

const clamp = (k: number) => Math.max(1, Math.min(MOST, Math.ceil(k)));

/**
 * The cadence before anything is measured: keeping `stateBytes` every k steps moves at most a
 * quarter of what k steps move (activations forward and gradients back across every cut,
 * inputs and labels in), and a recovery replays at most 100 steps.
 */
export function keepCadence(partitions: readonly StagePartition[], batchSize: number, stateBytes: number): number {
  const cuts = partitions.slice(0, -1).reduce((n, s) => n + 2 * bytesPerRow(s.outputs), 0);
  const step = batchSize * (cuts + bytesPerRow(partitions[0]!.inputs) + bytesPerRow(partitions[partitions.length - 1]!.outputs));
  return clamp(stateBytes / (BYTES_SHARE * Math.max(step, 1)));
}

/**
 * The cadence after a keep that took `keepMs`, the recent steps having taken `stepMs` each:
 * never more often than the bytes allow (`byBytes`), and rarely enough that keeping takes at
 * most 4 % of the time of the steps between keeps.
 */
export function keepCadenceByTime(byBytes: number, keepMs: number, stepMs: readonly number[]): number {
  const s = [...stepMs].sort((a, b) => a - b);
  const median = s.length ? s[Math.floor(s.length / 2)]! : 0;
  return clamp(Math.max(byBytes, median > 0 ? keepMs / (TIME_SHARE * median) : 1));
}
