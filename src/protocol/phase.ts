/** The kinds of frames: the four phases of a pipeline message, and a stage's state. */

/**
 * Phases of pipeline messages: INPUT (data and labels from the scheduler), FORWARD
 * (activations to the next stage), BACKWARD (gradients to the previous stage) and UPDATE
 * (apply accumulated gradients and reset). STATE is no phase of a step: the frame of a
 * stage's weights and optimizer state (loads, dumps, checkpoints).
 *
 * @example
 * if (key.phase === Phase.FORWARD) { ... }
 */
export const Phase = {
  INPUT: 'INPUT',
  FORWARD: 'FORWARD',
  BACKWARD: 'BACKWARD',
  UPDATE: 'UPDATE',
  STATE: 'STATE',
} as const;
export type Phase = (typeof Phase)[keyof typeof Phase];

const PHASES = new Set<string>(Object.values(Phase));

/** True when `s` names a phase. */
export function isPhase(s: string): s is Phase {
  return PHASES.has(s);
}
