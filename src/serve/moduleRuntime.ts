/**
 * A module runtime (after hivemind's Runtime): one process hosts several module backends
 * (a trained stage, an expert) and serves forward and backward requests from many clients.
 * Requests wait in a pool per (module, op) and are batched up to `maxBatchSize` examples or
 * until the oldest has waited `maxWaitMs`; one batch runs at a time, from the ready pool of
 * highest priority (then the oldest). When a batch of several requests fails, each runs
 * alone: the good ones are answered and a failing one gets its own error, naming it; a
 * request of the wrong shape is refused on arrival, alone.
 */
import * as tf from '@tensorflow/tfjs';
import { createActor, type Actor } from 'xstate';
import { runtimeMachine } from '../../actors/runtimeMachine.js';
import { ConfigError, ShapeError, TroupeError, messageOf } from '../errors.js';
import type { CutTensor } from '../compute/partition.js';
import { fromTensor, toTensor } from '../compute/wire.js';
import { busInspector } from '../inspect/busInspector.js';
import { checkJobId, serveScope, serveSubject } from '../protocol/subjects.js';

/** Subject of a runtime's module op (built in protocol/subjects.ts). */
export { serveSubject };
import type { WireMessage, WireTensor } from '../protocol/frame.js';
import type { Bus, BusMessage } from '../transport/bus.js';
import { decodeTensors, encodeError, encodeTensors } from './tensorMessage.js';

/** What a runtime serves: a module's forward (and backward) on batches. */
export interface ModuleBackend {
  readonly name: string;
  /** One example's inputs: shape without the batch dimension, and dtype. */
  readonly inputs: readonly CutTensor[];
  /** Outputs for a batch of inputs (batch-major). */
  forward(inputs: tf.Tensor[]): tf.Tensor[];
  /** Input gradients for a batch of inputs and output gradients. */
  backward?(inputs: tf.Tensor[], gradOutputs: tf.Tensor[]): tf.Tensor[];
  /** Most examples in one batch (default 32). */
  readonly maxBatchSize?: number;
  /** Milliseconds the oldest request may wait for a batch to fill (default 5). */
  readonly maxWaitMs?: number;
  /** Higher runs first when several pools are ready (default: backward 1, forward 0). */
  readonly priority?: number;
}

/** A tf.LayersModel as a module: forward is the model in inference mode, backward its input gradient. */
export function moduleOfModel(name: string, model: tf.LayersModel, opts: Pick<ModuleBackend, 'maxBatchSize' | 'maxWaitMs' | 'priority'> = {}): ModuleBackend {
  const inputs = model.inputs.map((t) => ({ shape: t.shape.slice(1) as number[], dtype: t.dtype as CutTensor['dtype'] }));
  const run = (xs: tf.Tensor[]) => {
    const out = model.apply(xs.length === 1 ? xs[0]! : xs, { training: false }) as tf.Tensor | tf.Tensor[];
    return Array.isArray(out) ? out : [out];
  };
  return {
    name,
    inputs,
    ...opts,
    forward: (xs) => run(xs),
    backward: (xs, dys) => {
      const { value, grads } = tf.engine().gradients(() => tf.addN(run(xs).map((o, i) => tf.sum(tf.mul(o, dys[i]!)))) as tf.Scalar, xs);
      value.dispose();
      return grads;
    },
  };
}

/** Counters of one pool, as hivemind's runtime reports them. */
export interface PoolStats {
  readonly pool: string;
  readonly batches: number;
  readonly examples: number;
  readonly averageBatchSize: number;
  readonly batchesPerSecond: number;
  readonly examplesPerSecond: number;
  /** Requests refused on arrival (wrong shape, malformed). */
  readonly refused: number;
  /** Requests that failed (each alone, after its batch failed, when the batch held several). */
  readonly failed: number;
  /** Batches that failed and were run again request by request. */
  readonly split: number;
  /** Requests waiting for a batch now. */
  readonly queued: number;
}

type Op = 'forward' | 'backward';

interface Waiting {
  readonly msg: BusMessage;
  /** The request's id as its client sent it, or `#<n>` (its arrival in the pool). */
  readonly id: string;
  readonly tensors: WireTensor[];
  readonly rows: number;
  readonly at: number;
}

class TaskPool {
  readonly queue: Waiting[] = [];
  batches = 0;
  examples = 0;
  refused = 0;
  failed = 0;
  split = 0;
  arrived = 0;
  busyMs = 0;

  constructor(
    readonly module: ModuleBackend,
    readonly op: Op,
  ) {}

  get name(): string {
    return `${this.module.name}.${this.op}`;
  }
  get maxBatch(): number {
    return this.module.maxBatchSize ?? 32;
  }
  get maxWait(): number {
    return this.module.maxWaitMs ?? 5;
  }
  get priority(): number {
    return this.module.priority ?? (this.op === 'backward' ? 1 : 0);
  }
  get rows(): number {
    return this.queue.reduce((n, w) => n + w.rows, 0);
  }
  /** When the pool must run at the latest (its oldest request's deadline), or Infinity when empty. */
  get deadline(): number {
    return this.queue.length ? this.queue[0]!.at + this.maxWait : Infinity;
  }
}

export interface ModuleRuntimeOptions {
  readonly bus: Bus;
  /** The runtime's name; runtimes with the same name share requests (a queue group). */
  readonly name: string;
  readonly modules: readonly ModuleBackend[];
  /** Publish the actor's inspection events on troupe.serve-<name>.inspect.runtime. */
  readonly inspect?: boolean;
}

export class ModuleRuntime {
  readonly actor: Actor<typeof runtimeMachine>;
  private readonly pools: TaskPool[] = [];
  private readonly subs: { drain(): Promise<void> }[] = [];
  private readonly started = performance.now();
  private processing = false;
  private timer: NodeJS.Timeout | undefined;
  private stopping: Promise<void> | undefined;
  private drained: (() => void) | undefined;

  private constructor(private readonly o: ModuleRuntimeOptions) {
    checkJobId(o.name);
    const names = new Set<string>();
    for (const m of o.modules) {
      checkJobId(m.name);
      if (names.has(m.name)) throw new ConfigError(`module ${m.name} is listed twice`);
      names.add(m.name);
      if ((m.maxBatchSize ?? 32) < 1) throw new ConfigError(`module ${m.name}: maxBatchSize must be at least 1`);
      this.pools.push(new TaskPool(m, 'forward'));
      if (m.backward) this.pools.push(new TaskPool(m, 'backward'));
    }
    this.actor = createActor(runtimeMachine, {
      input: { name: o.name },
      id: `runtime-${o.name}`,
      ...(o.inspect ? { inspect: busInspector(o.bus, serveScope(o.name), 'runtime') } : {}),
    });
    this.actor.start();
    for (const p of this.pools) this.subs.push(o.bus.subscribe(serveSubject(o.name, p.module.name, p.op), (m) => this.arrive(p, m), 'runtime'));
  }

  /** Starts serving; resolves once the server knows the subscriptions. */
  static async start(o: ModuleRuntimeOptions): Promise<ModuleRuntime> {
    const r = new ModuleRuntime(o);
    await o.bus.flush();
    return r;
  }

  /** A request: checked alone (a wrong one is answered at once), then queued for a batch. */
  private arrive(pool: TaskPool, msg: BusMessage): void {
    try {
      const got = decodeTensors(msg, pool.op);
      if ('error' in got) throw new ShapeError('a request carries tensors, not an error');
      const want = pool.op === 'forward' ? pool.module.inputs.length : pool.module.inputs.length * 2;
      if (got.tensors.length !== want) throw new ShapeError(`${pool.name}: ${got.tensors.length} tensors, expected ${want}`);
      const rows = got.tensors[0]!.shape[0] ?? -1;
      got.tensors.forEach((t, i) => {
        const spec = pool.module.inputs[i];
        if (spec && (t.dtype !== spec.dtype || t.shape.length !== spec.shape.length + 1 || t.shape.slice(1).some((d, k) => d !== spec.shape[k]))) {
          throw new ShapeError(`${pool.name}: input ${i} is ${t.dtype}[${t.shape.join(',')}], expected ${spec.dtype}[n,${spec.shape.join(',')}]`);
        }
        if (t.shape[0] !== rows) throw new ShapeError(`${pool.name}: tensor ${i} has ${t.shape[0]} rows, tensor 0 has ${rows}`);
      });
      if (rows < 1 || rows > pool.maxBatch) throw new ShapeError(`${pool.name}: ${rows} examples in one request; 1 to ${pool.maxBatch} allowed`);
      pool.arrived++;
      pool.queue.push({ msg, id: got.id ?? `#${pool.arrived}`, tensors: got.tensors, rows, at: performance.now() });
      this.pump();
    } catch (err) {
      pool.refused++;
      const e = err instanceof TroupeError ? err : new ShapeError(messageOf(err));
      reply(msg, encodeError(e.code, e.message, pool.op));
    }
  }

  /** Runs the next batch when one is due, else waits for the earliest deadline. */
  private pump(): void {
    if (this.processing) return;
    clearTimeout(this.timer);
    const now = performance.now();
    const flushing = this.stopping !== undefined;
    const ready = this.pools.filter((p) => p.queue.length > 0 && (flushing || p.rows >= p.maxBatch || p.deadline <= now));
    if (ready.length === 0) {
      const next = Math.min(...this.pools.map((p) => p.deadline));
      if (next < Infinity) this.timer = setTimeout(() => this.pump(), Math.max(0, next - now));
      else if (flushing) this.drained?.();
      return;
    }
    ready.sort((a, b) => b.priority - a.priority || a.deadline - b.deadline);
    const pool = ready[0]!;
    const batch: Waiting[] = [];
    let rows = 0;
    while (pool.queue.length && rows + pool.queue[0]!.rows <= pool.maxBatch) {
      const w = pool.queue.shift()!;
      batch.push(w);
      rows += w.rows;
    }
    this.processing = true;
    this.actor.send({ type: 'BATCH_START', pool: pool.name, size: rows });
    // The batch runs on a later turn of the event loop: arrivals meanwhile join the next one.
    setImmediate(() => {
      void this.runBatch(pool, batch, rows).finally(() => {
        this.actor.send({ type: 'BATCH_END' });
        this.processing = false;
        this.pump();
      });
    });
  }

  /**
   * Runs a batch and answers each request. When the batch fails and holds several requests,
   * one of them may be the cause: each then runs alone, so the good ones get their answers
   * and a failing one gets an error naming it (its id, its examples).
   */
  private async runBatch(pool: TaskPool, batch: readonly Waiting[], rows: number): Promise<void> {
    const t0 = performance.now();
    try {
      const outs = await this.compute(pool, batch, rows);
      pool.batches++;
      pool.examples += rows;
      batch.forEach((w, j) => reply(w.msg, encodeTensors(outs[j]!, pool.op)));
    } catch (err) {
      if (batch.length === 1) this.fail(pool, batch[0]!, err, '');
      else {
        pool.split++;
        this.actor.send({ type: 'BATCH_SPLIT', requests: batch.length });
        for (const w of batch) {
          try {
            const [out] = await this.compute(pool, [w], w.rows);
            pool.batches++;
            pool.examples += w.rows;
            reply(w.msg, encodeTensors(out!, pool.op));
          } catch (alone) {
            this.fail(pool, w, alone, ` alone, after its batch of ${batch.length} requests (${rows} examples) failed`);
          }
        }
      }
    }
    pool.busyMs += performance.now() - t0;
  }

  /** The outputs of each request of `batch`, run as one batch of `rows` examples. */
  private async compute(pool: TaskPool, batch: readonly Waiting[], rows: number): Promise<WireTensor[][]> {
    const nIn = pool.module.inputs.length;
    const results = tf.tidy(() => {
      const cat = (k: number) =>
        tf.concat(
          batch.map((w) => toTensor(w.tensors[k]!, undefined, undefined, `${pool.name} input ${k}`)),
          0,
        );
      const xs = Array.from({ length: nIn }, (_, k) => cat(k));
      const ys =
        pool.op === 'forward'
          ? pool.module.forward(xs)
          : pool.module.backward!(
              xs,
              Array.from({ length: nIn }, (_, k) => cat(nIn + k)),
            );
      return ys.map((y) => (y.shape[0] === rows ? y : tf.broadcastTo(y, [rows, ...y.shape.slice(1)])));
    });
    // Split each output by request, in arrival order.
    try {
      const parts = results.map((y) =>
        tf.split(
          y,
          batch.map((w) => w.rows),
          0,
        ),
      );
      try {
        return await Promise.all(batch.map((_, j) => Promise.all(parts.map((p, i) => fromTensor(p[j]!, `y${i}`)))));
      } finally {
        tf.dispose(parts);
      }
    } finally {
      tf.dispose(results);
    }
  }

  /** Answers request `w` with its failure, naming it. */
  private fail(pool: TaskPool, w: Waiting, err: unknown, how: string): void {
    pool.failed++;
    const code = err instanceof TroupeError ? err.code : 'REQUEST_FAILED';
    const examples = `${w.rows} example${w.rows === 1 ? '' : 's'}`;
    reply(w.msg, encodeError(code, `${pool.name}: request ${w.id} (${examples}) failed${how}: ${messageOf(err)}`, pool.op));
  }

  /** Per-pool counters (rates over the runtime's lifetime). */
  stats(): PoolStats[] {
    const s = (performance.now() - this.started) / 1000;
    return this.pools.map((p) => ({
      pool: p.name,
      batches: p.batches,
      examples: p.examples,
      averageBatchSize: p.batches ? p.examples / p.batches : 0,
      batchesPerSecond: p.batches / s,
      examplesPerSecond: p.examples / s,
      refused: p.refused,
      failed: p.failed,
      split: p.split,
      queued: p.queue.length,
    }));
  }

  /** Graceful shutdown: takes no new requests, serves every queued one, then stops. */
  stop(): Promise<void> {
    this.stopping ??= (async () => {
      this.actor.send({ type: 'STOP' });
      await Promise.all(this.subs.map((s) => s.drain()));
      await new Promise<void>((resolve) => {
        this.drained = resolve;
        this.pump();
      });
      clearTimeout(this.timer);
      this.actor.send({ type: 'DRAINED' });
      this.actor.stop();
    })();
    return this.stopping;
  }
}

/** Answers a request; a connection that closed meanwhile leaves the requester to its timeout. */

function reply(msg: BusMessage, r: WireMessage): void {
  msg.respond(r.data, r.headers);
}
