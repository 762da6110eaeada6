/** The errors a task pool raises: a task that did not get its output, and a value JSON cannot carry. */
import { TroupeError } from '../errors.js';

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
