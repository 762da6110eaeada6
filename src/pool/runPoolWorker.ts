/** `troupe pool-worker`: a process serving a pool with the task a module exports. */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigError, messageOf } from '../errors.js';
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
  const file = resolve(path);
  if (!existsSync(file)) throw new ConfigError(`task module ${path} does not exist`);
  let mod: { default?: unknown };
  try {
    mod = (await import(pathToFileURL(file).href)) as { default?: unknown };
  } catch (cause) {
    throw new ConfigError(`task module ${path} could not be loaded: ${messageOf(cause)}`, { cause });
  }
  if (typeof mod.default !== 'function') throw new ConfigError(`task module ${path}: the default export must be a function of (input, index)`);
  return mod.default as Task;
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
