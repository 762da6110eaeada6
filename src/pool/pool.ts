/**
 * The caller's side of a task pool (GluonCV's `Parallel`, Ray's tasks): `map(inputs)` runs
 * every input on the pool's workers and resolves with the outputs in input order; `put`/`get`
 * hand in one task and fetch its answer. At most `concurrency` tasks are out at once, `map`
 * and `put` together.
 *
 * Delivery: each task gets exactly one answer (its output, or a PoolTaskError). A worker takes
 * a task only into a free slot, acknowledges it as it starts and heartbeats while it runs, so
 * a task is sent again only when its worker dies, falls silent for `silentMs` or leaves
 * while running it (deaths and silences at most `retries` times): a task runs once, and more
 * than once only after such a loss. A task that runs past `timeoutMs` is stopped in its
 * worker and fails as timed out; it is not sent again.
 */
import { randomBytes } from 'node:crypto';
import { ConfigError, TroupeError } from '../errors.js';
import type { Bus } from '../transport/bus.js';
import { encodeJsonValue } from './jsonValue.js';
import { PoolTaskError, PoolValueError } from './poolErrors.js';
import {
  decodeCallerEvent,
  decodeOfferReply,
  encode,
  encodeWithValue,
  poolCallerSubject,
  poolCancelSubject,
  poolPresenceSubject,
  poolTaskSubject,
  type CallerEvent,
  type Cancel,
  type Offer,
  type OfferReply,
} from './poolProtocol.js';

export { PoolTaskError, PoolValueError } from './poolErrors.js';

export interface PoolOptions {
  readonly bus: Bus;
  readonly name: string;
  /** The longest a task may run once a worker starts it: it is then stopped there and fails as timed out (default 60 s). */
  readonly timeoutMs?: number;
  /** Times a task is sent again after its worker died or fell silent (default 3); then it fails as lost. */
  readonly retries?: number;
  /** Tasks out at once, `map` and `put` together (default 32). */
  readonly concurrency?: number;
  /** How often a worker says a task still runs (default 1 s). */
  readonly heartbeatMs?: number;
  /** A worker that says nothing of a task for this long (no acknowledgement, no heartbeat) is presumed dead, and the task goes to another (default 10 s). */
  readonly silentMs?: number;
  /** How long a task waits while no worker of the pool is up at all before it fails as unserved (default 30 s). */
  readonly waitForWorkerMs?: number;
}

/** What `map` reports per answered task. */
export interface TaskAnswer<O> {
  readonly index: number;
  readonly output: O;
  /** The worker that answered. */
  readonly worker: string;
  /** Times the task was sent again (its worker died, fell silent or left) before this answer. */
  readonly retries: number;
}

/** A task's answer or its error, as `mapSettled` reports it. */
export type TaskSettled<O> = ({ readonly ok: true } & TaskAnswer<O>) | { readonly ok: false; readonly index: number; readonly error: TroupeError };

/** How long a "some worker is up" answer is trusted. */
const PRESENCE_MS = 500;
/** Most offers out at once (the window grows while offers are taken, and falls to 1 when workers are full). */
const MAX_OFFERS = 8;

/** A task that a worker started. */
type Started = OfferReply & { readonly offer: number };

/** How a task's run on one worker ended. */
type Outcome = { kind: 'done'; event: Extract<CallerEvent, { type: 'done' }> } | { kind: 'released' | 'silent' | 'timeout' | 'closed' };

/** One task while it is out. */
class TaskRun {
  /** Every offer made for it: their messages are this task's. */
  readonly offers: number[] = [];
  /** An answer that came while no run was watched (from an earlier offer, whose worker was presumed dead). */
  early: Extract<CallerEvent, { type: 'done' }> | null = null;
  /** Events of the offer out now, before its worker's acknowledgement was read. */
  readonly pendingEvents: CallerEvent[] = [];
  /** The watcher of the current run. */
  listener: ((e: CallerEvent) => void) | null = null;
  /** Ends the current run's watch (the pool closes). */
  interrupt: (() => void) | null = null;

  constructor(
    readonly index: number,
    readonly input: string,
  ) {}
}

/** A task waiting to be placed on a worker. */
interface Placing {
  readonly t: TaskRun;
  /** When it began to wait. */
  readonly since: number;
  resolve(started: Started | null): void;
  reject(err: unknown): void;
}

export class Pool<I = unknown, O = unknown> {
  private next = 0;
  private readonly pending = new Map<number, Promise<TaskAnswer<O>>>();
  /** This caller's token: workers report on troupe.pool.<name>.caller.<cid>. */
  private readonly cid = randomBytes(6).toString('hex');
  private readonly inbox: { drain(): Promise<void> };
  private offerSeq = 0;
  private readonly byOffer = new Map<number, TaskRun>();
  private readonly runs = new Set<TaskRun>();
  /** Free places among `concurrency`, and tasks waiting for one (in call order). */
  private free: number;
  private readonly queued: (() => void)[] = [];
  /** Tasks waiting for a worker, oldest first; offers out, and how many may be. */
  private readonly toPlace: Placing[] = [];
  private offering = 0;
  private window = 1;
  /** Placing pauses while no worker has room (see `dispatch`). */
  private paused: NodeJS.Timeout | null = null;
  private pauseMs = 0;
  /** Since when no worker of the pool has been up at all (null: one is). */
  private nobodySince: number | null = null;
  private presence: { at: number; up: Promise<boolean> } | null = null;
  private closed = false;

  constructor(private readonly o: PoolOptions) {
    for (const k of ['timeoutMs', 'heartbeatMs', 'silentMs', 'waitForWorkerMs', 'concurrency'] as const) {
      const v = o[k];
      if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new ConfigError(`pool ${o.name}: ${k} must be a positive number, got ${String(v)}`);
    }
    if (o.concurrency !== undefined && !Number.isInteger(o.concurrency)) throw new ConfigError(`pool ${o.name}: concurrency must be an integer, got ${o.concurrency}`);
    if (o.retries !== undefined && !(Number.isInteger(o.retries) && o.retries >= 0)) throw new ConfigError(`pool ${o.name}: retries must be a non-negative integer, got ${String(o.retries)}`);
    if (this.heartbeatMs < 10) throw new ConfigError(`pool ${o.name}: heartbeatMs must be at least 10, got ${this.heartbeatMs}`);
    if (this.silentMs <= this.heartbeatMs) throw new ConfigError(`pool ${o.name}: silentMs (${this.silentMs}) must exceed heartbeatMs (${this.heartbeatMs})`);
    this.free = o.concurrency ?? 32;
    this.inbox = o.bus.subscribe(poolCallerSubject(o.name, this.cid), (m) => {
      let e: CallerEvent;
      try {
        e = decodeCallerEvent(m.data);
      } catch {
        return; // not a worker's message
      }
      const t = this.byOffer.get(e.offer);
      if (!t) return; // a task already answered
      if (t.listener) return t.listener(e);
      if (e.type !== 'done') return void (e.offer === t.offers.at(-1) && t.pendingEvents.push(e));
      // An answer while the task is being offered again (or before its offer's reply was read).
      t.early = e;
      const waiting = this.toPlace.findIndex((w) => w.t === t);
      if (waiting >= 0) this.toPlace.splice(waiting, 1)[0]!.resolve(null);
    });
  }

  private get heartbeatMs(): number {
    return this.o.heartbeatMs ?? 1_000;
  }
  private get silentMs(): number {
    return this.o.silentMs ?? 10_000;
  }
  private get timeoutMs(): number {
    return this.o.timeoutMs ?? 60_000;
  }

  /** The JSON text of input `index`, or a PoolValueError naming where JSON cannot carry it (or that it is too large). */
  private encodeInput(index: number, input: I): string {
    const json = encodeJsonValue(input, index, 'input');
    const bytes = Buffer.byteLength(json);
    const room = this.o.bus.maxPayload - 1024;
    if (bytes > room) throw new PoolValueError(index, 'input', `is ${bytes} bytes of JSON; one NATS message carries at most ${room} (the server's max_payload less room for the task's head)`);
    return json;
  }

  /** Runs one task to its answer (see the class comment for what happens when its worker dies). */
  async run(index: number, input: I): Promise<TaskAnswer<O>> {
    return this.runEncoded(index, this.encodeInput(index, input));
  }

  private async runEncoded(index: number, json: string): Promise<TaskAnswer<O>> {
    await this.takePlace(index);
    const t = new TaskRun(index, json);
    this.runs.add(t);
    try {
      return await this.execute(t);
    } finally {
      this.runs.delete(t);
      for (const offer of t.offers) this.byOffer.delete(offer);
      this.givePlace();
    }
  }

  /** One of the `concurrency` places, in call order. */
  private async takePlace(index: number): Promise<void> {
    const closed = () => new PoolTaskError(index, 'closed', `task ${index}: pool ${this.o.name} is closed`);
    if (this.closed) throw closed();
    if (this.free > 0) {
      this.free--;
      return;
    }
    await new Promise<void>((resolve) => this.queued.push(resolve));
    if (this.closed) {
      this.givePlace();
      throw closed();
    }
  }

  private givePlace(): void {
    const next = this.queued.shift();
    if (next) next();
    else this.free++;
  }

  /** Offers the task until a worker starts it, follows it there, and offers it again when that worker is lost. */
  private async execute(t: TaskRun): Promise<TaskAnswer<O>> {
    const retries = this.o.retries ?? 3;
    let lost = 0;
    let resent = 0;
    let last = '';
    for (;;) {
      const started = t.early ? null : await this.place(t);
      if (started) last = started.worker;
      const outcome: Outcome = started ? await this.watch(t, started) : t.early ? { kind: 'done', event: t.early } : { kind: 'closed' };
      switch (outcome.kind) {
        case 'done': {
          const e = outcome.event;
          // An earlier run answered after all (its worker was only slow): the current one stops.
          if (started && e.offer !== started.offer) this.cancel(started.offer);
          this.roomFreed();
          if (e.ok) return { index: t.index, output: e.output as O, worker: e.worker, retries: resent };
          if (e.timedOut) throw new PoolTaskError(t.index, 'timeout', `task ${t.index} in worker ${e.worker} ${e.error.message}`, e.worker, e.error);
          throw PoolTaskError.failed(t.index, e.worker, e.error);
        }
        case 'timeout':
          // The worker stops a task at its deadline and says so; this is the backstop when it did not.
          this.cancel(started!.offer);
          this.roomFreed();
          throw new PoolTaskError(t.index, 'timeout', `task ${t.index} in worker ${last} ran past its ${this.timeoutMs} ms deadline, and the worker did not report stopping it: it was cancelled`, last);
        case 'closed':
          if (started) this.cancel(started.offer);
          throw new PoolTaskError(t.index, 'closed', `task ${t.index}: pool ${this.o.name} was closed before it was answered`, last);
        case 'silent':
          // Presumed dead. If it was only slow, the cancel stops its run; an answer it sent before still counts.
          this.cancel(started!.offer);
          if (++lost > retries) throw new PoolTaskError(t.index, 'lost', `task ${t.index} was lost: ${lost} workers (the last ${last}) said nothing of it for ${this.silentMs} ms`, last);
          resent++;
          break;
        case 'released':
          resent++; // its worker left before it ended: not the task's doing, not counted against retries
          break;
      }
    }
  }

  /** A worker that started task `t` (null: the pool closed, or an earlier run answered meanwhile). */
  private place(t: TaskRun): Promise<Started | null> {
    return new Promise<Started | null>((resolve, reject) => {
      this.toPlace.push({ t, since: performance.now(), resolve, reject });
      this.dispatch();
    });
  }

  /**
   * Places waiting tasks, oldest first. Offers go out `window` at a time: it grows while
   * workers take them and falls to one when one is refused, so a free slot does not draw a
   * storm of offers. A busy answer (a worker that filled up as the offer reached it) is
   * offered again at once; when no worker has room, placing pauses until a task of this pool
   * ends (its worker has a slot again) or, for room that other callers or new workers make,
   * for a while that grows from 10 to 250 ms.
   */
  private dispatch(): void {
    while (this.paused === null && this.offering < this.window && this.toPlace.length > 0) {
      const req = this.toPlace.shift()!;
      this.offering++;
      void this.offerOnce(req).finally(() => {
        this.offering--;
        this.dispatch();
      });
    }
  }

  private async offerOnce(req: Placing): Promise<void> {
    const { t } = req;
    if (this.closed || t.early) return req.resolve(null);
    const offer = ++this.offerSeq;
    this.byOffer.set(offer, t);
    t.offers.push(offer);
    t.pendingEvents.length = 0;
    const head: Offer = { caller: this.cid, offer, index: t.index, timeoutMs: Math.ceil(this.timeoutMs), heartbeatMs: Math.ceil(this.heartbeatMs) };
    let reply: OfferReply | null = null;
    let noResponders = false;
    try {
      // A worker answers at once; one that does not within silentMs is presumed dead (it may have started the task: cancelled below).
      reply = decodeOfferReply(await this.o.bus.request(poolTaskSubject(this.o.name), encodeWithValue(head, t.input), this.silentMs));
    } catch (err) {
      noResponders = (err as { cause?: { isNoResponders?: () => boolean } }).cause?.isNoResponders?.() === true;
      if (!noResponders) this.cancel(offer);
    }
    if (reply?.started) {
      this.pauseMs = 0;
      this.window = Math.min(MAX_OFFERS, this.window + 1);
      return req.resolve({ ...reply, offer });
    }
    if (t.early) return req.resolve(null);
    this.toPlace.unshift(req);
    this.window = 1;
    if (reply) {
      this.nobodySince = null;
      return; // busy: offered again at once
    }
    if (await this.anyoneUp()) this.nobodySince = null;
    else {
      this.nobodySince ??= performance.now();
      const limit = this.o.waitForWorkerMs ?? 30_000;
      const now = performance.now();
      for (const w of this.toPlace.filter((w) => now - Math.max(w.since, this.nobodySince!) >= limit)) {
        this.toPlace.splice(this.toPlace.indexOf(w), 1);
        w.reject(new PoolTaskError(w.t.index, 'unserved', `task ${w.t.index}: no worker of pool ${this.o.name} was up for ${limit} ms`));
      }
    }
    this.pause();
  }

  /** Stops placing for a while (see `dispatch`); a task ending resumes it at once. */
  private pause(): void {
    if (this.paused !== null) return;
    this.pauseMs = Math.min(250, Math.max(10, this.pauseMs * 2));
    this.paused = setTimeout(() => this.resume(), this.pauseMs);
  }

  private resume(): void {
    if (this.paused !== null) clearTimeout(this.paused);
    this.paused = null;
    this.dispatch();
  }

  /** A task ended: its worker has a slot free, so placing goes on now. */
  private roomFreed(): void {
    if (this.paused !== null) this.resume();
  }

  /** Whether any worker of the pool is up, full or not (asked at most every PRESENCE_MS). */
  private anyoneUp(): Promise<boolean> {
    const now = performance.now();
    if (!this.presence || now - this.presence.at > PRESENCE_MS) {
      const up = this.o.bus.request(poolPresenceSubject(this.o.name), encode({}), 1_000).then(
        () => true,
        () => false,
      );
      this.presence = { at: now, up };
    }
    return this.presence.up;
  }

  /** Follows a started task on its worker: its answer, its deadline, the worker's silence or leaving. */
  private watch(t: TaskRun, w: Started): Promise<Outcome> {
    return new Promise<Outcome>((resolve) => {
      let silence: NodeJS.Timeout | undefined;
      const end = (o: Outcome) => {
        clearTimeout(silence);
        clearTimeout(deadline);
        t.listener = null;
        t.interrupt = null;
        resolve(o);
      };
      const heard = () => {
        clearTimeout(silence);
        silence = setTimeout(() => end({ kind: 'silent' }), this.silentMs);
      };
      // The worker's own clock stops the task and reports it; this one waits a silence longer.
      const deadline = setTimeout(() => end({ kind: 'timeout' }), this.timeoutMs + this.silentMs);
      heard();
      t.interrupt = () => end({ kind: 'closed' });
      t.listener = (e) => {
        // An answer counts from whichever offer of this task it comes; the rest only from this one.
        if (e.type === 'done') return end({ kind: 'done', event: e });
        if (e.offer !== w.offer) return;
        if (e.type === 'released') return end({ kind: 'released' });
        heard();
      };
      for (const e of t.pendingEvents.splice(0)) t.listener?.(e);
      if (t.early) end({ kind: 'done', event: t.early });
    });
  }

  /** Tells the workers to stop a run this caller no longer waits for. */
  private cancel(offer: number): void {
    const c: Cancel = { caller: this.cid, offer };
    this.o.bus.publish(poolCancelSubject(this.o.name), encode(c)).catch(() => {});
  }

  private encodeAll(inputs: readonly I[]): string[] {
    return inputs.map((x, i) => this.encodeInput(i, x));
  }

  /**
   * Every input's answer, in input order. `onAnswer` sees each as it comes. The first task
   * error rejects the whole map (with that task's index); the tasks in flight still finish.
   * An input JSON cannot carry refuses the map before any task is sent (PoolValueError).
   */
  async mapAnswers(inputs: readonly I[], onAnswer?: (a: TaskAnswer<O>) => void): Promise<TaskAnswer<O>[]> {
    const json = this.encodeAll(inputs);
    const out: TaskAnswer<O>[] = new Array(inputs.length);
    let nextIndex = 0;
    let failure: unknown = null;
    const lane = async () => {
      while (failure === null && nextIndex < inputs.length) {
        const i = nextIndex++;
        try {
          out[i] = await this.runEncoded(i, json[i]!);
          onAnswer?.(out[i]!);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.o.concurrency ?? 32, inputs.length) }, lane));
    if (failure !== null) throw failure;
    return out;
  }

  /** The outputs of `inputs`, in input order. */
  async map(inputs: readonly I[]): Promise<O[]> {
    return (await this.mapAnswers(inputs)).map((a) => a.output);
  }

  /**
   * Every input's answer or error, in input order: one task's failure does not stop the
   * others. An input JSON cannot carry refuses the call before any task is sent.
   */
  async mapSettled(inputs: readonly I[]): Promise<TaskSettled<O>[]> {
    const json = this.encodeAll(inputs);
    return Promise.all(
      json.map((j, i) =>
        this.runEncoded(i, j).then(
          (a): TaskSettled<O> => ({ ok: true, ...a }),
          (error: unknown): TaskSettled<O> => ({ ok: false, index: i, error: error instanceof TroupeError ? error : new TroupeError('POOL_TASK', String(error), { cause: error }) }),
        ),
      ),
    );
  }

  /** Hands in one task (refused at once, with a PoolValueError, when JSON cannot carry it); `get` its answer with the returned id. */
  put(input: I): number {
    const id = this.next;
    const json = this.encodeInput(id, input);
    this.next++;
    const p = this.runEncoded(id, json);
    p.catch(() => {}); // observed by get()
    this.pending.set(id, p);
    return id;
  }

  /** The output of the task `put` returned `id` for (each id once). */
  async get(id: number): Promise<O> {
    const p = this.pending.get(id);
    if (!p) throw new TroupeError('POOL_ID', `no task ${id} is pending in pool ${this.o.name}`);
    this.pending.delete(id);
    return (await p).output;
  }

  /** Fails every task not yet answered (`closed`), tells their workers to stop them, and stops listening. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const q of this.queued.splice(0)) q();
    for (const p of this.toPlace.splice(0)) p.resolve(null);
    if (this.paused !== null) clearTimeout(this.paused);
    for (const t of this.runs) t.interrupt?.();
    await this.o.bus.flush().catch(() => {}); // the cancels are out
    await this.inbox.drain();
  }
}
