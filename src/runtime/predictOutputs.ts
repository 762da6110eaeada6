/** A prediction's outputs: the last stage's frames on `troupe.<job>.output` (sealed by it), kept by step and microbatch until taken. */
import { ForgedFrameError, TransportError, UnexpectedFrameError } from '../errors.js';
import type { Frame } from '../protocol/frame.js';
import { Phase } from '../protocol/phase.js';
import { checkSeal } from '../protocol/seal.js';
import { outputSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import type { FrameSubscription } from '../transport/subscribeFrames.js';

export class PredictOutputs {
  private readonly frames = new Map<number, Map<number, Frame>>();
  private readonly sub: FrameSubscription;

  /** `lastKey()`: the last stage's seal key, null while unknown (an output is then refused). */
  constructor(bus: Bus, job: string, maxBytes: number, lastKey: () => Uint8Array | null, onRefuse: () => void) {
    this.sub = bus.subscribeFrames(outputSubject(job), {
      maxBytes,
      phase: Phase.FORWARD,
      admit: (h, m) => {
        if (h.key.job !== job) return new UnexpectedFrameError(`output of job ${h.key.job}`);
        const key = lastKey();
        if (!key || !checkSeal(h, m.subject, key)) return new ForgedFrameError(`output ${h.key.step}/${h.key.microbatch} does not carry the last stage's seal`);
        return null;
      },
      onFrame: (f) => {
        const byMb = this.frames.get(f.key.step) ?? new Map<number, Frame>();
        byMb.set(f.key.microbatch, f);
        this.frames.set(f.key.step, byMb);
      },
      onRefuse,
    });
  }

  /** The output frames of predict step `step`, in microbatch order (and forgets them). */
  take(step: number, microbatches: number): Frame[] {
    const byMb = this.frames.get(step);
    this.frames.delete(step);
    const frames = Array.from({ length: microbatches }, (_, mb) => byMb?.get(mb));
    const missing = frames.flatMap((f, mb) => (f ? [] : [mb]));
    if (missing.length) throw new TransportError(`step ${step}: the outputs of microbatches ${missing.join(', ')} did not arrive`);
    return frames as Frame[];
  }

  /** A failed step's outputs will not be taken: they go, and partial frames of steps up to it too. */
  forget(step: number): void {
    for (const s of [...this.frames.keys()]) if (s <= step) this.frames.delete(s);
    this.sub.keepOnly(step + 1);
  }

  drain(): Promise<void> {
    return this.sub.drain();
  }
}
