/** Training steps called one ahead: the next step's plan and first inputs go out while this one runs. */
import type { StepResult } from '../runtime/stepRunner.js';

/**
 * Runs steps in order, starting step s + 1 while step s runs when asked to (the scheduler
 * queues it and begins it early). A step begun ahead that is not wanted any more (a recovery)
 * is dropped: it fails with the step before it, and `drop` waits until it has.
 */
export class StepFeed {
  private ahead: { readonly step: number; readonly run: Promise<StepResult> } | null = null;

  constructor(private readonly start: (step: number) => Promise<StepResult>) {}

  /** Step `step` (begun ahead already, or now); with `next`, step + 1 begins too. */
  run(step: number, next: boolean): Promise<StepResult> {
    const current = this.ahead?.step === step ? this.ahead.run : this.start(step);
    // A step begun ahead for another step number (after a recovery) is not this one.
    const stale = this.ahead && this.ahead.step !== step ? this.ahead.run : null;
    stale?.catch(() => {});
    this.ahead = null;
    if (next) {
      const run = this.start(step + 1);
      run.catch(() => {}); // a failure of `step` drops it; that step's error is the one reported
      this.ahead = { step: step + 1, run };
    }
    return current;
  }

  /** Forgets the step begun ahead, once it has ended (it fails when the step before it does). */
  async drop(): Promise<void> {
    const a = this.ahead;
    this.ahead = null;
    await a?.run.then(
      () => {},
      () => {},
    );
  }
}
