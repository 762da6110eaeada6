/** Troupe's named errors: one class per failure, each with a stable `code` and an optional `cause`. */

/** Base class of every error Troupe throws or sends between actors. */
export class TroupeError extends Error {
  /** A stable, machine-readable name of the failure. */
  readonly code: string;
  constructor(code: string, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = new.target.name;
    this.code = code;
  }
}

/** A received frame is malformed: bad header, wrong byte length, unknown phase or dtype, oversize. */
export class FrameError extends TroupeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('FRAME', message, options);
  }
}

/** A frame belongs to a step that is already over. */
export class StaleStepError extends TroupeError {
  constructor(message: string) {
    super('STALE_STEP', message);
  }
}

/** A frame repeats a key that was already received in this step. */
export class DuplicateKeyError extends TroupeError {
  constructor(message: string) {
    super('DUPLICATE_KEY', message);
  }
}

/**
 * A frame repeats a key whose frame the stage holds, with other bytes: one of the two is not
 * what its sender computed, and the stage cannot tell which. Neither is kept; the step fails.
 */
export class ConflictingFrameError extends TroupeError {
  constructor(message: string) {
    super('CONFLICTING_FRAME', message);
  }
}

/** A frame does not carry its sender's seal (a keyed hash over its headers): not from the stage it claims to be from. */
export class ForgedFrameError extends TroupeError {
  constructor(message: string) {
    super('FORGED_FRAME', message);
  }
}

/** A frame arrived that this stage has no use for (wrong stage, microbatch out of range, wrong phase). */
export class UnexpectedFrameError extends TroupeError {
  constructor(message: string) {
    super('UNEXPECTED_FRAME', message);
  }
}

/** A tensor's shape or dtype does not match what the receiving stage expects. */
export class ShapeError extends TroupeError {
  constructor(message: string) {
    super('SHAPE', message);
  }
}

/** Invalid configuration passed by the user (pipeline options, stage boundaries, loss names). */
export class ConfigError extends TroupeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('CONFIG', message, options);
  }
}

/** A model cannot be cut into the requested stages. */
export class PartitionError extends TroupeError {
  constructor(message: string) {
    super('PARTITION', message);
  }
}

/** A schedule would deadlock, misses an action or breaks a dependency. */
export class ScheduleError extends TroupeError {
  constructor(message: string) {
    super('SCHEDULE', message);
  }
}

/** The NATS connection failed or a request got no answer. */
export class TransportError extends TroupeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('TRANSPORT', message, options);
  }
}

/** A stage's computation failed; `key` names the action's message key. */
export class StageError extends TroupeError {
  readonly rank: number;
  readonly key: string;
  /** The stage's own error code (e.g. SHAPE, NATS_RECONNECT), when it reported one. */
  readonly reason: string | undefined;
  constructor(rank: number, key: string, message: string, options?: { cause?: unknown; reason?: string }) {
    super('STAGE', `stage ${rank} failed at ${key}: ${message}`, options);
    this.rank = rank;
    this.key = key;
    this.reason = options?.reason;
  }
}

/** A step made no progress before its deadline. */
export class StepTimeoutError extends TroupeError {
  constructor(message: string) {
    super('STEP_TIMEOUT', message);
  }
}

/** A message arrived in a state that cannot take it (for example a step while another runs). */
export class StateError extends TroupeError {
  constructor(message: string, options?: { cause?: unknown }) {
    super('STATE', message, options);
  }
}

/** Turns anything thrown into a message string. */
export function messageOf(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}

/** A checkpoint is missing, incomplete, corrupt, does not fit the model, or cannot be written. */
export class CheckpointError extends TroupeError {
  /** The step being saved, when a save failed. */
  readonly step: number | undefined;
  /** The file or directory that could not be read or written, when one is known. */
  readonly path: string | undefined;
  constructor(message: string, options?: { cause?: unknown; step?: number; path?: string }) {
    super('CHECKPOINT', message, options);
    this.step = options?.step;
    this.path = options?.path;
  }
}

/** The run was interrupted (Ctrl-C). */
export class InterruptedError extends TroupeError {
  constructor(message: string) {
    super('INTERRUPTED', message);
  }
}

/** A command line that cannot run: wrong flags or values. */
export class UsageError extends TroupeError {
  constructor(message: string) {
    super('USAGE', message);
  }
}

/**
 * Why a task has no output: `failed` (the task threw; `remote` is its error), `timeout` (it
 * ran past the pool's `timeoutMs` and was stopped), `lost` (its worker died or fell silent
 * more often than `retries` allows), `unserved` (no worker of the pool was up for
 * `waitForWorkerMs`), `closed` (the pool was closed first).
 */
export type PoolTaskReason = 'failed' | 'timeout' | 'lost' | 'unserved' | 'closed';

/** A task got no output: the input's index, why, and (when a worker answered) the worker and its error. */
export class PoolTaskError extends TroupeError {
  constructor(
    readonly index: number,
    readonly reason: PoolTaskReason,
    message: string,
    /** The worker that ran it last ('' when none did). */
    readonly worker = '',
    /** The task's own error, when it threw. */
    readonly remote?: { readonly name: string; readonly message: string },
  ) {
    super(reason === 'timeout' ? 'POOL_TIMEOUT' : 'POOL_TASK', message);
  }

  /** The task threw in `worker`. */
  static failed(index: number, worker: string, remote: { name: string; message: string }): PoolTaskError {
    return new PoolTaskError(index, 'failed', `task ${index} failed in worker ${worker}: ${remote.name}: ${remote.message}`, worker, remote);
  }
}

/**
 * A task's input (or output) that JSON cannot carry as it is: `index` names the task, `path`
 * the place in the value (`input.points[2]`), `problem` what is wrong there ("is NaN; ...").
 */
export class PoolValueError extends TroupeError {
  constructor(
    readonly index: number,
    readonly path: string,
    readonly problem: string,
  ) {
    super('POOL_VALUE', `task ${index}: ${path} ${problem}`);
  }
}

/** A module runtime refused a request or its batch failed: the runtime's code and message. */
export class ServeError extends TroupeError {}
