/**
 * Gradient all-reduce between the data-parallel replicas of one stage, over NATS. At each
 * step's update every replica publishes its accumulated gradients on
 * `troupe.<group>.allreduce.<rank>` (keyed by step and replica, as distributed autograd keeps
 * gradients per context) and sums all replicas' in replica order, so every replica gets the
 * same bits and applies the same update.
 */
import { StateError, StepTimeoutError, UnexpectedFrameError } from '../errors.js';
import type { Frame, WireTensor } from '../protocol/frame.js';
import { Phase } from '../protocol/phase.js';
import { allReduceSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import { deferred, type Deferred } from './deferred.js';

export interface AllReduceOptions {
  readonly bus: Bus;
  /** The job all replicas belong to. */
  readonly group: string;
  readonly rank: number;
  readonly replica: number;
  readonly replicas: number;
  /** Milliseconds to wait for every replica's gradients (default 120 s). */
  readonly timeoutMs?: number;
  /** Largest gradients frame taken, in bytes (default 4 GiB). */
  readonly maxFrameBytes?: number;
}

export class AllReduce {
  private readonly got = new Map<number, Map<number, Frame>>();
  private readonly waiting = new Map<number, Deferred<void>>();
  private readonly sub: { drain(): Promise<void> };
  /** Frames refused (malformed, foreign, oversize): not ones of ours. */
  refused = 0;

  private constructor(private readonly o: AllReduceOptions) {
    this.sub = o.bus.subscribeFrames(allReduceSubject(o.group, o.rank), {
      maxBytes: o.maxFrameBytes ?? 4 * 1024 * 1024 * 1024,
      phase: Phase.UPDATE,
      // Every replica's gradients of a step arrive together (and a fast replica's of the next): room for all.
      maxPartial: Math.max(64, 4 * o.replicas),
      maxPendingBytes: 16 * 1024 * 1024 * 1024,
      admit: (h) => (h.key.job !== o.group ? new UnexpectedFrameError(`gradients of job ${h.key.job}, not ${o.group}`) : null),
      onFrame: (f) => this.take(f),
      onRefuse: () => this.refused++,
    });
  }

  static async start(o: AllReduceOptions): Promise<AllReduce> {
    const a = new AllReduce(o);
    await o.bus.flush();
    return a;
  }

  private take(f: Frame): void {
    const replica = f.key.microbatch;
    if (replica < 0 || replica >= this.o.replicas) return;
    const byReplica = this.got.get(f.key.step) ?? new Map<number, Frame>();
    if (byReplica.has(replica)) return; // a duplicate
    byReplica.set(replica, f);
    this.got.set(f.key.step, byReplica);
    if (byReplica.size === this.o.replicas) this.waiting.get(f.key.step)?.resolve();
  }

  /** The sum over every replica of `grads` (this replica's), for step `step`. */
  async reduce(step: number, grads: readonly WireTensor[]): Promise<WireTensor[]> {
    const d = deferred<void>();
    d.promise.catch(() => {}); // a cancel while publishing is seen in the race below
    this.waiting.set(step, d);
    await this.o.bus.publishFrame(allReduceSubject(this.o.group, this.o.rank), {
      key: { job: this.o.group, step, microbatch: this.o.replica, phase: Phase.UPDATE },
      from: `replica.${this.o.replica}`,
      tensors: [...grads],
    });
    if ((this.got.get(step)?.size ?? 0) === this.o.replicas) d.resolve();
    let timer: NodeJS.Timeout | undefined;
    try {
      await Promise.race([
        d.promise,
        new Promise<never>((_, reject) => {
          timer = setTimeout(
            () =>
              reject(
                new StepTimeoutError(
                  `stage ${this.o.rank}: gradients of ${this.o.replicas - (this.got.get(step)?.size ?? 0)} replicas missing for step ${step}`,
                ),
              ),
            this.o.timeoutMs ?? 120_000,
          );
        }),
      ]);
    } finally {
      clearTimeout(timer);
      this.waiting.delete(step);
    }
    const frames = this.got.get(step)!;
    this.got.delete(step);
    for (const s of [...this.got.keys()]) if (s < step) this.got.delete(s);
    // Summed in replica order: the same additions, in the same order, on every replica.
    return grads.map((g, i) => {
      const sum = new Float32Array(g.data.length);
      for (let r = 0; r < this.o.replicas; r++) {
        const t = frames.get(r)!.tensors[i];
        if (!t || t.data.length !== sum.length) throw new StateError(`replica ${r} sent gradient ${i} of another shape`);
        const src = t.data as Float32Array;
        for (let k = 0; k < sum.length; k++) sum[k]! += src[k]!;
      }
      return { name: g.name, dtype: 'float32' as const, shape: g.shape, data: sum };
    });
  }

  /**
   * Gives up waiting for step `step` (it was aborted: a replica failed and will send no
   * gradients): its `reduce` rejects and what arrived of the step is dropped. A reduce that
   * already has every replica's gradients is not taken back.
   */
  cancel(step: number): void {
    if ((this.got.get(step)?.size ?? 0) === this.o.replicas) return;
    this.waiting.get(step)?.reject(new StateError(`stage ${this.o.rank}: the all-reduce of step ${step} was cancelled (the step was aborted)`));
    this.got.delete(step);
  }

  async close(): Promise<void> {
    await this.sub.drain();
  }
}
