/** One task of a Pool while it is out: its input, its offers, and what its workers said of it. */
import type { CallerEvent, OfferReply } from './poolProtocol.js';

/** A task that a worker started: the worker, and the offer it started. */
export type Started = OfferReply & { readonly offer: number };

export class TaskRun {
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
    /** The input as JSON text. */
    readonly input: string,
  ) {}
}
