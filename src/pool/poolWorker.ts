/**
 * A pool worker: a `poolWorker` actor serving independent tasks from the queue group of
 * `troupe.pool.<name>.task`. NATS hands each task to one member, so workers that join share
 * the load at once and a worker that leaves simply gets no more.
 */
import { hostname } from 'node:os';
import { createActor, type Actor } from 'xstate';
import { poolWorkerMachine } from '../../actors/poolWorkerMachine.js';
import { FrameError, messageOf } from '../errors.js';
import { busInspector } from '../inspect/busInspector.js';
import { encodeJson } from '../protocol/messages.js';
import { checkJobId, poolScope } from '../protocol/subjects.js';
import type { Bus, BusMessage } from '../transport/bus.js';
import { poolTaskSubject, type TaskReply, type TaskRequest } from './poolProtocol.js';

/** A task: any function of one JSON input to a JSON output. */
export type Task<I = unknown, O = unknown> = (input: I, index: number) => O | Promise<O>;

export interface PoolWorkerOptions<I, O> {
  readonly bus: Bus;
  /** The pool's name (a subject token). */
  readonly pool: string;
  readonly task: Task<I, O>;
  /** Publish the actor's inspection events on troupe.pool-<pool>.inspect.worker-<id>. */
  readonly inspect?: boolean;
  /** This worker's name in replies (default host:pid:n). */
  readonly id?: string;
}

let workers = 0;
const dec = new TextDecoder();

/** A running pool worker. */
export class PoolWorker<I = unknown, O = unknown> {
  readonly actor: Actor<typeof poolWorkerMachine>;
  readonly id: string;
  private readonly queue: BusMessage[] = [];
  /** Resolves when the queue runs dry; null while nothing runs. */
  private draining: Promise<void> | null = null;
  private readonly sub: { drain(): Promise<void> };

  private constructor(private readonly o: PoolWorkerOptions<I, O>) {
    checkJobId(o.pool);
    this.id = o.id ?? `${hostname()}:${process.pid}:${++workers}`;
    this.actor = createActor(poolWorkerMachine, {
      input: { pool: o.pool },
      id: `pool-${o.pool}-worker`,
      ...(o.inspect ? { inspect: busInspector(o.bus, poolScope(o.pool), `worker-${workers}`) } : {}),
    });
    this.actor.start();
    this.sub = o.bus.subscribe(poolTaskSubject(o.pool), (m) => this.enqueue(m), 'workers');
  }

  /** Joins the pool; resolves once the server knows the subscription. */
  static async start<I, O>(o: PoolWorkerOptions<I, O>): Promise<PoolWorker<I, O>> {
    const w = new PoolWorker(o);
    await o.bus.flush();
    return w;
  }

  /** Tasks are run one at a time, in arrival order. */
  private enqueue(m: BusMessage): void {
    this.queue.push(m);
    this.draining ??= this.drainQueue();
  }

  private async drainQueue(): Promise<void> {
    try {
      while (this.queue.length > 0) await this.run(this.queue.shift()!);
    } finally {
      this.draining = null;
    }
  }

  /** Answers a task; an output JSON cannot carry becomes an error reply, a closed connection is the caller's timeout. */
  private answer(m: BusMessage, reply: TaskReply): void {
    let body: Uint8Array;
    try {
      body = encodeJson(reply);
    } catch (err) {
      body = encodeJson({ ok: false, worker: this.id, error: { name: 'TypeError', message: `the task's output cannot be sent as JSON: ${messageOf(err)}` } } satisfies TaskReply);
    }
    try {
      m.respond(body);
    } catch {
      // The connection is closing: the caller sends the task again.
    }
  }

  private async run(m: BusMessage): Promise<void> {
    let reply: TaskReply;
    let req: TaskRequest;
    try {
      req = JSON.parse(dec.decode(m.data)) as TaskRequest;
      if (!req || typeof req !== 'object' || !Number.isInteger(req.index) || !('input' in req)) throw new FrameError('a task must be { index, input }');
    } catch (err) {
      this.answer(m, { ok: false, worker: this.id, error: { name: 'FrameError', message: `malformed task: ${messageOf(err)}` } });
      return;
    }
    this.actor.send({ type: 'TASK', index: req.index });
    try {
      const output = await this.o.task(req.input as I, req.index);
      reply = { ok: true, worker: this.id, output };
      this.actor.send({ type: 'DONE' });
    } catch (err) {
      reply = { ok: false, worker: this.id, error: { name: err instanceof Error ? err.name : 'Error', message: messageOf(err) } };
      this.actor.send({ type: 'FAILED', message: messageOf(err) });
    }
    this.answer(m, reply);
  }

  /** Leaves the pool: no new tasks; the ones already here are answered first. */
  async stop(): Promise<void> {
    await this.sub.drain();
    await this.draining;
    this.actor.send({ type: 'STOP' });
    this.actor.stop();
  }
}
