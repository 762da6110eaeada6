/**
 * What the scheduler host keeps for an inspector that joins late (its answer to `who`): the
 * running (or last) step's shape, and the stage errors, step failures and refused frames it
 * heard, counted, with the first and the latest few.
 */
import type { ErrorEvent, RejectEvent } from '../protocol/messages.js';
import type { StatelyActorEvent } from '../inspect/statelyEvents.js';
import type { StepShape } from '../inspect/rollCall.js';

export class SchedulerPresence {
  /** The latest frames the stages refused (at most 100), newest last. */
  readonly lastRejects: RejectEvent[] = [];
  private rejects = 0;
  private errors = { count: 0, first: null as ErrorEvent | null, latest: [] as ErrorEvent[] };
  private shape: StepShape | undefined;

  keepError(e: ErrorEvent): void {
    this.errors.count++;
    this.errors.first ??= e;
    this.errors.latest.push(e);
    if (this.errors.latest.length > 20) this.errors.latest.shift();
  }

  /** Whether an error of `step` with this key and code was kept already (a stage's own, as it came). */
  hasError(step: number, key: string, code: string): boolean {
    return this.errors.latest.some((e) => e.step === step && e.key === key && e.code === code);
  }

  keepReject(e: RejectEvent): void {
    this.lastRejects.push(e);
    if (this.lastRejects.length > 100) this.lastRejects.shift();
    this.rejects++;
  }

  /** A step starts; true when its shape changed, so that inspectors learn it (for its theoretical bubble). */
  stepShape(shape: StepShape): boolean {
    const changed = this.shape?.microbatches !== shape.microbatches;
    this.shape = shape;
    return changed;
  }

  /** The answer to `who`, with the actors' announcements. */
  answer(actors: readonly StatelyActorEvent[]) {
    return {
      actors,
      ...(this.shape ? { shape: this.shape } : {}),
      errors: { ...this.errors, latest: [...this.errors.latest] },
      rejects: { count: this.rejects, latest: this.lastRejects.slice(-20) },
    };
  }
}
