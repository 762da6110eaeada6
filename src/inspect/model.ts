/** What the inspector knows about a job: its actors, the timeline of recent steps, counters, errors. */
import { refusalFailsStep, type ActionEvent, type ErrorEvent, type RejectEvent, type StatsMessage } from '../protocol/messages.js';
import type { StatelyEvent } from './statelyEvents.js';

/** One actor as the page draws it. */
export interface ActorView {
  readonly sessionId: string;
  readonly name: string;
  /** The machine definition (parsed JSON of its config). */
  readonly definition: unknown;
  value: unknown;
  status: string;
  context: unknown;
  lastEvent: string;
  updates: number;
}

/** One step's timeline. */
export interface StepView {
  readonly step: number;
  readonly stages: number;
  readonly microbatches: number;
  /** Actions with `start` in ms from the step's first action. */
  readonly actions: readonly { readonly rank: number; readonly action: string; readonly start: number; readonly ms: number }[];
  readonly span: number;
  /** Idle share of stage time over the step's span: 1 - busy / (stages x span). */
  readonly measuredBubble: number;
  /** (p - 1) / (m + p - 1), the fill-drain and 1F1B bubble. */
  readonly theoreticalBubble: number;
}

/** Measured and theoretical bubble of one step's actions. */
export function stepView(step: number, actions: readonly ActionEvent[]): StepView {
  const start = Math.min(...actions.map((a) => a.t0));
  const end = Math.max(...actions.map((a) => a.t0 + a.ms));
  const stages = new Set(actions.map((a) => a.rank)).size;
  const microbatches = new Set(actions.filter((a) => a.action.startsWith('F')).map((a) => a.action.slice(1))).size;
  const span = Math.max(end - start, 1e-9);
  const busy = actions.reduce((n, a) => n + a.ms, 0);
  return {
    step,
    stages,
    microbatches,
    actions: actions.map((a) => ({ rank: a.rank, action: a.action, start: a.t0 - start, ms: a.ms })),
    span,
    measuredBubble: Math.max(0, 1 - busy / (stages * span)),
    theoreticalBubble: (stages - 1) / (microbatches + stages - 1),
  };
}

/** A change the page applies. */
export type ModelUpdate =
  | { readonly kind: 'actor'; readonly actor: ActorView }
  | { readonly kind: 'step'; readonly step: StepView }
  | { readonly kind: 'stats'; readonly stats: StatsMessage }
  | { readonly kind: 'error'; readonly error: ErrorEvent; readonly count: number }
  | { readonly kind: 'reject'; readonly reject: RejectEvent; readonly count: number };

/** Keeps the state of one job from its NATS messages and says what changed. */
export class InspectorModel {
  readonly actors = new Map<string, ActorView>();
  readonly steps = new Map<number, ActionEvent[]>();
  readonly stats = new Map<number, StatsMessage>();
  firstError: ErrorEvent | null = null;
  errors = 0;
  rejects: RejectEvent[] = [];
  rejected = 0;

  constructor(private readonly keepSteps = 3) {}

  applyInspection(ev: StatelyEvent): ModelUpdate | null {
    if (ev.type === '@xstate.actor') {
      let definition: unknown = null;
      try {
        definition = JSON.parse(ev.definition);
      } catch {
        definition = { id: ev.name };
      }
      const a: ActorView = { sessionId: ev.sessionId, name: ev.name, definition, value: ev.snapshot.value, status: ev.snapshot.status, context: ev.snapshot.context, lastEvent: '', updates: 0 };
      this.actors.set(ev.sessionId, a);
      return { kind: 'actor', actor: a };
    }
    const a = this.actors.get(ev.sessionId);
    if (!a) return null;
    if (ev.type === '@xstate.event') {
      a.lastEvent = String((ev.event as { type?: unknown })?.type ?? '?');
      return null; // the snapshot that follows carries the change
    }
    a.value = ev.snapshot.value;
    a.status = ev.snapshot.status;
    a.context = ev.snapshot.context;
    a.updates++;
    return { kind: 'actor', actor: a };
  }

  applyAction(e: ActionEvent): ModelUpdate {
    let list = this.steps.get(e.step);
    if (!list) {
      list = [];
      this.steps.set(e.step, list);
      const old = [...this.steps.keys()].sort((x, y) => y - x).slice(this.keepSteps);
      for (const s of old) this.steps.delete(s);
    }
    list.push(e);
    return { kind: 'step', step: stepView(e.step, list) };
  }

  applyStats(s: StatsMessage): ModelUpdate {
    this.stats.set(s.rank, s);
    return { kind: 'stats', stats: s };
  }

  applyError(e: ErrorEvent): ModelUpdate {
    this.firstError ??= e;
    this.errors++;
    return { kind: 'error', error: this.firstError, count: this.errors };
  }

  applyReject(r: RejectEvent): ModelUpdate {
    this.rejects = [...this.rejects.slice(-19), r];
    this.rejected++;
    return { kind: 'reject', reject: r, count: this.rejected };
  }

  /** The error a refusal is when it fails its step (a refused INPUT, see refusalFailsStep), else null. */
  static stepFailureOf(r: RejectEvent): ErrorEvent | null {
    if (!refusalFailsStep(r)) return null;
    return { rank: r.rank, step: r.step!, key: r.subject.replace(/^frame /, ''), code: r.code, message: `refused INPUT frame: ${r.message}` };
  }

  /** Everything, as the updates a page that just opened needs. */
  replay(): ModelUpdate[] {
    return [
      ...[...this.actors.values()].map((actor): ModelUpdate => ({ kind: 'actor', actor })),
      ...[...this.steps.entries()].sort((a, b) => a[0] - b[0]).map(([s, l]): ModelUpdate => ({ kind: 'step', step: stepView(s, l) })),
      ...[...this.stats.values()].map((stats): ModelUpdate => ({ kind: 'stats', stats })),
      ...(this.firstError ? [{ kind: 'error', error: this.firstError, count: this.errors } as ModelUpdate] : []),
    ];
  }
}
