/** The key of a pipeline message: (job, step, microbatch, phase). */
import type { Phase } from './phase.js';

/**
 * Identifies one message of one step. The step is the batch context (as a distributed
 * autograd context id): a key of an older step, or one seen twice, is refused.
 */
export interface Key {
  readonly job: string;
  readonly step: number;
  readonly microbatch: number;
  readonly phase: Phase;
}

/** `job/step/mb/phase`, the form used in errors, logs and maps. */
export function formatKey(k: Key): string {
  return `${k.job}/${k.step}/${k.microbatch}/${k.phase}`;
}

/** The per-step part of a key, unique within one stage's step: `PHASE:mb`. */
export function slotOf(phase: Phase, microbatch: number): string {
  return `${phase}:${microbatch}`;
}
