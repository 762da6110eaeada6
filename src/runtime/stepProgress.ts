/**
 * What the scheduler host hears of a step's progress: each stage's actions reported done
 * (ACTION events, most of which never reach the machine: each transition costs the driver
 * 0.2-0.3 ms here) and when an action last ended. The liveness watch hands it to the machine
 * at each heartbeat; `report()` draws the grid from it.
 */
import type { StepProgress } from '../../actors/liveness.js';

export class StepProgressTracker {
  private readonly ranBy = new Map<number, Set<string>[]>();
  private running = -1;
  private lastAction = 0;

  constructor(private readonly stages: number) {}

  /** Step `step` was called: its actions are followed from now (a step begun early reports some before it starts). */
  open(step: number): void {
    this.ranBy.set(
      step,
      Array.from({ length: this.stages }, () => new Set<string>()),
    );
  }

  /** Step `step` starts: its progress is counted from now. */
  start(step: number): void {
    this.running = step;
    this.lastAction = performance.now();
  }

  /** Step `step` is over. */
  close(step: number): void {
    this.ranBy.delete(step);
  }

  /** Stage `rank` reported `action` of `step` done. */
  note(rank: number, step: number, action: string): void {
    const ran = this.ranBy.get(step)?.[rank];
    if (!ran) return;
    ran.add(action);
    if (step === this.running) this.lastAction = performance.now();
  }

  /** The running step's progress. */
  progress(): StepProgress {
    return { lastAction: this.lastAction, ran: (this.ranBy.get(this.running) ?? []).map((s) => [...s]) };
  }
}
