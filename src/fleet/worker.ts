/** A worker process: the stage actors of one device of a job, joined to the fleet only through NATS. */
import { ConfigError } from '../errors.js';
import { isGpuBackend, selectBackend, type BackendName } from '../compute/backend.js';
import { deferred } from '../runtime/deferred.js';
import { startStages, type StartedStages } from '../runtime/startStages.js';
import { Bus } from '../transport/bus.js';
import { stageRole } from '../transport/credentials.js';
import { loadJobConfig } from './jobConfig.js';
import { jobPlan } from './jobPlan.js';
import { disposeModel } from '../compute/disposeModel.js';

/** Options of `runWorker` (the flags of `troupe worker`). */
export interface WorkerOptions {
  readonly nats: string;
  readonly job: string;
  /** The stages this process hosts: one, or several sharing the device (virtual stages). */
  readonly ranks: readonly number[];
  /** The job config module, the same file the driver runs. */
  readonly config: string;
  /** The driver's cut (first layer of stages 1..p-1), overriding the config's `stages`. */
  readonly boundaries?: readonly number[];
  /** Which data-parallel replica these stages belong to, of how many (default 0 of 1). */
  readonly replica?: number;
  readonly replicas?: number;
  readonly backend?: BackendName;
  /** Publish the stage actors' inspection events. */
  readonly inspect?: boolean;
  readonly log?: (line: string) => void;
}

/**
 * Builds the ranks' stages from the job config, serves them on NATS (a connection per stage,
 * logged in as `stage<r>`; the stages of one process take turns in their device's order) and resolves when the driver
 * stops them, the process is signalled, or the connection is lost for good.
 */
export async function runWorker(o: WorkerOptions): Promise<void> {
  const log = o.log ?? ((l: string) => process.stderr.write(`${l}\n`));
  if (o.ranks.length === 0 || new Set(o.ranks).size !== o.ranks.length) throw new ConfigError(`a worker needs distinct ranks, got [${o.ranks.join(', ')}]`);
  const choice = await selectBackend({ ...(o.backend ? { prefer: o.backend } : {}), log: null });
  const device = choice.device;
  const cfg = await loadJobConfig(o.config);
  const model = await cfg.model();
  const replicas = o.replicas ?? 1;
  const replica = o.replica ?? 0;
  if (!Number.isInteger(replica) || replica < 0 || replica >= replicas) throw new ConfigError(`replica ${replica} does not exist: the job has ${replicas}`);
  const thePlan = await jobPlan({ ...cfg, replicas }, model, o.job, o.boundaries);
  // A replica's stages talk on subjects of their own; the replicas of a stage meet in the all-reduce.
  const rjob = thePlan.replicaJobs[replica]!;
  // One connection per stage, each logged in as its rank (NATS lets a stage talk to its neighbours only).
  const buses: Bus[] = [];
  const connect = async (r: number) => {
    const bus = await Bus.connect({ servers: o.nats.split(','), name: `troupe-${rjob}-stage-${r}`, role: stageRole(r) });
    buses.push(bus);
    // Direct links between stages: when they come up or go, and any connection refused.
    bus.onStatus((s) => s.type.startsWith('direct-') && log(`troupe worker: rank ${r}: ${s.detail}`));
    return bus;
  };
  let stages: StartedStages;
  try {
    stages = await startStages(thePlan, o.ranks, connect, {
      optimizer: cfg.optimizer,
      loss: cfg.loss,
      ...(cfg.metric !== undefined ? { metric: cfg.metric } : {}),
      recompute: cfg.recompute ?? false,
      replica,
      identity: { backend: choice.name, device },
      handoff: isGpuBackend(choice.name),
      inspect: o.inspect ?? false,
    });
  } catch (err) {
    await Promise.all(buses.map((b) => b.close().catch(() => {})));
    disposeModel(model);
    throw err;
  }
  const hosts = stages.hosts;
  for (const h of hosts) {
    const partition = thePlan.partitions[h.rank]!;
    log(
      `troupe worker: job ${rjob} rank ${h.rank}/${thePlan.stages} pid ${process.pid} ` +
        `backend ${choice.name} device ${device} layers [${partition.layerNames.join(', ')}]`,
    );
  }
  const who = `rank ${o.ranks.join(', ')}`;

  let stopping: Promise<void> | undefined;
  const stop = (why: string): Promise<void> =>
    (stopping ??= (async () => {
      log(`troupe worker: ${who} stopping (${why})`);
      await stages.close();
      await Promise.all(buses.map((b) => b.close().catch(() => {})));
      disposeModel(model);
    })());
  const stopped = deferred<string>();
  const onSignal = (sig: NodeJS.Signals) => stopped.resolve(sig);
  const onDisconnect = () => stopped.resolve('parent gone');
  process.once('SIGTERM', onSignal);
  process.once('SIGINT', onSignal);
  process.once('disconnect', onDisconnect);
  for (const bus of buses) bus.onStatus((s) => s.type === 'close' && stopped.resolve('NATS connection closed'));
  // The driver stops every rank; the process ends when all its stages are stopped.
  const done = new Set<number>();
  const subs = hosts.map((h, i) =>
    h.actor.subscribe((snap) => {
      if (snap.status !== 'done') return;
      done.add(i);
      if (done.size === hosts.length) stopped.resolve('stop requested');
    }),
  );
  try {
    await stop(await stopped.promise);
  } finally {
    for (const s of subs) s.unsubscribe();
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
    process.off('disconnect', onDisconnect);
  }
}

/** Parses `--rank 3` or `--rank 0,4` (the stages of one device). */
export function parseRanks(s: string): number[] {
  const ranks = s.split(',').map((t) => t.trim());
  if (ranks.some((t) => !/^\d+$/.test(t))) throw new ConfigError(`--rank must be a rank or a comma-separated list of ranks, got "${s}"`);
  return ranks.map(Number);
}

/** Parses `--boundaries 2,5` (empty: one stage). */
export function parseBoundaries(s: string): number[] {
  if (s.trim() === '') return [];
  const ids = s.split(',').map((t) => t.trim());
  if (ids.some((t) => !/^\d+$/.test(t))) throw new ConfigError(`--boundaries must be a comma-separated list of layer indices, got "${s}"`);
  return ids.map(Number);
}
