/**
 * `troupe pool-worker`: a process serving a pool with the task a module exports. Each slot
 * runs the task in a child process, so a task that never ends is stopped at its deadline (its
 * process killed) and SIGTERM is heard while a task spins: the worker stops taking tasks,
 * lets running ones end for a grace period (a second signal cuts it short), hands back the
 * rest to their callers and exits, its task processes with it.
 */
import { messageOf } from '../errors.js';
import { deferred } from '../runtime/deferred.js';
import { Bus } from '../transport/bus.js';
import { PoolWorker } from './poolWorker.js';

export interface PoolWorkerProcessOptions {
  readonly nats: string;
  readonly pool: string;
  /** A module whose default export is the task function. */
  readonly task: string;
  readonly inspect?: boolean;
  /** Tasks at once (default 1), each in its own child process. */
  readonly concurrency?: number;
  /** Milliseconds running tasks may take to end after SIGTERM (default 5 s). */
  readonly graceMs?: number;
  readonly log?: (line: string) => void;
}

/** Serves the pool until SIGTERM/SIGINT, the parent going away, or the connection closing. */
export async function runPoolWorker(o: PoolWorkerProcessOptions): Promise<void> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const bus = await Bus.connect({ servers: o.nats.split(','), name: `troupe-pool-${o.pool}-${process.pid}`, role: 'pool' });
  let worker: PoolWorker;
  try {
    worker = await PoolWorker.start({ bus, pool: o.pool, module: o.task, inspect: o.inspect ?? false, concurrency: o.concurrency ?? 1, log });
  } catch (err) {
    await bus.close().catch(() => {});
    throw err;
  }
  log(`troupe pool-worker: pool ${o.pool} worker ${worker.id} pid ${process.pid} ready; task processes ${worker.taskPids.join(', ')}`);
  const stopped = deferred<string>();
  let signals = 0;
  const onSignal = (sig: NodeJS.Signals) => {
    // A second signal: the running tasks are handed back now.
    if (++signals > 1) void worker.stopNow();
    stopped.resolve(sig);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
  bus.onStatus((s) => s.type === 'close' && stopped.resolve('NATS connection closed'));
  try {
    const why = await stopped.promise;
    const running = Object.keys(worker.actor.getSnapshot().context.running).length;
    log(
      `troupe pool-worker: ${worker.id} leaving (${why})` +
        `${running ? `; ${running} running task${running > 1 ? 's get' : ' gets'} ${o.graceMs ?? 5_000} ms to end` : ''}`,
    );
    await worker.stop(o.graceMs ?? 5_000);
    const c = worker.actor.getSnapshot().context;
    log(`troupe pool-worker: ${worker.id} left after ${c.done} tasks (${c.failed} failed, ${c.timedOut} timed out, ${c.released} handed back)`);
  } catch (err) {
    log(`troupe pool-worker: ${worker.id} could not leave cleanly: ${messageOf(err)}`);
    throw err;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    await bus.close().catch(() => {});
  }
}
