/**
 * A stage's counters: where its time goes (busy, idle, machine, frames), what it computed, and
 * what it refused; published after every step (`stats.<rank>`) and answered to `ctl.<r>.stats`.
 */
import * as tf from '@tensorflow/tfjs';
import type { StatsMessage } from '../protocol/messages.js';
import type { Bus } from '../transport/bus.js';

export class StageCounters {
  /** Compute, publishing frames, the update. */
  busyMs = 0;
  /** The rest of the time inside steps. */
  idleMs = 0;
  /** The stage machine handling the host's events (the update it runs excepted). */
  machineMs = 0;
  /** Judging and assembling frames outside the machine. */
  framesMs = 0;
  forwards = 0;
  backwards = 0;
  weightGrads = 0;
  peakHeld = 0;
  /** Frames refused before they reached the machine (bad headers, chunks, seals). */
  refusedOnArrival = 0;
  /** Frames that conflicted with the one held for their slot (each failed its step). */
  conflicts = 0;
  private stepStartedAt = 0;
  private busyAtStepStart = 0;

  /** A step begins: its idle time counts from now. */
  stepBegins(): void {
    this.stepStartedAt = performance.now();
    this.busyAtStepStart = this.busyMs;
  }

  /** The stage finished its list: the step's time not busy was idle. */
  stepDone(peakHeld: number): void {
    this.peakHeld = Math.max(this.peakHeld, peakHeld);
    this.idleMs += performance.now() - this.stepStartedAt - (this.busyMs - this.busyAtStepStart);
  }

  /** Host time so far (machine and frames), which an action's own timings leave out. */
  get hostMs(): number {
    return this.machineMs + this.framesMs;
  }

  /** Runs `send` (an event to the stage machine), adding its time to machineMs less what it counted busy (an update runs inside the event). */
  timed(send: () => void): void {
    const t0 = performance.now();
    const busy = this.busyMs;
    send();
    this.machineMs += performance.now() - t0 - (this.busyMs - busy);
  }

  /** Runs the handling of one received frame, adding its time outside the machine (and the update it ran) to framesMs. */
  timedFrames(handle: () => void): void {
    const t0 = performance.now();
    const before = this.machineMs + this.busyMs;
    handle();
    this.framesMs += performance.now() - t0 - (this.machineMs + this.busyMs - before);
  }

  /** The counters as published, with the machine's step and refusals and the bus's bytes. */
  stats(rank: number, step: number, machineRejected: number, bus: Bus): StatsMessage {
    const direct = bus.directCounters;
    return {
      rank,
      step,
      busyMs: this.busyMs,
      idleMs: this.idleMs,
      forwards: this.forwards,
      backwards: this.backwards,
      weightGrads: this.weightGrads,
      bytesIn: bus.bytesIn,
      bytesOut: bus.bytesOut,
      peakHeld: this.peakHeld,
      rejected: machineRejected + this.refusedOnArrival,
      conflicts: this.conflicts,
      tensors: tf.memory().numTensors,
      machineMs: this.machineMs,
      framesMs: this.framesMs,
      ...(direct ? { directBytesIn: direct.bytesIn, directBytesOut: direct.bytesOut } : {}),
    };
  }
}
