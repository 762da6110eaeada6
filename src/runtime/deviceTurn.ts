/**
 * Turn-taking for stages that share a device (virtual stages on one worker): each action
 * carries its position in the device's order (from the step plan) and runs only when every
 * earlier action of that order has run, as interleaved schedules intend. Stages that have
 * their own device never wait.
 */
import { StateError } from '../errors.js';

export class DeviceTurn {
  private step = -1;
  private next = 0;
  private readonly waiting = new Map<number, { resolve: () => void; reject: (e: Error) => void }>();

  /** Resolves when position `pos` of step `step`'s device order is next. A later step starts a fresh order. */
  take(step: number, pos: number): Promise<void> {
    if (step < this.step) return Promise.reject(new StateError(`device turn for step ${step}, which is over (now ${this.step})`));
    if (step > this.step) this.begin(step);
    if (pos === this.next) return Promise.resolve();
    if (pos < this.next) return Promise.reject(new StateError(`device position ${pos} of step ${step} came after position ${this.next - 1} ran`));
    return new Promise((resolve, reject) => this.waiting.set(pos, { resolve, reject }));
  }

  /** Marks position `pos` of step `step` done; the next position may run. */
  done(step: number, pos: number): void {
    if (step !== this.step || pos !== this.next) return;
    this.next = pos + 1;
    const w = this.waiting.get(this.next);
    if (w) {
      this.waiting.delete(this.next);
      w.resolve();
    }
  }

  /** Gives up the order of step `step` (an aborted step): every waiter fails. */
  abort(step: number): void {
    if (step < this.step) return;
    this.begin(step + 1);
  }

  private begin(step: number): void {
    for (const [pos, w] of this.waiting) w.reject(new StateError(`device turn ${pos} of step ${this.step} given up: step ${step} began`));
    this.waiting.clear();
    this.step = step;
    this.next = 0;
  }
}
