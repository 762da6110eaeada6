/**
 * Places a Pool's tasks on workers with a free slot. Tasks wait oldest first; offers go out
 * `window` at a time: it grows while workers take them and falls to one when one is refused,
 * so a free slot does not draw a storm of offers. A busy answer (a worker that filled up as
 * the offer reached it) is offered again at once. When no worker has room (no responders in
 * the queue group), placing pauses until a task of this pool ends (its worker has a slot
 * again) or, for room that other callers or new workers make, for a while that grows from 10
 * to 250 ms; a `present` request tells "every worker is full" from "no worker is up", and a
 * task that has waited `waitForWorkerMs` with no worker up fails as unserved.
 */
import type { Bus } from '../transport/bus.js';
import { PoolTaskError } from '../errors.js';
import { encodeJson } from '../protocol/messages.js';
import { decodeOfferReply, encodeWithValue, poolPresenceSubject, poolTaskSubject, type Offer, type OfferReply } from './poolProtocol.js';
import type { Started, TaskRun } from './taskRun.js';

/** How long a "some worker is up" answer is trusted. */
const PRESENCE_MS = 500;
/** Most offers out at once. */
const MAX_OFFERS = 8;

export interface PlacerOptions {
  readonly bus: Bus;
  readonly name: string;
  /** The caller's token. */
  readonly cid: string;
  readonly timeoutMs: number;
  readonly heartbeatMs: number;
  /** An offer no worker answers within this is presumed to have reached a dead worker. */
  readonly silentMs: number;
  readonly waitForWorkerMs: number;
  /** A new offer of task `t`: its worker's messages carry this number. */
  onOffer(offer: number, t: TaskRun): void;
  /** Tell the workers to stop the run of `offer` (an offer nobody answered may have started). */
  cancel(offer: number): void;
}

/** A task waiting to be placed on a worker. */
interface Placing {
  readonly t: TaskRun;
  /** When it began to wait. */
  readonly since: number;
  resolve(started: Started | null): void;
  reject(err: unknown): void;
}

export class Placer {
  private offerSeq = 0;
  private readonly toPlace: Placing[] = [];
  private offering = 0;
  private window = 1;
  private paused: NodeJS.Timeout | null = null;
  private pauseMs = 0;
  /** Since when no worker of the pool has been up at all (null: one is). */
  private nobodySince: number | null = null;
  private presence: { at: number; up: Promise<boolean> } | null = null;
  private closed = false;

  constructor(private readonly o: PlacerOptions) {}

  /** A worker that started task `t` (null: the placer closed, or `t` was answered meanwhile: see `answered`). */
  place(t: TaskRun): Promise<Started | null> {
    return new Promise<Started | null>((resolve, reject) => {
      this.toPlace.push({ t, since: performance.now(), resolve, reject });
      this.dispatch();
    });
  }

  /** Task `t` got its answer while it waited to be placed again: it needs no worker now. */
  answered(t: TaskRun): void {
    const i = this.toPlace.findIndex((w) => w.t === t);
    if (i >= 0) this.toPlace.splice(i, 1)[0]!.resolve(null);
  }

  /** A task of this pool ended: its worker has a slot free, so placing goes on now. */
  roomFreed(): void {
    if (this.paused !== null) this.resume();
  }

  /** Every waiting task gets null; nothing more is offered. */
  close(): void {
    this.closed = true;
    for (const p of this.toPlace.splice(0)) p.resolve(null);
    if (this.paused !== null) clearTimeout(this.paused);
  }

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
    this.o.onOffer(offer, t);
    const head: Offer = { caller: this.o.cid, offer, index: t.index, timeoutMs: Math.ceil(this.o.timeoutMs), heartbeatMs: Math.ceil(this.o.heartbeatMs) };
    let reply: OfferReply | null = null;
    try {
      // A worker answers at once; one that does not within silentMs is presumed dead (it may have started the task: cancelled below).
      reply = decodeOfferReply(await this.o.bus.request(poolTaskSubject(this.o.name), encodeWithValue(head, t.input), this.o.silentMs));
    } catch (err) {
      if ((err as { cause?: { isNoResponders?: () => boolean } }).cause?.isNoResponders?.() !== true) this.o.cancel(offer);
    }
    if (reply?.started) {
      this.pauseMs = 0;
      this.window = Math.min(MAX_OFFERS, this.window + 1);
      return req.resolve({ ...reply, offer });
    }
    if (this.closed || t.early) return req.resolve(null);
    this.toPlace.unshift(req);
    this.window = 1;
    if (reply) {
      this.nobodySince = null;
      return; // busy: offered again at once
    }
    if (await this.anyoneUp()) this.nobodySince = null;
    else {
      this.nobodySince ??= performance.now();
      const limit = this.o.waitForWorkerMs;
      const now = performance.now();
      for (const w of this.toPlace.filter((w) => now - Math.max(w.since, this.nobodySince!) >= limit)) {
        this.toPlace.splice(this.toPlace.indexOf(w), 1);
        w.reject(new PoolTaskError(w.t.index, 'unserved', `task ${w.t.index}: no worker of pool ${this.o.name} was up for ${limit} ms`));
      }
    }
    this.pause();
  }

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

  /** Whether any worker of the pool is up, full or not (asked at most every PRESENCE_MS). */
  private anyoneUp(): Promise<boolean> {
    const now = performance.now();
    if (!this.presence || now - this.presence.at > PRESENCE_MS) {
      const up = this.o.bus.request(poolPresenceSubject(this.o.name), encodeJson({}), 1_000).then(
        () => true,
        () => false,
      );
      this.presence = { at: now, up };
    }
    return this.presence.up;
  }
}
