/** What the inspector knows about a job: its actors, the timeline of recent steps, counters, errors. */
import { refusalFailsStep, type ActionEvent, type ErrorEvent, type RejectEvent, type StatsMessage } from '../protocol/messages.js';
import type { Presence, StepShape } from './rollCall.js';
import type { StatelyActorEvent, StatelyEvent } from './statelyEvents.js';

/** One actor as the page draws it. */
export interface ActorView {
  readonly sessionId: string;
  readonly name: string;
  /** The job, or the replica's scope (`<job>.r<i>`) the actor belongs to. */
  readonly scope: string;
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
  /** (p - 1) / (m + p - 1), the fill-drain and 1F1B bubble, of the step's real p and m when known. */
  readonly theoreticalBubble: number;
}

/**
 * Measured and theoretical bubble of one step's actions. `shape` is the step's real stage and
 * microbatch counts (from the scheduler); without it they are counted from the actions, which
 * undercounts a step still running.
 */
export function stepView(step: number, actions: readonly ActionEvent[], shape?: Pick<StepShape, 'stages' | 'microbatches'>): StepView {
  const start = Math.min(...actions.map((a) => a.t0));
  const end = Math.max(...actions.map((a) => a.t0 + a.ms));
  const stages = shape?.stages ?? new Set(actions.map((a) => a.rank)).size;
  const microbatches = shape?.microbatches ?? new Set(actions.filter((a) => a.action.startsWith('F')).map((a) => a.action.slice(1))).size;
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
  | { readonly kind: 'stats'; readonly stats: StatsMessage & { readonly scope: string } }
  | { readonly kind: 'error'; readonly error: ErrorEvent; readonly count: number }
  | { readonly kind: 'reject'; readonly reject: RejectEvent; readonly count: number };

/** Counts of one scope: the total its scheduler said it kept when last asked, and those seen since. */
interface Counted {
  kept: number;
  live: number;
}

/**
 * Keeps the state of one job from its NATS messages and says what changed. Actors of a
 * replica's scope (`<job>.r<i>`) are kept apart; the timeline is the first replica's.
 */
export class InspectorModel {
  /** Root actors (children come and go within a step) by session id. */
  readonly actors = new Map<string, ActorView>();
  /** Children's session ids: their events are known, not drawn. */
  private readonly children = new Set<string>();
  readonly steps = new Map<number, ActionEvent[]>();
  readonly stats = new Map<string, StatsMessage & { readonly scope: string }>();
  /** Step shapes the scheduler announced, by the step they begin at. */
  private readonly shapes = new Map<number, StepShape>();
  firstError: ErrorEvent | null = null;
  /** Whether `firstError` is the one a scheduler kept (the job's first) rather than the first seen here. */
  private firstKept = false;
  private readonly errorCounts = new Map<string, Counted>();
  rejects: RejectEvent[] = [];
  private readonly rejectCounts = new Map<string, Counted>();
  /** Set when an event of an actor not announced yet came: the server then asks who is there. */
  unknownSeen = false;

  constructor(
    private readonly job: string,
    private readonly keepSteps = 3,
  ) {}

  get errors(): number {
    return total(this.errorCounts);
  }

  get rejected(): number {
    return total(this.rejectCounts);
  }

  /** The scope whose timeline is drawn: the job, or its first replica. */
  private primary(scope: string): boolean {
    return scope === this.job || scope === `${this.job}.r0`;
  }

  private announce(ev: StatelyActorEvent, scope: string): ModelUpdate | null {
    if (ev.parentId !== undefined) {
      this.children.add(ev.sessionId);
      return null;
    }
    let definition: unknown;
    try {
      definition = JSON.parse(ev.definition);
    } catch {
      definition = { id: ev.name };
    }
    const a: ActorView = {
      sessionId: ev.sessionId,
      name: ev.name,
      scope,
      definition,
      value: ev.snapshot.value,
      status: ev.snapshot.status,
      context: ev.snapshot.context,
      lastEvent: '',
      updates: 0,
    };
    this.actors.set(ev.sessionId, a);
    return { kind: 'actor', actor: a };
  }

  applyInspection(ev: StatelyEvent, scope: string): ModelUpdate | null {
    if (ev.type === '@xstate.actor') return this.announce(ev, scope);
    if (this.children.has(ev.sessionId)) {
      if (ev.type === '@xstate.snapshot' && ev.snapshot.status !== 'active') this.children.delete(ev.sessionId);
      return null;
    }
    const a = this.actors.get(ev.sessionId);
    if (!a) {
      this.unknownSeen = true;
      return null;
    }
    if (ev.type === '@xstate.event') {
      a.lastEvent = String((ev.event as { type?: string })?.type ?? '?');
      return null; // the snapshot that follows carries the change
    }
    a.value = ev.snapshot.value;
    a.status = ev.snapshot.status;
    a.context = ev.snapshot.context;
    a.updates++;
    return { kind: 'actor', actor: a };
  }

  /** A host's answer to `who`: its actors as they are now, and what its scheduler kept. */
  applyPresence(p: Presence): ModelUpdate[] {
    const out: ModelUpdate[] = [];
    for (const ev of p.actors) {
      const u = this.announce(ev, p.scope);
      if (u) out.push(u);
    }
    if (p.shape && this.primary(p.scope)) {
      this.shapes.set(p.shape.step, p.shape);
      const list = this.steps.get(p.shape.step);
      if (list) out.push({ kind: 'step', step: this.view(p.shape.step, list) });
    }
    if (p.errors) {
      keep(this.errorCounts, p.scope, p.errors.count);
      if (p.errors.first && !this.firstKept) {
        this.firstError = p.errors.first;
        this.firstKept = true;
      }
      if (this.firstError) out.push({ kind: 'error', error: this.firstError, count: this.errors });
    }
    if (p.rejects) {
      keep(this.rejectCounts, p.scope, p.rejects.count);
      const known = new Set(this.rejects.map((r) => JSON.stringify(r)));
      this.rejects = [...p.rejects.latest.filter((r) => !known.has(JSON.stringify(r))), ...this.rejects].slice(-20);
      const latest = this.rejects.at(-1);
      if (latest) out.push({ kind: 'reject', reject: latest, count: this.rejected });
    }
    return out;
  }

  /** The shape of step `step`: the latest the scheduler announced at or before it. */
  private shapeOf(step: number): StepShape | undefined {
    let best: StepShape | undefined;
    for (const s of this.shapes.values()) if (s.step <= step && (!best || s.step > best.step)) best = s;
    return best;
  }

  private view(step: number, list: readonly ActionEvent[]): StepView {
    return stepView(step, list, this.shapeOf(step));
  }

  applyAction(e: ActionEvent, scope: string): ModelUpdate | null {
    if (!this.primary(scope)) return null;
    let list = this.steps.get(e.step);
    if (!list) {
      list = [];
      this.steps.set(e.step, list);
      const old = [...this.steps.keys()].sort((x, y) => y - x).slice(this.keepSteps);
      for (const s of old) this.steps.delete(s);
    }
    list.push(e);
    return { kind: 'step', step: this.view(e.step, list) };
  }

  applyStats(s: StatsMessage, scope: string): ModelUpdate {
    const stats = { ...s, scope };
    this.stats.set(`${scope}/${s.rank}`, stats);
    return { kind: 'stats', stats };
  }

  applyError(e: ErrorEvent, scope: string): ModelUpdate {
    this.firstError ??= e;
    count(this.errorCounts, scope).live++;
    return { kind: 'error', error: this.firstError, count: this.errors };
  }

  applyReject(r: RejectEvent, scope: string): ModelUpdate {
    this.rejects = [...this.rejects.slice(-19), r];
    count(this.rejectCounts, scope).live++;
    return { kind: 'reject', reject: r, count: this.rejected };
  }

  /** The error a refusal is when it fails its step (a refused INPUT, see refusalFailsStep), else null. */
  static stepFailureOf(r: RejectEvent): ErrorEvent | null {
    if (!refusalFailsStep(r)) return null;
    return { rank: r.rank, step: r.step!, key: r.subject.replace(/^frame /, ''), code: r.code, message: `refused INPUT frame: ${r.message}` };
  }

  /** Everything, as the updates a page that just opened needs. */
  replay(): ModelUpdate[] {
    const latestReject = this.rejects.at(-1);
    return [
      ...[...this.actors.values()].map((actor): ModelUpdate => ({ kind: 'actor', actor })),
      ...[...this.steps.entries()].sort((a, b) => a[0] - b[0]).map(([s, l]): ModelUpdate => ({ kind: 'step', step: this.view(s, l) })),
      ...[...this.stats.values()].map((stats): ModelUpdate => ({ kind: 'stats', stats })),
      ...(this.firstError ? [{ kind: 'error', error: this.firstError, count: this.errors } as ModelUpdate] : []),
      ...(latestReject ? [{ kind: 'reject', reject: latestReject, count: this.rejected } as ModelUpdate] : []),
    ];
  }
}

function count(m: Map<string, Counted>, scope: string): Counted {
  let c = m.get(scope);
  if (!c) m.set(scope, (c = { kept: 0, live: 0 }));
  return c;
}

/** A scheduler's count includes what was seen here before it answered: counting starts again from it. */
function keep(m: Map<string, Counted>, scope: string, kept: number): void {
  const c = count(m, scope);
  c.kept = kept;
  c.live = 0;
}

function total(m: Map<string, Counted>): number {
  let n = 0;
  for (const c of m.values()) n += c.kept + c.live;
  return n;
}
