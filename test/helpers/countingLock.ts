/** A counting lock: resolves once `count()` was called n times, fails on timeout. */
export function countingLock(n: number): { count(): void; wait(timeoutMs: number): Promise<void> } {
  let left = n;
  let release!: () => void;
  const done = new Promise<void>((r) => (release = r));
  return {
    count() {
      if (--left === 0) release();
    },
    async wait(timeoutMs) {
      let timer: NodeJS.Timeout | undefined;
      const timeout = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`counting lock: ${left} of ${n} counts missing after ${timeoutMs} ms`)), timeoutMs);
      });
      try {
        await Promise.race([done, timeout]);
      } finally {
        clearTimeout(timer);
      }
    },
  };
}
