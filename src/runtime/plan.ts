/**
 * One plan of a pipeline from its options alone: the cut, the placed schedule, the memory
 * estimate and the replicas' scopes. `createPipeline`, `troupe up` and `troupe worker` all
 * start from it, so that they cut and place a model the same way.
 */
import type * as tf from '@tensorflow/tfjs';
import { ConfigError } from '../errors.js';
import { optimizerFactory, type OptimizerSpec } from '../compute/optimizer.js';
import { partitionModel, stageStartsOf, type StagePartition, type StageSpec } from '../compute/partition.js';
import { profileLayers } from '../compute/profileLayers.js';
import { cutUnderBudget, slotsPerWeight, type MemoryModel, type StageMemory } from '../compute/memoryBudget.js';
import { replicaScope } from '../protocol/subjects.js';
import type { Schedule } from '../schedule/action.js';
import { maxInFlight } from '../schedule/constraint.js';
import { deviceOf, type PlacedSchedule } from '../schedule/interleaved.js';
import { buildPlacedSchedule } from '../schedule/schedules.js';

/** What a plan is made from. */
export interface PlanOptions {
  readonly job: string;
  readonly model: tf.LayersModel;
  /** A stage count, or the first layer (index or name) of stages 1..p-1. */
  readonly stages: StageSpec;
  readonly virtualStages?: number;
  readonly microbatches: number;
  readonly schedule?: string | Schedule | PlacedSchedule;
  /** The stages' optimizer: its slots per weight enter the memory estimate. */
  readonly optimizer: OptimizerSpec;
  /** Data-parallel copies of the pipeline (default 1). */
  readonly replicas?: number;
  /** A stage count is balanced by parameters (default) or by each layer's measured time. */
  readonly balance?: 'params' | 'time';
  /** Rows of the sample microbatch a `'time'` balance measures (default 32). */
  readonly profileRows?: number;
  readonly recompute?: boolean;
  /**
   * Cut a stage count so that every stage's estimate stays under `bytesPerStage`, with
   * `batchSize` rows per step in each replica.
   */
  readonly memoryBudget?: { readonly bytesPerStage: number; readonly batchSize: number };
}

/** The part of the options a failure belongs to (for a message that names the field). */
export type PlanField = 'memoryBudget' | 'stages' | 'schedule';

/** A pipeline's plan. */
export interface Plan {
  readonly job: string;
  /** The model's stages, cut from `options.model`. */
  readonly partitions: readonly StagePartition[];
  /** First layer of stages 1..p-1: where every copy of the model is cut (`cut`, a worker's `--boundaries`). */
  readonly boundaries: readonly number[];
  readonly placed: PlacedSchedule;
  readonly stages: number;
  /** Devices (worker processes of a replica): the stage count, or fewer with virtual stages. */
  readonly devices: number;
  readonly replicas: number;
  /** Each replica's scope (`<job>`, or `<job>.r<i>` with replicas). */
  readonly replicaJobs: readonly string[];
  /** The memory budget's model and estimates; null without a budget. */
  readonly memory: { readonly model: MemoryModel; readonly estimates: readonly StageMemory[] } | null;
  /** The ranks device `device` hosts (k, k + d, ... with virtual stages). */
  ranksOn(device: number): number[];
  /** Another copy of the model (a replica's, a worker's) cut at the same boundaries. */
  cut(model: tf.LayersModel): StagePartition[];
}

/**
 * Makes the plan. A failure is handed to `fail` with the field it belongs to (default: thrown
 * as it is), so that a job config can name its field.
 *
 * @example
 * const p = await plan({ job: 'mnist', model, stages: 2, microbatches: 4, optimizer: 'adam' });
 * p.boundaries // [2]: stage 1 starts at layer 2
 */
export async function plan(o: PlanOptions, fail: (field: PlanField, cause: unknown) => Error = (_, c) => c as Error): Promise<Plan> {
  const at = <T>(field: PlanField, f: () => T): T => {
    try {
      return f();
    } catch (cause) {
      throw fail(field, cause);
    }
  };
  const m = o.microbatches;
  const scheduleOf = (p: number) => buildPlacedSchedule(o.schedule ?? '1f1b', p, m, o.virtualStages ?? 1);
  let spec: StageSpec = o.stages;
  let memory: Plan['memory'] = null;
  const budget = o.memoryBudget;
  if (budget) {
    // Under a budget the cut whose largest stage estimate is smallest, or an error naming the stage.
    const p = o.stages;
    if (typeof p !== 'number') throw fail('memoryBudget', new ConfigError('memoryBudget chooses the cut: give stages as a count'));
    const bounds = at('schedule', () => scheduleOf(p)).stages.map(maxInFlight);
    const probe = optimizerFactory(o.optimizer)();
    const model: MemoryModel = { slotsPerWeight: slotsPerWeight(probe.getClassName()), rows: Math.ceil(budget.batchSize / m), held: (r) => bounds[r]! };
    probe.dispose();
    const fit = at('memoryBudget', () => cutUnderBudget(o.model, p, budget.bytesPerStage, model));
    spec = fit.boundaries;
    memory = { model, estimates: fit.estimates };
  }
  const costs = o.balance === 'time' && typeof spec === 'number' ? await profileLayers(o.model, { rows: o.profileRows ?? 32 }) : undefined;
  const partitions = at('stages', () => partitionModel(o.model, spec, { recompute: o.recompute ?? false, ...(costs ? { costs } : {}) }));
  const boundaries = stageStartsOf(partitions).slice(1, -1);
  const placed = at('schedule', () => scheduleOf(partitions.length));
  const p = partitions.length;
  const devices = placed.devices?.length ?? p;
  const k = o.replicas ?? 1;
  return {
    job: o.job,
    partitions,
    boundaries,
    placed,
    stages: p,
    devices,
    replicas: k,
    replicaJobs: Array.from({ length: k }, (_, i) => replicaScope(o.job, i, k)),
    memory,
    ranksOn: (device) => partitions.map((s) => s.rank).filter((r) => deviceOf(r, devices) === device),
    cut: (model) => partitionModel(model, boundaries, { recompute: o.recompute ?? false }),
  };
}
