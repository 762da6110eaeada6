/**
 * Where a microbatch's time outside compute goes, from a fleet run's trace: per stage, the
 * median gap between one action's end and the next action's start, by the pair of action
 * kinds (F->B, B->F, ...), and between the last action of a step and the first of the next.
 * The reference MLP at m = 16, 1 stage and 2 stages (1F1B), one worker process per stage.
 */
import { selectBackend } from '../src/compute/backend.js';
import { BATCH } from './jobs/bench.job.js';
import { machineLine, median, table } from './report.js';
import { tracedRun, type TracedAction } from './tracedRun.js';

const STEPS = Number(process.env['BENCH_STEPS'] ?? 12);
const M = 16;
/** Steps before this one warm up (JIT, first packing of weights) and are left out. */
const FIRST = 3;

interface Gaps {
  /** Median ms by transition: `F->B`, `B->F`, `between steps`, ... */
  readonly median: Record<string, number>;
  /** Every gap of the steady steps, in ms, over steps x m: the stage's time between actions per microbatch. */
  readonly perMicrobatch: number;
}

function gapsOf(actions: readonly TracedAction[], rank: number): Gaps {
  const mine = actions.filter((a) => a.tid === rank && a.args!.step! >= FIRST - 1).sort((a, b) => a.ts - b.ts);
  const by: Record<string, number[]> = {};
  let total = 0;
  for (let i = 1; i < mine.length; i++) {
    const prev = mine[i - 1]!;
    const cur = mine[i]!;
    if (cur.args!.step! < FIRST) continue;
    const gap = (cur.ts - (prev.ts + prev.dur)) / 1000;
    const kind = cur.args!.step !== prev.args!.step ? 'between steps' : `${prev.name[0]}->${cur.name[0]}`;
    (by[kind] ??= []).push(gap);
    total += gap;
  }
  const steps = STEPS - FIRST + 1;
  return { median: Object.fromEntries(Object.entries(by).map(([k, v]) => [k, median(v)])), perMicrobatch: total / (steps * M) };
}

export async function benchGaps(): Promise<string> {
  await selectBackend({ prefer: 'wasm', log: null });
  const kinds = ['F->B', 'B->F', 'F->F', 'B->B', 'between steps'];
  const rows: string[][] = [];
  for (const stages of [1, 2]) {
    const r = await tracedRun({
      BENCH_MODEL: 'mlp',
      BENCH_STAGES: String(stages),
      BENCH_M: String(M),
      BENCH_SCHEDULE: '1f1b',
      BENCH_BATCH: String(BATCH),
      BENCH_STEPS: String(STEPS),
    });
    for (let rank = 0; rank < stages; rank++) {
      const g = gapsOf(r.actions, rank);
      rows.push([String(stages), String(rank), ...kinds.map((k) => (g.median[k] === undefined ? '-' : g.median[k].toFixed(2))), g.perMicrobatch.toFixed(2)]);
    }
  }
  return [
    `### Gaps between a stage's actions (MLP 784-1024-1024-10, batch ${BATCH}, m = ${M}, 1F1B, steps ${FIRST}..${STEPS} of a traced fleet run)`,
    '',
    `Median ms from one action's end to the next one's start on the same stage, by the two actions' kinds, ` +
      `and from a step's last action to the next step's first (which includes the stage's update). ` +
      'The last column adds every gap and divides by steps x m. ' +
      `A gap before a forward or backward that waits for another stage's frame includes that stage's compute: on stage 0 of 2, ` +
      `F->B waits for stage 1. ${machineLine()}`,
    '',
    table(['stages', 'stage', ...kinds.map((k) => `${k} (ms)`), 'all gaps per microbatch (ms)'], rows),
  ].join('\n');
}

if (import.meta.url === `file://${process.argv[1]}`) console.log(await benchGaps());
