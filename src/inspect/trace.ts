/** Chrome trace event export of the pipeline timeline: one complete event per stage action. */
import { writeAtomically } from '../writeAtomically.js';
import { decodeMessage, type ActionEvent } from '../protocol/messages.js';
import { SchedEvent, parseSchedSubject, schedWildcard } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';

/** One event of the trace event format (the subset Troupe writes). */
export interface TraceEvent {
  readonly name: string;
  readonly ph: 'X' | 'M' | 's' | 'f';
  readonly id?: number;
  readonly bp?: 'e';
  readonly pid: number;
  readonly tid: number;
  readonly ts?: number;
  readonly dur?: number;
  readonly cat?: string;
  readonly args?: Record<string, unknown>;
}

const CATEGORY: Record<string, string> = { F: 'forward', B: 'backward', W: 'weight' };

/**
 * Flow arrows (Perfetto draws them): activations from F on stage r to F on stage r+1, and
 * gradients from B on stage r+1 to B on stage r, for each step and microbatch.
 */
function flows(actions: readonly ActionEvent[], us: (t: number) => number): TraceEvent[] {
  const at = new Map(actions.map((a) => [`${a.step}/${a.rank}/${a.action}`, a]));
  const out: TraceEvent[] = [];
  let id = 0;
  for (const a of actions) {
    const kind = a.action[0];
    const next = kind === 'F' ? a.rank + 1 : a.rank - 1;
    const to = at.get(`${a.step}/${next}/${a.action}`);
    if (!to || (kind !== 'F' && kind !== 'B')) continue;
    id++;
    const name = kind === 'F' ? 'activation' : 'gradient';
    out.push({ name, cat: 'flow', ph: 's', id, pid: 0, tid: a.rank, ts: us(a.t0 + a.ms) });
    out.push({ name, cat: 'flow', ph: 'f', bp: 'e', id, pid: 0, tid: to.rank, ts: Math.max(us(a.t0 + a.ms), us(to.t0)) });
  }
  return out;
}

/** Converts action events into trace events: `ts`/`dur` in microseconds from the first action, one thread per stage. */
export function toTraceEvents(job: string, actions: readonly ActionEvent[]): TraceEvent[] {
  const origin = Math.min(...actions.map((a) => a.t0));
  const us = (t: number) => Math.round((t - origin) * 1000);
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
      ts: us(a.t0),
      dur: Math.max(1, Math.round(a.ms * 1000)),
      args: { step: a.step, microbatch: Number(a.action.slice(1)), stage: a.rank },
    })),
    ...flows(actions, us),
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
    rec.sub = bus.subscribe(schedWildcard(job, SchedEvent.ACTION), (m) => {
      try {
        const from = parseSchedSubject(m.subject);
        // The rank is the subject's, which only that stage may publish on.
        if (from) rec.actions.push({ ...decodeMessage('action', m.data), rank: from.rank });
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
    const doc = {
      traceEvents: this.actions.length ? toTraceEvents(this.job, this.actions) : [],
      displayTimeUnit: 'ms',
      otherData: { job: this.job, actions: this.actions.length },
    };
    await writeAtomically(file, JSON.stringify(doc));
  }

  async close(): Promise<void> {
    await this.sub?.drain();
  }
}
