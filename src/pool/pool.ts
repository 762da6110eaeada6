/**
 * The caller's side of a task pool (GluonCV's `Parallel`): `map(inputs)` sends every input
 * to the pool's queue group and resolves with the outputs in input order; `put`/`get` hand
 * in one task and fetch its answer. A task whose worker dies (no reply within `timeoutMs`,
 * or no worker at all) is sent again, up to `retries` times: every input gets exactly one
 * answer. A worker's exception rejects with a PoolTaskError naming the input's index.
 */
import { PoolTaskError, TransportError, TroupeError, messageOf } from '../errors.js';
import { encodeJson } from '../protocol/messages.js';
import type { Bus } from '../transport/bus.js';
import { poolTaskSubject, type TaskReply } from './poolProtocol.js';

export { PoolTaskError } from '../errors.js';

export interface PoolOptions {
  readonly bus: Bus;
  readonly name: string;
  /** Milliseconds to wait for a task's answer before sending it again (default 10 s). */
  readonly timeoutMs?: number;
  /** Times a task is sent again after a timeout or with no worker up (default 3). */
  readonly retries?: number;
  /** Tasks in flight at once (default 32). */
  readonly concurrency?: number;
}

/** What `map` reports per answered task. */
export interface TaskAnswer<O> {
  readonly index: number;
  readonly output: O;
  /** The worker that answered. */
  readonly worker: string;
  /** Times the task was sent again before this answer. */
  readonly retries: number;
}

const dec = new TextDecoder();

export class Pool<I = unknown, O = unknown> {
  private next = 0;
  private readonly pending = new Map<number, Promise<TaskAnswer<O>>>();

  constructor(private readonly o: PoolOptions) {
    poolTaskSubject(o.name);
  }

  /** Runs one task to its answer, sending it again when its worker goes silent. */
  async run(index: number, input: I): Promise<TaskAnswer<O>> {
    const retries = this.o.retries ?? 3;
    let lastError: unknown;
    for (let attempt = 0; attempt <= retries; attempt++) {
      let reply: TaskReply;
      try {
        const data = await this.o.bus.request(poolTaskSubject(this.o.name), encodeJson({ index, input }), this.o.timeoutMs ?? 10_000);
        reply = JSON.parse(dec.decode(data)) as TaskReply;
      } catch (err) {
        // No answer (the worker died with the task, or none is up yet): send it again, after a pause.
        lastError = err;
        if (attempt < retries) await new Promise((r) => setTimeout(r, 100 * (attempt + 1)));
        continue;
      }
      if (!reply.ok) throw new PoolTaskError(index, reply.worker, reply.error);
      return { index, output: reply.output as O, worker: reply.worker, retries: attempt };
    }
    throw new TransportError(`task ${index} of pool ${this.o.name} got no answer after ${retries + 1} tries: ${messageOf(lastError)}`, { cause: lastError });
  }

  /**
   * Every input's answer, in input order. `onAnswer` sees each as it comes. The first task
   * error rejects the whole map (with that task's index); the tasks in flight still finish.
   */
  async mapAnswers(inputs: readonly I[], onAnswer?: (a: TaskAnswer<O>) => void): Promise<TaskAnswer<O>[]> {
    const out: TaskAnswer<O>[] = new Array(inputs.length);
    let nextIndex = 0;
    let failure: unknown = null;
    const lane = async () => {
      while (failure === null && nextIndex < inputs.length) {
        const i = nextIndex++;
        try {
          out[i] = await this.run(i, inputs[i]!);
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

  /** Hands in one task; `get` its answer with the returned id. */
  put(input: I): number {
    const id = this.next++;
    const p = this.run(id, input);
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
}
