/** The plan of a job config: what the driver and every worker cut and place the same way. */
import type * as tf from '@tensorflow/tfjs';
import { plan, type Plan, type PlanField } from '../runtime/plan.js';
import type { JobConfig } from './jobConfig.js';

/**
 * The plan of `cfg` for `model`. With `boundaries` (the driver's cut, passed to its workers)
 * the model is cut there: a cut by measured time is never measured twice, in two processes,
 * with two results. Without, the config's stages, memory budget (with each replica's share
 * of the batch) and balance decide.
 */
export function jobPlan(
  cfg: JobConfig,
  model: tf.LayersModel,
  job: string,
  boundaries?: readonly number[],
  fail?: (field: PlanField, cause: unknown) => Error,
): Promise<Plan> {
  const k = cfg.replicas ?? 1;
  const chosen = boundaries === undefined;
  return plan(
    {
      job,
      model,
      stages: boundaries ?? cfg.stages,
      microbatches: cfg.microbatches,
      optimizer: cfg.optimizer,
      replicas: k,
      recompute: cfg.recompute ?? false,
      ...(cfg.schedule ? { schedule: cfg.schedule } : {}),
      ...(cfg.virtualStages ? { virtualStages: cfg.virtualStages } : {}),
      ...(chosen && cfg.balance ? { balance: cfg.balance, profileRows: Math.ceil(cfg.batchSize / cfg.microbatches) } : {}),
      ...(chosen && cfg.memoryBudget !== undefined ? { memoryBudget: { bytesPerStage: cfg.memoryBudget, batchSize: Math.ceil(cfg.batchSize / k) } } : {}),
    },
    fail,
  );
}
