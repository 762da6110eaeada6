/** One fleet run (bench/fleetRun.ts in a fresh process) with its trace: step times, stage counters and every action. */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import type { StatsMessage } from '../src/protocol/messages.js';

const run = promisify(execFile);

/** One action as the trace has it: `ts`/`dur` in µs from the first action, `tid` the stage. */
export interface TracedAction {
  readonly ph: string;
  readonly name: string;
  readonly tid: number;
  readonly ts: number;
  readonly dur: number;
  readonly args?: { step?: number };
}

export interface TracedRun {
  readonly stepMs: number[];
  readonly stats: StatsMessage[];
  /** The complete events (`ph` X) of actions, in no particular order. */
  readonly actions: TracedAction[];
}

/** Runs the bench job shaped by `env` (BENCH_* variables) with a trace, in a child process. */
export async function tracedRun(env: Record<string, string>): Promise<TracedRun> {
  const dir = mkdtempSync(join(tmpdir(), 'troupe-trace-'));
  const trace = join(dir, 'trace.json');
  try {
    const { stdout } = await run(process.execPath, ['--import', 'tsx', new URL('./fleetRun.ts', import.meta.url).pathname], {
      env: { ...process.env, ...env, BENCH_TRACE: trace, TROUPE_BACKEND: 'wasm' },
      maxBuffer: 1 << 24,
    });
    const result = JSON.parse(stdout.trim().split('\n').pop()!) as { stepMs: number[]; stats: StatsMessage[] };
    const events = (JSON.parse(readFileSync(trace, 'utf8')) as { traceEvents: TracedAction[] }).traceEvents;
    return { ...result, actions: events.filter((e) => e.ph === 'X' && typeof e.args?.step === 'number') };
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}
