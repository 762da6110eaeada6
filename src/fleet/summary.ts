/** The machine-readable summary of a run (`troupe up --json`): one JSON object on stdout. */
import type { Hello, StatsMessage } from '../protocol/messages.js';
import type { RunJobResult } from './runJob.js';

/** What `troupe up --json` prints. Times in seconds or milliseconds as named; metrics as fractions (0.93, not 93 %). */
export interface RunSummary {
  readonly job: string;
  /** Training steps this run took (after a resume: those after the checkpoint). */
  readonly steps: number;
  readonly seconds: number;
  /** Each step's loss and metric (null without a metric), in step order. */
  readonly losses: readonly number[];
  readonly metrics: readonly (number | null)[];
  /** Wall time of each step, in milliseconds. */
  readonly stepMs: readonly number[];
  /** The last step's loss and metric. */
  readonly last: { readonly loss: number; readonly metric: number | null } | null;
  /** The held-out evaluation, when the job's data has a test set. */
  readonly heldOut: { readonly loss: number; readonly metric: number | null } | null;
  /** Each stage's counters (busy and idle time, actions, bytes, peak in flight, refusals). */
  readonly stages: readonly StatsMessage[];
  readonly workers: readonly Hello[];
}

/** The summary of a finished run. */
export function summaryOf(r: RunJobResult): RunSummary {
  return {
    job: r.job,
    steps: r.steps,
    seconds: r.seconds,
    losses: r.losses,
    metrics: r.metrics,
    stepMs: r.stepMs,
    last: r.last ? { loss: r.last.loss, metric: r.last.metric } : null,
    heldOut: r.heldOut ? { loss: r.heldOut.loss, metric: r.heldOut.metric } : null,
    stages: r.stats,
    workers: r.workers,
  };
}
