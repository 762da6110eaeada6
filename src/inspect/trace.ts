/** Chrome trace event export of the pipeline timeline: one complete event per stage action. */
import { writeAtomically } from '../writeAtomically.js';
import { decodeMessage, type ActionEvent } from '../protocol/messages.js';
import { SchedEvent, schedSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';

/** One event of the trace event format (the subset Troupe writes). */
export interface TraceEvent {
  readonly name: string;
  readonly ph: 'X' | 'M';
  readonly pid: number;
  readonly tid: number;
  readonly ts?: number;
  readonly dur?: number;
  readonly cat?: string;
  readonly args?: Record<string, unknown>;
}

const CATEGORY: Record<string, string> = { F: 'forward', B: 'backward', W: 'weight' };

/** Converts action events into trace events: `ts`/`dur` in microseconds from the first action, one thread per stage. */
export function toTraceEvents(job: string, actions: readonly ActionEvent[]): TraceEvent[] {
  const origin = Math.min(...actions.map((a) => a.t0));
  const ranks = [...new Set(actions.map((a) => a.rank))].sort((a, b) => a - b);
  return [
    { name: 'process_name', ph: 'M', pid: 0, tid: 0, args: { name: `troupe job ${job}` } },
    ...ranks.map((r): TraceEvent => ({ name: 'thread_name', ph: 'M', pid: 0, tid: r, args: { name: `stage ${r}` } })),
    ...actions.map((a): TraceEvent => ({
      name: a.action,
      cat: CATEGORY[a.action[0]!] ?? 'action',
      ph: 'X',
      pid: 0,
      tid: a.rank,
      ts: Math.round((a.t0 - origin) * 1000),
      dur: Math.max(1, Math.round(a.ms * 1000)),
      args: { step: a.step, microbatch: Number(a.action.slice(1)), stage: a.rank },
    })),
  ];
}

/**
 * Records every action the stages of a job report, and writes them as a Chrome trace
 * (opens in Perfetto or chrome://tracing).
 *
 * @example
 * const rec = await TraceRecorder.start(bus, 'mnist');
 * ... steps ...
 * await rec.write('trace.json'); await rec.close();
 */
export class TraceRecorder {
  private readonly actions: ActionEvent[] = [];
  private sub: { drain(): Promise<void> } | undefined;
  private constructor(private readonly job: string) {}

  /** Subscribes to the job's action events; resolves once the server has the subscription. */
  static async start(bus: Bus, job: string): Promise<TraceRecorder> {
    const rec = new TraceRecorder(job);
    rec.sub = bus.subscribe(schedSubject(job, SchedEvent.ACTION), (m) => {
      try {
        rec.actions.push(decodeMessage('action', m.data));
      } catch {
        // malformed events are the scheduler's to count
      }
    });
    await bus.flush();
    return rec;
  }

  /** Actions recorded so far. */
  get count(): number {
    return this.actions.length;
  }

  /** Writes the trace (atomically) to `file`. */
  async write(file: string): Promise<void> {
    const doc = { traceEvents: this.actions.length ? toTraceEvents(this.job, this.actions) : [], displayTimeUnit: 'ms', otherData: { job: this.job, actions: this.actions.length } };
    await writeAtomically(file, JSON.stringify(doc));
  }

  async close(): Promise<void> {
    await this.sub?.drain();
  }
}
