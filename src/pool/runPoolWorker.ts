/** `troupe pool-worker`: a process serving a pool with the task a module exports. */
import { ConfigError } from '../errors.js';
import { importDefault } from '../importDefault.js';
import { deferred } from '../runtime/deferred.js';
import { Bus } from '../transport/bus.js';
import { PoolWorker, type Task } from './poolWorker.js';

export interface PoolWorkerProcessOptions {
  readonly nats: string;
  readonly pool: string;
  /** A module whose default export is the task function. */
  readonly task: string;
  readonly inspect?: boolean;
  readonly log?: (line: string) => void;
}

/** Loads the task module's default export; a ConfigError names what is wrong. */
export async function loadTask(path: string): Promise<Task> {
  const task = await importDefault(path, 'task module');
  if (typeof task !== 'function') throw new ConfigError(`task module ${path}: the default export must be a function of (input, index)`);
  return task as Task;
}

/** Serves the pool until SIGTERM/SIGINT, the parent going away, or the connection closing. */
export async function runPoolWorker(o: PoolWorkerProcessOptions): Promise<void> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const task = await loadTask(o.task);
  const bus = await Bus.connect({ servers: o.nats.split(','), name: `troupe-pool-${o.pool}-${process.pid}`, role: 'pool' });
  const worker = await PoolWorker.start({ bus, pool: o.pool, task, inspect: o.inspect ?? false });
  log(`troupe pool-worker: pool ${o.pool} worker ${worker.id} pid ${process.pid} ready`);
  const stopped = deferred<string>();
  const onSignal = (sig: NodeJS.Signals) => stopped.resolve(sig);
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  bus.onStatus((s) => s.type === 'close' && stopped.resolve('NATS connection closed'));
  try {
    const why = await stopped.promise;
    log(`troupe pool-worker: ${worker.id} leaving (${why}) after ${worker.actor.getSnapshot().context.done} tasks`);
    await worker.stop();
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    await bus.close().catch(() => {});
  }
}
