/** A worker process: one stage actor of a job, joined to the fleet only through NATS. */
import { ConfigError } from '../errors.js';
import { selectBackend, type BackendName } from '../compute/backend.js';
import { resolveLoss } from '../compute/loss.js';
import { optimizerFactory } from '../compute/optimizer.js';
import { partitionModel } from '../compute/partition.js';
import { StageCompute } from '../compute/stageCompute.js';
import { deferred } from '../runtime/deferred.js';
import { StageHost } from '../runtime/stageHost.js';
import { Bus } from '../transport/bus.js';
import { deviceName } from './device.js';
import { loadJobConfig } from './jobConfig.js';

/** Options of `runWorker` (the flags of `troupe worker`). */
export interface WorkerOptions {
  readonly nats: string;
  readonly job: string;
  readonly rank: number;
  /** The job config module, the same file the driver runs. */
  readonly config: string;
  readonly backend?: BackendName;
  /** Publish the stage actor's inspection events. */
  readonly inspect?: boolean;
  readonly log?: (line: string) => void;
}

/**
 * Builds the rank's stage from the job config, serves it on NATS and resolves when the
 * driver stops it, the process is signalled, or the connection is lost for good.
 */
export async function runWorker(o: WorkerOptions): Promise<void> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  const choice = await selectBackend({ ...(o.backend ? { prefer: o.backend } : {}), log: null });
  const device = deviceName(choice.name);
  const cfg = await loadJobConfig(o.config);
  const model = await cfg.model();
  const parts = partitionModel(model, cfg.stages, { recompute: cfg.recompute ?? false });
  const partition = parts[o.rank];
  if (!partition) throw new ConfigError(`rank ${o.rank} does not exist: job ${o.job} has ${parts.length} stages`);
  const compute = StageCompute.forPartition(partition, optimizerFactory(cfg.optimizer)(), resolveLoss(cfg.loss, cfg.metric), cfg.recompute ?? false);
  const bus = await Bus.connect({ servers: o.nats, name: `troupe-${o.job}-worker-${o.rank}` });
  const host = await StageHost.start({ bus, job: o.job, partition, compute, identity: { backend: choice.name, device }, inspect: o.inspect ?? false });
  log(`troupe worker: job ${o.job} rank ${o.rank}/${parts.length} pid ${process.pid} backend ${choice.name} device ${device} layers [${partition.layerNames.join(', ')}]`);

  let stopping: Promise<void> | undefined;
  const stop = (why: string): Promise<void> =>
    (stopping ??= (async () => {
      log(`troupe worker: rank ${o.rank} stopping (${why})`);
      await host.close();
      compute.dispose();
      await bus.close().catch(() => {});
      model.dispose();
    })());
  const stopped = deferred<string>();
  const onSignal = (sig: NodeJS.Signals) => stopped.resolve(sig);
  const onDisconnect = () => stopped.resolve('parent gone');
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  process.once('disconnect', onDisconnect);
  bus.onStatus((s) => s.type === 'close' && stopped.resolve('NATS connection closed'));
  const sub = host.actor.subscribe((snap) => snap.status === 'done' && stopped.resolve('stop requested'));
  try {
    await stop(await stopped.promise);
  } finally {
    sub.unsubscribe();
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    process.off('disconnect', onDisconnect);
  }
}
