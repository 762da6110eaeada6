/**
 * "Who is there": an inspector that joins late publishes on `troupe.<job>.who`, and every
 * actor host of the job (every replica's) answers on `troupe.<scope>.present.<actor>` with its
 * actors' announcements carrying their latest snapshots and, the scheduler, the step's shape
 * and the errors and refusals it kept, so the inspector shows at once what it missed.
 */
import { FrameError, messageOf } from '../errors.js';
import { encodeJson, type ErrorEvent, type RejectEvent } from '../protocol/messages.js';
import { presentSubject, whoSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import type { StatelyActorEvent } from './statelyEvents.js';

/** Errors kept for late viewers: how many, the first, the latest few. */
interface KeptErrors {
  readonly count: number;
  readonly first: ErrorEvent | null;
  readonly latest: readonly ErrorEvent[];
}

/** Refused frames kept for late viewers: how many, the latest few. */
interface KeptRejects {
  readonly count: number;
  readonly latest: readonly RejectEvent[];
}

/** The running (or last) step's shape: its stages and microbatches. */
export interface StepShape {
  readonly step: number;
  readonly stages: number;
  readonly microbatches: number;
}

/** One host's answer to `who`. */
export interface Presence {
  /** The job, or the replica's scope (`<job>.r<i>`). */
  readonly scope: string;
  readonly actor: string;
  /** Each live actor's `@xstate.actor` frame, with its latest snapshot. */
  readonly actors: readonly StatelyActorEvent[];
  readonly shape?: StepShape;
  readonly errors?: KeptErrors;
  readonly rejects?: KeptRejects;
}

const dec = new TextDecoder();

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

/** Parses a presence message, with a FrameError naming what is wrong. */
export function decodePresence(data: Uint8Array): Presence {
  let v: unknown;
  try {
    v = JSON.parse(dec.decode(data));
  } catch (cause) {
    throw new FrameError(`presence: body is not JSON: ${messageOf(cause)}`, { cause });
  }
  if (!isObject(v)) throw new FrameError('presence: not a JSON object');
  if (typeof v['scope'] !== 'string' || typeof v['actor'] !== 'string') throw new FrameError('presence: "scope" and "actor" must be strings');
  const actors = v['actors'];
  if (
    !Array.isArray(actors) ||
    !actors.every(
      (a) =>
        isObject(a) && a['type'] === '@xstate.actor' && typeof a['sessionId'] === 'string' && typeof a['definition'] === 'string' && isObject(a['snapshot']),
    )
  ) {
    throw new FrameError('presence: "actors" must be a list of @xstate.actor events');
  }
  const shape = v['shape'];
  if (shape !== undefined && !(isObject(shape) && ['step', 'stages', 'microbatches'].every((k) => Number.isInteger(shape[k]))))
    throw new FrameError('presence: "shape" must hold integer step, stages and microbatches');
  for (const k of ['errors', 'rejects'] as const) {
    const kept = v[k];
    if (kept !== undefined && !(isObject(kept) && Number.isInteger(kept['count']) && Array.isArray(kept['latest'])))
      throw new FrameError(`presence: "${k}" must hold a count and the latest`);
  }
  return v as unknown as Presence;
}

/** Shortest time between two answers: requests closer together share one (a flood of `who` stays cheap). */
const ANSWER_EVERY_MS = 200;

/** Options of a RollCall. */
export interface RollCallOptions {
  readonly bus: Bus;
  readonly scope: string;
  readonly actor: string;
  /** What this host says: read when asked. */
  readonly answer: () => Omit<Presence, 'scope' | 'actor'>;
}

/**
 * Answers `who` for one actor host.
 *
 * @example
 * const roll = await RollCall.start({ bus, scope: 'mnist', actor: 'stage-0', answer: () => ({ actors: insp.present() }) });
 * ...
 * await roll.close();
 */
export class RollCall {
  private readonly sub: { drain(): Promise<void> };
  private last = -Infinity;
  private timer: NodeJS.Timeout | undefined;
  private closed = false;

  private constructor(private readonly o: RollCallOptions) {
    this.sub = o.bus.subscribe(whoSubject(o.scope), () => this.asked());
  }

  /** Answers now, or once ANSWER_EVERY_MS has passed since the last answer. */
  private asked(): void {
    const wait = this.last + ANSWER_EVERY_MS - performance.now();
    if (wait <= 0) return this.announce();
    this.timer ??= setTimeout(() => {
      this.timer = undefined;
      this.announce();
    }, wait);
  }

  /** Subscribes; resolves once the server has the subscription. */
  static async start(o: RollCallOptions): Promise<RollCall> {
    const r = new RollCall(o);
    await o.bus.flush();
    return r;
  }

  /** Publishes this host's presence now (as when asked). */
  announce(): void {
    if (this.closed) return;
    this.last = performance.now();
    const p: Presence = { scope: this.o.scope, actor: this.o.actor, ...this.o.answer() };
    this.o.bus.publish(presentSubject(this.o.scope, this.o.actor), encodeJson(p)).catch(() => {
      // A closed connection: nobody to tell.
    });
  }

  async close(): Promise<void> {
    this.closed = true;
    clearTimeout(this.timer);
    await this.sub.drain();
  }
}
