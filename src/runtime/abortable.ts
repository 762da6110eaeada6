/** Waiting that an AbortSignal cuts short: a stopped actor's work ends at its next wait. */
import { InterruptedError } from '../errors.js';

/** Throws an InterruptedError when `signal` has aborted. */
export function unlessAborted(signal: AbortSignal | undefined): void {
  if (signal?.aborted) throw new InterruptedError(`abandoned: ${String(signal.reason ?? 'aborted')}`);
}

/**
 * `work`, or an InterruptedError as soon as `signal` aborts (the work goes on unwatched; its
 * failure is ignored).
 */
export function abortable<T>(work: Promise<T>, signal: AbortSignal | undefined): Promise<T> {
  if (!signal) return work;
  work.catch(() => {});
  if (signal.aborted) return Promise.reject(new InterruptedError(`abandoned: ${String(signal.reason ?? 'aborted')}`));
  return new Promise<T>((resolve, reject) => {
    const onAbort = () => reject(new InterruptedError(`abandoned: ${String(signal.reason ?? 'aborted')}`));
    signal.addEventListener('abort', onAbort, { once: true });
    work.then(
      (v) => {
        signal.removeEventListener('abort', onAbort);
        resolve(v);
      },
      (err: unknown) => {
        signal.removeEventListener('abort', onAbort);
        // eslint-disable-next-line @typescript-eslint/prefer-promise-reject-errors -- the work's own rejection, passed on unchanged
        reject(err);
      },
    );
  });
}

/** A promise that rejects when `signal` aborts (never resolves): for APIs that take a failure to race. */
export function aborted(signal: AbortSignal): Promise<never> {
  const p = new Promise<never>((_, reject) => {
    const fail = () => reject(new InterruptedError(`abandoned: ${String(signal.reason ?? 'aborted')}`));
    if (signal.aborted) fail();
    else signal.addEventListener('abort', fail, { once: true });
  });
  p.catch(() => {});
  return p;
}
