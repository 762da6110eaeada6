/** The public pipeline: cut a model into stage actors on NATS and train or evaluate it step by step. */
import * as tf from '@tensorflow/tfjs';
import { ConfigError, StateError, messageOf } from '../errors.js';
import { isGpuBackend, selectBackend, type BackendName } from '../compute/backend.js';
import { resolveLoss, type LossSpec } from '../compute/loss.js';
import type { OptimizerSpec } from '../compute/optimizer.js';
import { stageStartsOf, type StagePartition, type StageSpec } from '../compute/partition.js';
import { estimateStages, slotsPerWeight, type StageMemory } from '../compute/memoryBudget.js';
import { isFeedMode, type FeedMode } from '../schedule/constraint.js';
import { cloneModel } from '../compute/cloneModel.js';
import { deviceWire, fromTensor, releaseDevice } from '../compute/wire.js';
import { plan } from './plan.js';
import { runReplicas } from './replicas.js';
import { startStages, type StartedStages } from './startStages.js';
import type { StepExtra } from './stepRunner.js';
import { checkJobId } from '../protocol/subjects.js';
import type { Schedule } from '../schedule/action.js';
import type { DeviceSchedule, PlacedSchedule } from '../schedule/interleaved.js';
import { Bus, type BusOptions } from '../transport/bus.js';
import { stageRole } from '../transport/credentials.js';
import { SchedulerHost, type SchedulerActor } from './schedulerHost.js';
import { StepRunner, type StepResult } from './stepRunner.js';
import { labelRuleOf } from './stepTensors.js';
import { type StageHost, type StageActor, type StageStats } from './stageHost.js';
import { disposeModel } from '../compute/disposeModel.js';

/** Options of `createPipeline`. */
export interface PipelineOptions {
  /** The model to train; its layers (and so its weights) are shared by the stages. */
  readonly model: tf.LayersModel;
  /**
   * Number of stages (even split by parameter count) or the first layer (index or name) of
   * stages 1..p-1. With `virtualStages: v`, these are the model's slices: p / v devices each
   * host v of them (device k: stages k, k + p/v, ...).
   */
  readonly stages: StageSpec;
  /** Stages per device, for the interleaved and looped-BFS schedules (default 1). */
  readonly virtualStages?: number;
  /**
   * Cut a stage count so that every stage's estimated memory (weights, optimizer state, and
   * activations held for backwards at `batchSize`) stays under `bytesPerStage`; a PartitionError
   * names the stage when no cut fits. `pipe.memory()` reports estimate and measured peak.
   */
  readonly memoryBudget?: { readonly bytesPerStage: number; readonly batchSize: number };
  /**
   * Gradient accumulation: `accumulate` calls of trainStep make one update (default 1); each
   * batch's loss is averaged over all of them, as one step on their concatenation would (give
   * every call the same batch size).
   */
  readonly accumulate?: number;
  /**
   * Data parallel x pipeline parallel: k copies of the pipeline (default 1). Each step splits
   * the batch over them; at UPDATE every stage sums its gradients with its replicas' over NATS
   * and all apply the same update, so the copies stay equal to single-process training.
   */
  readonly replicas?: number;
  /**
   * How a stage count is cut: `'params'` (default) balances parameter counts, `'time'` the
   * forward + backward time of each layer measured here on a sample microbatch.
   */
  readonly balance?: 'params' | 'time';
  /** Microbatches per step. */
  readonly microbatches: number;
  /**
   * `'1f1b'` (default), `'gpipe'`, `'zbh1'`, `'interleaved'`, `'loopedbfs'`, or a schedule as
   * data (validated against stages and microbatches).
   */
  readonly schedule?: string | Schedule | PlacedSchedule;
  /** Each stage gets its own optimizer made from this. */
  readonly optimizer: OptimizerSpec;
  /** A tfjs loss name or a function of (labels, predictions). */
  readonly loss: LossSpec;
  /** Optional metric (`'accuracy'`, any tfjs metric name, or a function). */
  readonly metric?: LossSpec;
  /** The NATS servers; every stage and the scheduler get their own connection. */
  readonly nats: Pick<BusOptions, 'servers'> & Partial<BusOptions>;
  /** Job id used in subjects (default a random one). */
  readonly job?: string;
  /** Backend order (default: TROUPE_BACKEND, else node-gpu > webgpu > node > wasm > cpu). */
  readonly backend?: BackendName | readonly BackendName[];
  /**
   * Hand tensors between the stages (and from the driver) in this process without reading them
   * back or sending them through nats-server: activations and gradients stay on the device.
   * Default: on for GPU backends (webgpu, node-gpu), where a read back costs most; off on the
   * CPU backends, where every frame crossing NATS keeps the counters and the wire observable.
   */
  readonly handoff?: boolean;
  /** Milliseconds a step may take before it is aborted (default 120 s). */
  readonly stepTimeoutMs?: number;
  /** A stage answering no liveness probe this long during a step fails it as STAGE_SILENT (default 30 s). */
  readonly livenessTimeoutMs?: number;
  /** A step ending no action for this long fails as STEP_STALLED with its action grid (default off). */
  readonly stallTimeoutMs?: number;
  /** Publish every actor's inspection events on troupe.<job>.inspect.<actor> (default off). */
  readonly inspect?: boolean;
  /** Activation checkpointing: keep only each microbatch's stage input and recompute the forward at backward time (default off: keep the forward's tape). */
  readonly recompute?: boolean;
  /**
   * How the scheduler hands stage 0 its inputs: `'step'` (default) every microbatch of a step
   * as it begins, `'bounded'` the schedule's bound plus one, then one per microbatch stage 0
   * releases (for inputs too large to queue a whole batch of). See FeedMode.
   */
  readonly feed?: FeedMode;
}

/** The actors of one pipeline (one replica): its scheduler and its stages by rank. */
export interface PipelineReplicaActors {
  readonly scheduler: SchedulerActor;
  readonly stages: readonly StageActor[];
}

/**
 * The xstate actors a pipeline runs in this process, to follow (`subscribe`, `getSnapshot`,
 * `waitFor`) or to compose with a machine of your own. Their hosts send them their events;
 * an event sent from outside bypasses the host's checks.
 *
 * @example
 * pipe.actors.stages[1].subscribe((s) => console.log('stage 1', s.value, 'step', s.context.step));
 * await waitFor(pipe.actors.scheduler, (s) => s.matches('idle'));
 */
export interface PipelineActors extends PipelineReplicaActors {
  /** Every replica's actors, replica 0 (the same as `scheduler` and `stages`) first. */
  readonly replicas: readonly PipelineReplicaActors[];
}

/** A running pipeline. */
export interface Pipeline {
  readonly job: string;
  readonly stages: number;
  readonly microbatches: number;
  readonly schedule: Schedule;
  /** Data-parallel copies of the pipeline. */
  readonly replicas: number;
  /** Each replica's model: the caller's first, then the copies (disposed by close). */
  readonly models: readonly tf.LayersModel[];
  /** Per device, the order of its stages' actions, when devices host several stages. */
  readonly devices?: DeviceSchedule;
  /** The layers of each stage. */
  readonly partitions: readonly StagePartition[];
  /** The scheduler and stage actors of this process (see PipelineActors). */
  readonly actors: PipelineActors;
  /**
   * One optimizer step over all microbatches of (x, y): equal to one single-process step on
   * the whole batch. Calls may overlap: a step called while another runs is queued, and the
   * first queued one begins (its plans and first inputs go out) while the running step
   * computes, so each stage starts it right after its update without waiting for the driver.
   * Steps still run and update in call order; when one fails, those queued behind it reject
   * unrun.
   * x and y are read at the call: they may be disposed once it returns.
   */
  trainStep(x: tf.Tensor | tf.Tensor[], y: tf.Tensor | tf.Tensor[]): Promise<StepResult>;
  /** Forward only, no labels: the model's outputs for x (the last stage's), in batch order. */
  predict(x: tf.Tensor | tf.Tensor[]): Promise<tf.Tensor[]>;
  /** Forward only: loss and metric of (x, y), weights untouched. */
  evaluate(x: tf.Tensor | tf.Tensor[], y: tf.Tensor | tf.Tensor[]): Promise<StepResult>;
  /** Counters of every stage. */
  stats(): StageStats[];
  /**
   * Each stage's memory: the estimate (from the budget's model, or weights and optimizer
   * only) and what replica 0's stage measured: weights, optimizer tensors, peak activations held.
   */
  memory(): Promise<{ rank: number; estimate: StageMemory; measured: { weights: number; optimizer: number; activations: number; total: number } }[]>;
  /** Scheduler events refused as malformed (bad JSON, wrong fields), since the start. */
  malformedEvents(): number;
  /** Stops the actors, drains every subscription and connection. The model stays usable. */
  close(): Promise<void>;
}

function checkOptions(o: PipelineOptions): void {
  if (!o || typeof o !== 'object') throw new ConfigError('createPipeline needs an options object');
  if (!(o.model instanceof tf.LayersModel)) throw new ConfigError('model must be a tf.LayersModel');
  if (!Number.isInteger(o.microbatches) || o.microbatches < 1) throw new ConfigError(`microbatches must be a positive integer, got ${String(o.microbatches)}`);
  if (o.loss === undefined) throw new ConfigError('loss is required');
  if (o.optimizer === undefined) throw new ConfigError('optimizer is required');
  if (!o.nats || (typeof o.nats.servers !== 'string' && !Array.isArray(o.nats.servers))) throw new ConfigError('nats.servers must be a URL or a list of URLs');
  if (o.stepTimeoutMs !== undefined && !(o.stepTimeoutMs > 0)) throw new ConfigError(`stepTimeoutMs must be positive, got ${o.stepTimeoutMs}`);
  if (o.accumulate !== undefined && (!Number.isInteger(o.accumulate) || o.accumulate < 1))
    throw new ConfigError(`accumulate must be a positive integer, got ${String(o.accumulate)}`);
  if (o.replicas !== undefined && (!Number.isInteger(o.replicas) || o.replicas < 1))
    throw new ConfigError(`replicas must be a positive integer, got ${String(o.replicas)}`);
  if (o.balance !== undefined && o.balance !== 'params' && o.balance !== 'time')
    throw new ConfigError(`balance must be "params" or "time", got ${JSON.stringify(o.balance)}`);
  if (o.feed !== undefined && !isFeedMode(o.feed)) throw new ConfigError(`feed must be "step" or "bounded", got ${JSON.stringify(o.feed)}`);
}

/**
 * Cuts `model` into stages, starts one stage actor per stage and a scheduler actor, each on
 * its own NATS connection, and returns the pipeline.
 *
 * @example
 * const pipe = await createPipeline({
 *   model, stages: 2, microbatches: 4, schedule: '1f1b',
 *   optimizer: tf.train.adam(1e-3), loss: 'categoricalCrossentropy',
 *   nats: { servers: 'nats://127.0.0.1:4222' },
 * });
 * const { loss } = await pipe.trainStep(xs, ys);
 * await pipe.close();
 */
export async function createPipeline(o: PipelineOptions): Promise<Pipeline> {
  checkOptions(o);
  const backend = await selectBackend(o.backend === undefined ? {} : { prefer: o.backend });
  const handoff = o.handoff ?? isGpuBackend(backend.name);
  const job = checkJobId(o.job ?? `job-${Math.random().toString(36).slice(2, 10)}`);
  const k = o.replicas ?? 1;
  const m = o.microbatches;
  const { metric } = resolveLoss(o.loss, o.metric);
  const thePlan = await plan({
    job,
    model: o.model,
    stages: o.stages,
    microbatches: m,
    optimizer: o.optimizer,
    replicas: k,
    recompute: o.recompute ?? false,
    ...(o.virtualStages !== undefined ? { virtualStages: o.virtualStages } : {}),
    ...(o.schedule !== undefined ? { schedule: o.schedule } : {}),
    ...(o.balance ? { balance: o.balance } : {}),
    ...(o.memoryBudget ? { memoryBudget: o.memoryBudget } : {}),
  });
  const { partitions, placed } = thePlan;
  const p = partitions.length;
  const schedule = placed.stages;
  // Replica 0 trains the caller's model; the others train copies with the same weights.
  const models = [o.model];
  for (let i = 1; i < k; i++) models.push(await cloneModel(o.model));

  const buses: Bus[] = [];
  const hosts: StageHost[] = [];
  const started: StartedStages[] = [];
  const scheds: SchedulerHost[] = [];
  const runners: StepRunner[] = [];
  // Each connection logs in as its role (stage<r>, driver) unless the caller names a user.
  const connect = async (name: string, role: string) => {
    const bus = await Bus.connect({ role, ...o.nats, name: `troupe-${job}-${name}` });
    buses.push(bus);
    return bus;
  };
  const closeAll = async () => {
    await Promise.all(scheds.map((s) => s.close()));
    await Promise.all(started.map((s) => s.close()));
    await Promise.all(buses.map((b) => b.close()));
    // The replicas' clones are the pipeline's own; the caller's model stays the caller's.
    for (const model of models.slice(1)) disposeModel(model);
  };
  try {
    for (let replica = 0; replica < k; replica++) {
      // One pipeline per replica, on subjects of its own; their stages meet only in the all-reduce.
      const rjob = thePlan.replicaJobs[replica]!;
      const stages = await startStages(
        thePlan,
        partitions.map((s) => s.rank),
        (r) => connect(`r${replica}-stage-${r}`, stageRole(r)),
        {
          optimizer: o.optimizer,
          loss: o.loss,
          ...(o.metric !== undefined ? { metric: o.metric } : {}),
          recompute: o.recompute ?? false,
          replica,
          ...(replica > 0 ? { partitions: thePlan.cut(models[replica]!) } : {}),
          handoff,
          inspect: o.inspect ?? false,
          allReduceTimeoutMs: o.stepTimeoutMs ?? 120_000,
        },
      );
      started.push(stages);
      hosts.push(...stages.hosts);
      const sched = await SchedulerHost.start({
        bus: await connect(`r${replica}-sched`, 'driver'),
        job: rjob,
        stages: p,
        inspect: o.inspect ?? false,
        ...(o.livenessTimeoutMs ? { livenessTimeoutMs: o.livenessTimeoutMs } : {}),
        ...(o.stallTimeoutMs ? { stallTimeoutMs: o.stallTimeoutMs } : {}),
      });
      scheds.push(sched);
      runners.push(
        new StepRunner({
          scheduler: sched,
          job: rjob,
          schedule,
          ...(placed.devices ? { devices: placed.devices } : {}),
          microbatches: m,
          tensors: { inputs: partitions[0]!.inputs, outputs: partitions[p - 1]!.outputs, labels: labelRuleOf(o.loss) },
          hasMetric: metric !== null,
          stepTimeoutMs: o.stepTimeoutMs ?? 120_000,
          ...(o.feed ? { feed: o.feed } : {}),
        }),
      );
    }
  } catch (err) {
    await closeAll().catch(() => {});
    throw err;
  }
  let closed = false;
  const accumulate = o.accumulate ?? 1;
  let accumulated = 0;
  const run = async (
    x: tf.Tensor | tf.Tensor[],
    y: tf.Tensor | tf.Tensor[] | null,
    forwardOnly: boolean,
    extra: StepExtra = {},
    accepted?: () => StepExtra,
  ): Promise<StepResult> => {
    if (closed) throw new StateError(`pipeline ${job} is closed`);
    // Data parallel: each replica takes a contiguous share of the rows; the loss is averaged over all
    // (and, accumulating, over the `accumulate` batches that make one update).
    const list = (t: tf.Tensor | tf.Tensor[], what: string) => {
      const l = Array.isArray(t) ? t : [t];
      if (l.length === 0 || l.some((u) => !(u instanceof tf.Tensor))) throw new ConfigError(`${what} must be a tensor or a non-empty list of tensors`);
      return l;
    };
    const xl = list(x, 'x');
    const yl = y === null ? [] : list(y, 'y');
    // Taken at the call (clones share the data): the caller may dispose x and y once this returns.
    // Stages that take frames by hand get device wires (nothing read back); others get bytes.
    const wire = (ts: tf.Tensor[], p: string) =>
      ts.map((t, i) => {
        const own = tf.clone(t);
        return handoff ? Promise.resolve(deviceWire(own, `${p}${i}`)) : fromTensor(own, `${p}${i}`).finally(() => own.dispose());
      });
    const pending = [...wire(xl, 'x'), ...wire(yl, 'y')];
    const settled = await Promise.allSettled(pending);
    const ok = settled.flatMap((s) => (s.status === 'fulfilled' ? [s.value] : []));
    const failed = settled.find((s): s is PromiseRejectedResult => s.status === 'rejected');
    if (failed) {
      releaseDevice(ok);
      throw failed.reason;
    }
    const xw = ok.slice(0, xl.length);
    const yw = ok.slice(xl.length);
    try {
      return await runReplicas(runners, xw, yw, forwardOnly, extra, forwardOnly ? 1 : accumulate, accepted);
    } finally {
      releaseDevice([...xw, ...yw]);
    }
  };

  const replicaActors = scheds.map((sched, r): PipelineReplicaActors => ({
    scheduler: sched.actor,
    stages: hosts.slice(r * p, (r + 1) * p).map((h) => h.actor),
  }));
  return {
    job,
    stages: p,
    replicas: k,
    actors: { ...replicaActors[0]!, replicas: replicaActors },
    models,
    microbatches: m,
    schedule,
    ...(placed.devices ? { devices: placed.devices } : {}),
    partitions,
    // Gradient accumulation: the update comes with every `accumulate`-th step the pipeline
    // accepts (counted as it starts, so a refused call does not shift the cycle).
    trainStep: (x, y) =>
      run(x, y, false, {}, () => {
        accumulated = (accumulated % accumulate) + 1;
        return { update: accumulated === accumulate };
      }),
    evaluate: (x, y) => run(x, y, true),
    predict: async (x) => {
      const r = await run(x, null, true, { predict: true });
      return r.outputs!.map((w) => tf.tensor(w.data, [...w.shape], w.dtype));
    },
    stats: () => hosts.map((h) => h.stats()),
    malformedEvents: () => scheds.reduce((n, s) => n + s.malformedEvents, 0),
    memory: async () => {
      const computes = started[0]!.computes;
      const est =
        thePlan.memory?.estimates ??
        estimateStages(o.model, stageStartsOf(partitions), { slotsPerWeight: slotsPerWeight(computes[0]!.optimizer.getClassName()), rows: 0, held: () => 0 });
      return Promise.all(partitions.map(async (_, r) => ({ rank: r, estimate: est[r]!, measured: await computes[r]!.measuredMemory() })));
    },
    close: async () => {
      if (closed) return;
      closed = true;
      try {
        await closeAll();
      } catch (err) {
        throw new ConfigError(`closing pipeline ${job} failed: ${messageOf(err)}`, { cause: err });
      }
    },
  };
}
