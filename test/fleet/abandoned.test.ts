/**
 * `runJob` in this process, ended while one of its actors waits on something slow: what that
 * actor does once its wait is over, after the run stopped it. Its waits are held here (GPU
 * counting, a credentials file being written), so the moment is exact; the forks are counted.
 */
import type * as childProcess from 'node:child_process';
import { existsSync } from 'node:fs';
import { Writable } from 'node:stream';
import { fileURLToPath } from 'node:url';
import type { Tensor } from '@tensorflow/tfjs';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { InterruptedError } from '../../src/errors.js';
import { runJob, type RunJobOptions } from '../../src/fleet/runJob.js';
import { deferred, type Deferred } from '../../src/runtime/deferred.js';
import type * as credentials from '../../src/transport/credentials.js';
import type * as device from '../../src/fleet/device.js';
import type * as wire from '../../src/compute/wire.js';
import type * as replicas from '../../src/runtime/replicas.js';
import type { WireTensor } from '../../src/protocol/frame.js';

const CONFIG = fileURLToPath(new URL('../fixtures/tiny.job.ts', import.meta.url));

/** The waits a test holds: each is entered (`entered` resolves) and waits for `release`. */
interface Hold<T> {
  readonly entered: Deferred<void>;
  readonly release: Deferred<T>;
}
const hold = <T>(): Hold<T> => ({ entered: deferred<void>(), release: deferred<T>() });
const holds: { gpus?: Hold<number>; credentials?: Hold<void>; testSet?: Hold<void> } = {};
/** What the held reading of the held-out set gave, and whether a step was started on it. */
const heldOut: { wire?: WireTensor; stepped: boolean } = { stepped: false };
/** Every credentials file written, and the held one once it is. */
const written: string[] = [];
let heldWritten = deferred<string>();
/** Worker processes forked (their arguments), and the children, to end them whatever the test found. */
const forks: { args: readonly string[]; child: childProcess.ChildProcess }[] = [];

vi.mock('../../src/fleet/device.js', async (importOriginal) => {
  const real = await importOriginal<typeof device>();
  return {
    ...real,
    countGpus: async () => {
      const h = holds.gpus;
      if (!h) return real.countGpus();
      h.entered.resolve();
      return h.release.promise;
    },
  };
});

vi.mock('../../src/transport/credentials.js', async (importOriginal) => {
  const real = await importOriginal<typeof credentials>();
  return {
    ...real,
    // A stage's file is held before it is written (troupe inspect's, written while preparing, is not).
    writeCredentialsFile: async (roles: readonly string[], env?: NodeJS.ProcessEnv, name?: string) => {
      const h = holds.credentials;
      const held = h !== undefined && name?.startsWith('stage') === true;
      if (held) {
        h.entered.resolve();
        await h.release.promise;
      }
      const file = await real.writeCredentialsFile(roles, env, name);
      written.push(file);
      if (held) heldWritten.resolve(file);
      return file;
    },
  };
});

vi.mock('../../src/compute/wire.js', async (importOriginal) => {
  const real = await importOriginal<typeof wire>();
  return {
    ...real,
    // The tiny job's held-out inputs (30 rows; the training set has 96) are read once for the evaluation: that read is held.
    fromTensor: async (t: Tensor, name: string) => {
      const w = await real.fromTensor(t, name);
      const h = holds.testSet;
      if (h && name === 'x0' && t.shape[0] === 30 && !heldOut.wire) {
        heldOut.wire = w;
        h.entered.resolve();
        await h.release.promise;
      }
      return w;
    },
  };
});

vi.mock('../../src/runtime/replicas.js', async (importOriginal) => {
  const real = await importOriginal<typeof replicas>();
  return {
    ...real,
    runReplicas: (...a: Parameters<typeof real.runReplicas>) => {
      if (heldOut.wire && a[1][0] === heldOut.wire) heldOut.stepped = true;
      return real.runReplicas(...a);
    },
  };
});

vi.mock('node:child_process', async (importOriginal) => {
  const real = await importOriginal<typeof childProcess>();
  return {
    ...real,
    fork: (...a: Parameters<typeof real.fork>) => {
      const child = real.fork(...a);
      forks.push({ args: a[1] ?? [], child });
      return child;
    },
  };
});

afterEach(() => {
  delete holds.gpus;
  delete holds.credentials;
  delete holds.testSet;
  delete heldOut.wire;
  heldOut.stepped = false;
  written.length = 0;
  heldWritten = deferred<string>();
  for (const f of forks) f.child.kill('SIGKILL');
  forks.length = 0;
});

/** runJob on the tiny job, its output kept; `ac` ends it. */
function run(o: Partial<RunJobOptions>, ac: AbortController) {
  let text = '';
  const waiters: { re: RegExp; d: Deferred<void> }[] = [];
  const out = new Writable({
    write(chunk: Buffer, _enc, cb) {
      text += chunk.toString();
      for (const w of waiters) if (w.re.test(text)) w.d.resolve();
      cb();
    },
  });
  const done = runJob({ config: CONFIG, out, progress: false, signal: ac.signal, ...o });
  done.catch(() => {});
  /** Resolves once the run has printed a line matching `re` (as it prints it). */
  const printed = (re: RegExp): Promise<void> => {
    const d = deferred<void>();
    if (re.test(text)) d.resolve();
    else waiters.push({ re, d });
    return d.promise;
  };
  return { done, output: () => text, printed };
}

/** Lets every continuation of what was just released run (they are promise jobs: done before the next macrotask). */
const settle = () => new Promise<void>((r) => setImmediate(r));

describe('work a closed run abandoned', () => {
  it('Ctrl-C while the GPUs are counted: the run ends, and no worker is forked after it did', async () => {
    holds.gpus = hold<number>();
    const ac = new AbortController();
    const r = run({}, ac);
    await holds.gpus.entered.promise;
    ac.abort();
    await expect(r.done).rejects.toBeInstanceOf(InterruptedError);
    holds.gpus.release.resolve(0);
    await settle();
    expect(forks.filter((f) => f.args[0] === 'worker')).toEqual([]);
  });

  it("Ctrl-C while --no-spawn writes a worker's credentials file: the run ends, and no credentials file outlives it", async () => {
    holds.credentials = hold<void>();
    const ac = new AbortController();
    const r = run({ spawn: false }, ac);
    await holds.credentials.entered.promise;
    ac.abort();
    await expect(r.done).rejects.toBeInstanceOf(InterruptedError);
    holds.credentials.release.resolve();
    const late = await heldWritten.promise;
    expect(written).toHaveLength(2); // troupe inspect's, and the held one
    await vi.waitFor(() => expect(existsSync(late), late).toBe(false), { timeout: 5_000, interval: 20 });
    for (const f of written) expect(existsSync(f), f).toBe(false);
  });

  it('a worker lost while the held-out set is read for the evaluation: the abandoned evaluation starts no step, the run ends well', async () => {
    holds.testSet = hold<void>();
    const ac = new AbortController();
    const r = run({ restarts: 1 }, ac);
    await holds.testSet.entered.promise;
    const worker = forks.find((f) => f.args[0] === 'worker')!;
    worker.child.kill('SIGKILL');
    // The recovery is over and the evaluation begun again: now the abandoned one's read ends.
    await r.printed(/recovered in \d+ ms/);
    holds.testSet.release.resolve();
    await settle();
    expect(heldOut.stepped).toBe(false);
    const result = await r.done;
    expect(result.restarts).toBe(1);
    expect(result.heldOut).not.toBeNull();
  });
});
