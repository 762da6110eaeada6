/**
 * What the scheduler sends the stages besides requests: a step's INPUT frames (by hand to a
 * stage of this process, else on the bus), chained so that microbatches go out in order even
 * when a publish waits for the server, and UPDATE. A failed send is handed to `failed`.
 */
import { encodeKeyOnly, type Frame } from '../protocol/frame.js';
import { Phase } from '../protocol/phase.js';
import { stageSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import { sendFrame } from './localStages.js';

export class SchedulerSends {
  private feeding: Promise<void> = Promise.resolve();

  constructor(
    private readonly bus: Bus,
    private readonly job: string,
    private readonly failed: (step: number, err: unknown) => void,
  ) {}

  /** Sends the INPUT frames of a microbatch of step `step` (made when their turn comes), after those sent before. */
  feed(step: number, inputs: () => readonly { readonly rank: number; readonly frame: Frame }[]): void {
    this.feeding = this.feeding
      .then(async () => {
        for (const { rank, frame } of inputs()) await sendFrame(this.bus, this.job, rank, Phase.INPUT, frame);
      })
      .catch((err: unknown) => this.failed(step, err));
  }

  /** Publishes UPDATE of `step` to stage `rank`. */
  update(step: number, rank: number): void {
    const m = encodeKeyOnly({ job: this.job, step, microbatch: 0, phase: Phase.UPDATE }, 'sched');
    void this.bus.publish(stageSubject(this.job, rank, Phase.UPDATE), m.data, m.headers).catch((err: unknown) => this.failed(step, err));
  }

  /** Resolves once every INPUT frame handed to `feed` so far is sent (or failed). */
  settled(): Promise<void> {
    return this.feeding;
  }
}
