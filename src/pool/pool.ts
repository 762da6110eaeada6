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
import { ConfigError, PoolTaskError, PoolValueError, TroupeError } from '../errors.js';
import { encodeJson } from '../protocol/messages.js';
import type { Bus } from '../transport/bus.js';
import { encodeJsonValue } from './jsonValue.js';
import { Placer } from './placer.js';
import { decodeCallerEvent, MAX_TIMER_MS, poolCallerSubject, poolCancelSubject, type CallerEvent, type Cancel } from './poolProtocol.js';
import { TaskRun, type Started } from './taskRun.js';

export { PoolTaskError, PoolValueError } from '../errors.js';

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

/** How a task's run on one worker ended. */
type Outcome = { kind: 'done'; event: Extract<CallerEvent, { type: 'done' }> } | { kind: 'released' | 'silent' | 'timeout' | 'closed' };

export class Pool<I = unknown, O = unknown> {
  private next = 0;
  private readonly pending = new Map<number, Promise<TaskAnswer<O>>>();
  /** This caller's token: workers report on troupe.pool.<name>.caller.<cid>. */
  private readonly cid = randomBytes(6).toString('hex');
  private readonly inbox: { drain(): Promise<void> };
  private readonly byOffer = new Map<number, TaskRun>();
  private readonly runs = new Set<TaskRun>();
  /** Free places among `concurrency`, and tasks waiting for one (in call order). */
  private free: number;
  private readonly queued: (() => void)[] = [];
  private readonly placer: Placer;
  private closed = false;

  constructor(private readonly o: PoolOptions) {
    for (const k of ['timeoutMs', 'heartbeatMs', 'silentMs', 'waitForWorkerMs', 'concurrency'] as const) {
      const v = o[k];
      if (v !== undefined && !(Number.isFinite(v) && v > 0)) throw new ConfigError(`pool ${o.name}: ${k} must be a positive number, got ${String(v)}`);
      // Node fires a longer timer after 1 ms: every task would time out at once.
      if (v !== undefined && k !== 'concurrency' && v > MAX_TIMER_MS)
        throw new ConfigError(`pool ${o.name}: ${k} must be at most ${MAX_TIMER_MS} ms (about 24.8 days, Node's longest timer), got ${v}`);
    }
    if (o.concurrency !== undefined && !Number.isInteger(o.concurrency))
      throw new ConfigError(`pool ${o.name}: concurrency must be an integer, got ${o.concurrency}`);
    if (o.retries !== undefined && !(Number.isInteger(o.retries) && o.retries >= 0))
      throw new ConfigError(`pool ${o.name}: retries must be a non-negative integer, got ${String(o.retries)}`);
    if (this.heartbeatMs < 10) throw new ConfigError(`pool ${o.name}: heartbeatMs must be at least 10, got ${this.heartbeatMs}`);
    if (this.timeoutMs + this.silentMs > MAX_TIMER_MS)
      throw new ConfigError(
        `pool ${o.name}: timeoutMs + silentMs (${this.timeoutMs + this.silentMs}) must be at most ${MAX_TIMER_MS} ms, Node's longest timer (the caller waits both)`,
      );
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
      this.placer.answered(t);
    });
    this.placer = new Placer({
      bus: o.bus,
      name: o.name,
      cid: this.cid,
      timeoutMs: this.timeoutMs,
      heartbeatMs: this.heartbeatMs,
      silentMs: this.silentMs,
      waitForWorkerMs: o.waitForWorkerMs ?? 30_000,
      onOffer: (offer, t) => {
        this.byOffer.set(offer, t);
        t.offers.push(offer);
        t.pendingEvents.length = 0;
      },
      cancel: (offer) => this.cancel(offer),
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
    if (bytes > room)
      throw new PoolValueError(
        index,
        'input',
        `is ${bytes} bytes of JSON; one NATS message carries at most ${room} (the server's max_payload less room for the task's head)`,
      );
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
      const started = t.early ? null : await this.placer.place(t);
      if (started) last = started.worker;
      const outcome: Outcome = started ? await this.watch(t, started) : t.early ? { kind: 'done', event: t.early } : { kind: 'closed' };
      switch (outcome.kind) {
        case 'done': {
          const e = outcome.event;
          // An earlier run answered after all (its worker was only slow): the current one stops.
          if (started && e.offer !== started.offer) this.cancel(started.offer);
          this.placer.roomFreed();
          if (e.ok) return { index: t.index, output: e.output as O, worker: e.worker, retries: resent };
          if (e.timedOut) throw new PoolTaskError(t.index, 'timeout', `task ${t.index} in worker ${e.worker} ${e.error.message}`, e.worker, e.error);
          throw PoolTaskError.failed(t.index, e.worker, e.error);
        }
        case 'timeout':
          // The worker stops a task at its deadline and says so; this is the backstop when it did not.
          this.cancel(started!.offer);
          this.placer.roomFreed();
          throw new PoolTaskError(
            t.index,
            'timeout',
            `task ${t.index} in worker ${last} ran past its ${this.timeoutMs} ms deadline, and the worker did not report stopping it: it was cancelled`,
            last,
          );
        case 'closed':
          if (started) this.cancel(started.offer);
          throw new PoolTaskError(t.index, 'closed', `task ${t.index}: pool ${this.o.name} was closed before it was answered`, last);
        case 'silent':
          // Presumed dead. If it was only slow, the cancel stops its run; an answer it sent before still counts.
          this.cancel(started!.offer);
          if (++lost > retries)
            throw new PoolTaskError(
              t.index,
              'lost',
              `task ${t.index} was lost: ${lost} workers (the last ${last}) said nothing of it for ${this.silentMs} ms`,
              last,
            );
          resent++;
          break;
        case 'released':
          resent++; // its worker left before it ended: not the task's doing, not counted against retries
          break;
      }
    }
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
    this.o.bus.publish(poolCancelSubject(this.o.name), encodeJson(c)).catch(() => {});
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
    const out = new Array<TaskAnswer<O>>(inputs.length);
    let nextIndex = 0;
    let failure: unknown = null;
    const lane = async () => {
      while (failure === null && nextIndex < inputs.length) {
        const i = nextIndex++;
        try {
          out[i] = await this.runEncoded(i, json[i]!);
          onAnswer?.(out[i]);
        } catch (err) {
          failure ??= err;
        }
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.o.concurrency ?? 32, inputs.length) }, lane));
    // eslint-disable-next-line @typescript-eslint/only-throw-error -- the first failing task's own error, unchanged
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
          (error: unknown): TaskSettled<O> => ({
            ok: false,
            index: i,
            error: error instanceof TroupeError ? error : new TroupeError('POOL_TASK', String(error), { cause: error }),
          }),
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
    this.placer.close();
    for (const t of this.runs) t.interrupt?.();
    await this.o.bus.flush().catch(() => {}); // the cancels are out
    await this.inbox.drain();
  }
}
