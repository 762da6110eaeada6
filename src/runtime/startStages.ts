/**
 * Starts the stage actors of some ranks of a plan, each on a NATS connection of its own: the
 * one way stages are wired, whether a pipeline hosts them all (createPipeline) or a worker
 * process those of its device (troupe worker).
 */
import type { LossSpec } from '../compute/loss.js';
import { resolveLoss } from '../compute/loss.js';
import { optimizerFactory, type OptimizerSpec } from '../compute/optimizer.js';
import type { StagePartition } from '../compute/partition.js';
import { StageCompute } from '../compute/stageCompute.js';
import { ConfigError } from '../errors.js';
import { deviceOf } from '../schedule/interleaved.js';
import type { Bus } from '../transport/bus.js';
import { AllReduce } from './allReduce.js';
import { DeviceTurn } from './deviceTurn.js';
import type { Plan } from './plan.js';
import { StageHost, type StageHostOptions } from './stageHost.js';

/** How the stages compute and what they show. */
export interface StageSetup {
  readonly optimizer: OptimizerSpec;
  readonly loss: LossSpec;
  readonly metric?: LossSpec;
  readonly recompute?: boolean;
  /** Which replica's stages (default 0). */
  readonly replica?: number;
  /** The replica's partitions (default the plan's own: replica 0's, or a worker's). */
  readonly partitions?: readonly StagePartition[];
  readonly handoff?: boolean;
  readonly inspect?: boolean;
  readonly identity?: StageHostOptions['identity'];
  /** Milliseconds the replicas' all-reduce waits for the others (its default otherwise). */
  readonly allReduceTimeoutMs?: number;
}

/** The stages started, and how to end them. */
export interface StartedStages {
  readonly hosts: readonly StageHost[];
  readonly computes: readonly StageCompute[];
  /** Stops the actors, the all-reduce and the computes (the connections are the caller's). */
  close(): Promise<void>;
}

/**
 * Starts stages `ranks` of replica `setup.replica` of `plan`. `connect(rank)` opens the
 * connection stage `rank` talks on (logged in as that stage). Stages of one device take turns
 * in its order (virtual stages); with replicas, each stage meets its replicas in an all-reduce.
 * On a failure the stages already started are closed.
 *
 * @example
 * const stages = await startStages(plan, [0, 1], (r) => Bus.connect({ servers, role: stageRole(r) }), { optimizer, loss });
 */
export async function startStages(plan: Plan, ranks: readonly number[], connect: (rank: number) => Promise<Bus>, setup: StageSetup): Promise<StartedStages> {
  const replica = setup.replica ?? 0;
  if (!Number.isInteger(replica) || replica < 0 || replica >= plan.replicas)
    throw new ConfigError(`replica ${replica} does not exist: the job has ${plan.replicas}`);
  const parts = setup.partitions ?? plan.partitions;
  for (const r of ranks) if (!parts[r]) throw new ConfigError(`rank ${r} does not exist: job ${plan.job} has ${parts.length} stages`);
  const makeOptimizer = optimizerFactory(setup.optimizer);
  const objective = resolveLoss(setup.loss, setup.metric);
  const rjob = plan.replicaJobs[replica]!;
  // Stages sharing a device take turns in its order.
  const turns = new Map<number, DeviceTurn>();
  const turnOf = (rank: number): DeviceTurn | undefined => {
    const dev = deviceOf(rank, plan.devices);
    if (!plan.placed.devices && ranks.filter((r) => deviceOf(r, plan.devices) === dev).length < 2) return undefined;
    if (!turns.has(dev)) turns.set(dev, new DeviceTurn());
    return turns.get(dev);
  };
  const hosts: StageHost[] = [];
  const computes: StageCompute[] = [];
  const reducers: AllReduce[] = [];
  const close = async () => {
    await Promise.all(hosts.map((h) => h.close()));
    await Promise.all(reducers.map((a) => a.close()));
    for (const c of computes) c.dispose();
  };
  try {
    for (const r of ranks) {
      const partition = parts[r]!;
      const compute = StageCompute.forPartition(partition, makeOptimizer(), objective, setup.recompute ?? false);
      computes.push(compute);
      const bus = await connect(r);
      const allReduce =
        plan.replicas > 1
          ? await AllReduce.start({
              bus,
              group: plan.job,
              rank: r,
              replica,
              replicas: plan.replicas,
              ...(setup.allReduceTimeoutMs ? { timeoutMs: setup.allReduceTimeoutMs } : {}),
            })
          : undefined;
      if (allReduce) reducers.push(allReduce);
      const turn = turnOf(r);
      hosts.push(
        await StageHost.start({
          bus,
          job: rjob,
          partition,
          compute,
          handoff: setup.handoff ?? false,
          inspect: setup.inspect ?? false,
          ...(setup.identity ? { identity: setup.identity } : {}),
          ...(turn ? { turn } : {}),
          ...(allReduce ? { allReduce } : {}),
        }),
      );
    }
  } catch (err) {
    await close().catch(() => {});
    throw err;
  }
  return { hosts, computes, close };
}
