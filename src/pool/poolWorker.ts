/**
 * A pool worker: a `poolWorker` actor serving tasks of pool `<name>`, `concurrency` at a
 * time. It is in the queue group of `troupe.pool.<name>.task` only while it has a free slot,
 * so offers go to workers with room; it acknowledges a task as it starts it, heartbeats while
 * it runs, stops it at its deadline and answers once (see poolProtocol.ts). With `module`,
 * each slot runs the task in a child process, which is killed to stop a task (a synchronous
 * loop too); a `task` function runs in this process and cannot be stopped, only abandoned.
 */
import { hostname } from 'node:os';
import { createActor, type Actor } from 'xstate';
import { poolWorkerMachine, type PoolWorkerEvent, type TaskOutcome } from '../../actors/poolWorkerMachine.js';
import { ConfigError, messageOf } from '../errors.js';
import { busInspector } from '../inspect/busInspector.js';
import { encodeJson } from '../protocol/messages.js';
import { checkJobId, poolScope } from '../protocol/subjects.js';
import type { Bus, BusMessage } from '../transport/bus.js';
import { encodeJsonValue } from './jsonValue.js';
import {
  decodeCancel,
  decodeOffer,
  encodeWithValue,
  poolCallerSubject,
  poolCancelSubject,
  poolPresenceSubject,
  poolTaskSubject,
  type CallerEvent,
  type Offer,
  type OfferReply,
  type RemoteError,
} from './poolProtocol.js';
import { TaskProcess, type TaskResult } from './taskProcess.js';

/** A task: any function of one JSON input to a JSON output. */
export type Task<I = unknown, O = unknown> = (input: I, index: number) => O | Promise<O>;

export interface PoolWorkerOptions<I, O> {
  readonly bus: Bus;
  /** The pool's name (a subject token). */
  readonly pool: string;
  /** The task, run in this process: one that blocks the event loop cannot be stopped, and silences the worker meanwhile. */
  readonly task?: Task<I, O>;
  /** Or the path of a module whose default export is the task: each slot runs it in a child process that can be killed. */
  readonly module?: string;
  /** Tasks run at once (default 1). */
  readonly concurrency?: number;
  /** Publish the actor's inspection events on troupe.pool-<pool>.inspect.worker-<id>. */
  readonly inspect?: boolean;
  /** This worker's name in answers (default host:pid:n). */
  readonly id?: string;
  /** Told what happens to tasks: deadlines, task processes started again (default: nothing). */
  readonly log?: (line: string) => void;
}

/** A task this worker runs. */
interface Running {
  readonly key: string;
  readonly offer: Offer;
  readonly input: string;
  readonly heartbeat: NodeJS.Timeout;
  readonly deadline: NodeJS.Timeout;
  /** The process it runs in (module tasks), once it has one. */
  proc: TaskProcess | null;
  over: boolean;
}

let workers = 0;

/** A running pool worker. */
export class PoolWorker<I = unknown, O = unknown> {
  readonly actor: Actor<typeof poolWorkerMachine>;
  readonly id: string;
  /** Malformed messages ignored. */
  malformed = 0;
  private taskSub: { drain(): Promise<void> } | null = null;
  private readonly cancelSub: { drain(): Promise<void> };
  private readonly presenceSub: { drain(): Promise<void> };
  private readonly running = new Map<string, Running>();
  /** Task processes with no task, and tasks waiting for one (a killed process's successor is starting). */
  private readonly idle: TaskProcess[] = [];
  private readonly waitingForProc: { resolve(p: TaskProcess): void; reject(e: unknown): void }[] = [];
  /** The offer being handed to the machine (its actions answer it). */
  private inHand: { readonly msg: BusMessage; readonly offer: Offer; readonly input: string } | null = null;
  private stopping: Promise<void> | null = null;

  private constructor(
    private readonly o: PoolWorkerOptions<I, O>,
    procs: TaskProcess[],
  ) {
    this.id = o.id ?? `${hostname()}:${process.pid}:${++workers}`;
    this.idle.push(...procs);
    const machine = poolWorkerMachine.provide({
      actions: {
        startTask: (_, { key }) => this.startTask(key),
        refuseTask: () => this.answer({ started: false, worker: this.id }),
        stopTask: (_, { key }) => this.stopTask(key, 'cancelled'),
        releaseTasks: (_, { keys }) => {
          for (const k of keys) this.stopTask(k, null);
        },
      },
    });
    this.actor = createActor(machine, {
      input: { pool: o.pool, capacity: o.concurrency ?? 1 },
      id: `pool-${o.pool}-worker`,
      ...(o.inspect ? { inspect: busInspector(o.bus, poolScope(o.pool), `worker-${workers}`) } : {}),
    });
    this.actor.start();
    this.cancelSub = o.bus.subscribe(poolCancelSubject(o.pool), (m) => {
      try {
        const c = decodeCancel(m.data);
        this.send({ type: 'CANCEL', key: `${c.caller}/${c.offer}` });
      } catch {
        this.malformed++;
      }
    });
    this.presenceSub = o.bus.subscribe(poolPresenceSubject(o.pool), (m) => m.respond(encodeJson({ worker: this.id })), 'workers');
    this.syncQueue();
  }

  /** Joins the pool (with `module`, once every slot's process has loaded it); resolves once the server knows the subscriptions. */
  static async start<I, O>(o: PoolWorkerOptions<I, O>): Promise<PoolWorker<I, O>> {
    checkJobId(o.pool);
    if ((o.task === undefined) === (o.module === undefined)) throw new ConfigError(`pool worker ${o.pool}: give either task (a function) or module (a path)`);
    if (o.task !== undefined && typeof o.task !== 'function') throw new ConfigError(`pool worker ${o.pool}: task must be a function of (input, index)`);
    const c = o.concurrency ?? 1;
    if (!Number.isInteger(c) || c < 1) throw new ConfigError(`pool worker ${o.pool}: concurrency must be a positive integer, got ${String(o.concurrency)}`);
    const procs = o.module ? await startProcesses(o.module, c) : [];
    const w = new PoolWorker(o, procs);
    await o.bus.flush();
    return w;
  }

  /** Process ids of the task processes (module tasks). */
  get taskPids(): number[] {
    return [...this.idle, ...[...this.running.values()].flatMap((r) => (r.proc ? [r.proc] : []))].map((p) => p.pid);
  }

  /** Hands the machine an event; afterwards the worker is in the queue group exactly when it has a free slot. */
  private send(event: PoolWorkerEvent): void {
    if (this.actor.getSnapshot().status !== 'active') return;
    this.actor.send(event);
    this.syncQueue();
  }

  private syncQueue(): void {
    const s = this.actor.getSnapshot();
    const room = (s.matches('idle') || s.matches('busy')) && Object.keys(s.context.running).length < s.context.capacity;
    if (room && !this.taskSub) this.taskSub = this.o.bus.subscribe(poolTaskSubject(this.o.pool), (m) => this.onOffer(m), 'workers');
    else if (!room && this.taskSub) {
      // Offers already on their way are answered busy; their callers offer them again.
      this.taskSub.drain().catch(() => {});
      this.taskSub = null;
    }
  }

  /** Reports on a task to its caller; a successful `done` carries the output's JSON after its head. */
  private tell(caller: string, event: CallerEvent | { type: 'done'; offer: number; worker: string; ok: true }, output?: string): void {
    const body = output === undefined ? encodeJson(event) : encodeWithValue(event, output);
    this.o.bus.publish(poolCallerSubject(this.o.pool, caller), body).catch(() => {
      // The connection is closing: the caller hears nothing more, and sends the task elsewhere.
    });
  }

  private onOffer(m: BusMessage): void {
    let got: ReturnType<typeof decodeOffer>;
    try {
      got = decodeOffer(m.data);
    } catch {
      this.malformed++;
      return;
    }
    this.inHand = { msg: m, ...got };
    try {
      this.send({ type: 'TASK', key: `${got.offer.caller}/${got.offer.offer}`, index: got.offer.index });
    } finally {
      this.inHand = null;
    }
  }

  /** Answers the offer in hand. */
  private answer(reply: OfferReply): void {
    this.inHand?.msg.respond(encodeJson(reply));
  }

  private startTask(key: string): void {
    const h = this.inHand;
    if (!h) return;
    const { offer, input } = h;
    const r: Running = {
      key,
      offer,
      input,
      proc: null,
      over: false,
      heartbeat: setInterval(() => this.tell(offer.caller, { type: 'hb', offer: offer.offer, worker: this.id }), offer.heartbeatMs),
      deadline: setTimeout(() => this.timedOut(r), offer.timeoutMs),
    };
    this.running.set(key, r);
    this.answer({ started: true, worker: this.id });
    void this.execute(r);
  }

  private async execute(r: Running): Promise<void> {
    const { offer } = r;
    let result: TaskResult;
    try {
      if (this.o.module) {
        const proc = await this.takeProcess();
        if (r.over) return this.giveProcess(proc);
        r.proc = proc;
        try {
          result = await proc.run(offer.index, r.input);
        } catch (err) {
          if (r.over) return; // killed to stop it: that is handled where it was stopped
          // The process died under the task (the task ended it, or ran out of memory): a new one takes the slot.
          r.proc = null;
          this.replaceProcess();
          throw err;
        }
      } else {
        const output = await this.o.task!(JSON.parse(r.input) as I, offer.index);
        result = { ok: true, json: encodeJsonValue(output, offer.index, 'output') };
      }
    } catch (err) {
      result = { ok: false, error: { name: err instanceof Error ? err.name : 'Error', message: messageOf(err) } };
    }
    if (r.over) return; // stopped meanwhile (its deadline, a cancel, the worker leaving)
    if (r.proc) this.giveProcess(r.proc);
    r.proc = null;
    const room = this.o.bus.maxPayload - 1024;
    if (result.ok && Buffer.byteLength(result.json) > room) {
      result = {
        ok: false,
        error: {
          name: 'PoolValueError',
          message: `task ${offer.index}: output is ${Buffer.byteLength(result.json)} bytes of JSON; one NATS message carries at most ${room}`,
        },
      };
    }
    // The slot is freed (and the worker back in the queue group) before the answer goes: a caller it wakes finds room.
    this.finish(r, result.ok ? 'done' : 'failed');
    if (result.ok) this.tell(offer.caller, { type: 'done', offer: offer.offer, worker: this.id, ok: true }, result.json);
    else this.tell(offer.caller, { type: 'done', offer: offer.offer, worker: this.id, ok: false, timedOut: false, error: result.error });
  }

  /** Ends a task's bookkeeping and tells the machine (null: the machine already dropped it). */
  private finish(r: Running, outcome: TaskOutcome | null): void {
    r.over = true;
    clearInterval(r.heartbeat);
    clearTimeout(r.deadline);
    this.running.delete(r.key);
    if (outcome) this.send({ type: 'END', key: r.key, outcome });
  }

  private timedOut(r: Running): void {
    if (r.over) return;
    this.stopProcessOf(r);
    const how = this.o.module ? 'its process killed' : 'abandoned: a task function cannot be stopped';
    const error: RemoteError = { name: 'PoolTimeoutError', message: `ran past its ${r.offer.timeoutMs} ms deadline and was stopped (${how})` };
    this.o.log?.(`troupe pool-worker: task ${r.offer.index} ${error.message}`);
    this.finish(r, 'timeout');
    this.tell(r.offer.caller, { type: 'done', offer: r.offer.offer, worker: this.id, ok: false, timedOut: true, error });
  }

  /** A task stopped before its end: cancelled by its caller, or (outcome null) handed back as the worker leaves. */
  private stopTask(key: string, outcome: 'cancelled' | null): void {
    const r = this.running.get(key);
    if (!r || r.over) return;
    this.stopProcessOf(r);
    if (outcome === null) {
      this.finish(r, null);
      this.tell(r.offer.caller, { type: 'released', offer: r.offer.offer, worker: this.id });
    } else {
      // Inside the machine's transition: END follows once it is over.
      r.over = true;
      queueMicrotask(() => this.finish(r, outcome));
    }
  }

  /** Kills the process a task runs in (a new one takes its slot); a task function runs on, abandoned. */
  private stopProcessOf(r: Running): void {
    const proc = r.proc;
    r.proc = null;
    if (!proc) return;
    void proc.kill();
    this.replaceProcess();
  }

  private takeProcess(): Promise<TaskProcess> {
    const p = this.idle.pop();
    if (p) return Promise.resolve(p);
    return new Promise((resolve, reject) => this.waitingForProc.push({ resolve, reject }));
  }

  private giveProcess(p: TaskProcess): void {
    const w = this.waitingForProc.shift();
    if (w) w.resolve(p);
    else this.idle.push(p);
  }

  private replaceProcess(): void {
    if (this.stopping) return;
    TaskProcess.start(this.o.module!).then(
      (p) => {
        if (this.stopping) return void p.kill();
        this.o.log?.(`troupe pool-worker: task process pid ${p.pid} started in place of a killed one`);
        this.giveProcess(p);
      },
      (err: unknown) => {
        // The module no longer loads: tasks waiting for a process fail, saying why.
        this.o.log?.(`troupe pool-worker: a task process could not be started again: ${messageOf(err)}`);
        for (const w of this.waitingForProc.splice(0)) w.reject(err);
      },
    );
  }

  /**
   * Leaves the pool: takes no new task, lets the running ones end for up to `graceMs`, then
   * stops them and hands them back to their callers (who send them to another worker).
   * Resolves once every task process is gone.
   */
  stop(graceMs = 5_000): Promise<void> {
    this.stopping ??= (async () => {
      this.send({ type: 'STOP' });
      await this.presenceSub.drain().catch(() => {});
      // Draining: the machine stops once no task runs, or at RELEASE when the grace is over.
      let timer: NodeJS.Timeout | undefined;
      let watch: { unsubscribe(): void } | undefined;
      await new Promise<void>((resolve) => {
        watch = this.actor.subscribe({ next: (s) => s.status !== 'active' && resolve(), complete: resolve });
        timer = setTimeout(() => this.send({ type: 'RELEASE' }), graceMs);
        if (this.actor.getSnapshot().status !== 'active') resolve();
      });
      clearTimeout(timer);
      watch?.unsubscribe();
      await this.cancelSub.drain().catch(() => {});
      for (const w of this.waitingForProc.splice(0)) w.reject(new Error('the worker is leaving'));
      await Promise.all(this.idle.splice(0).map((p) => p.kill()));
      this.actor.stop();
    })();
    return this.stopping;
  }

  /** Leaves at once: running tasks are stopped and handed back to their callers. */
  stopNow(): Promise<void> {
    const s = this.stop(0);
    this.send({ type: 'RELEASE' });
    return s;
  }
}

/** Answers a request; a connection closing meanwhile leaves the requester to its timeout. */
/** `n` task processes on `module`; none is left running when one cannot load it. */
async function startProcesses(module: string, n: number): Promise<TaskProcess[]> {
  const started = await Promise.allSettled(Array.from({ length: n }, () => TaskProcess.start(module)));
  const ok = started.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
  const failed = started.find((s): s is PromiseRejectedResult => s.status === 'rejected');
  if (failed) {
    await Promise.all(ok.map((p) => p.kill()));
    throw failed.reason;
  }
  return ok;
}
