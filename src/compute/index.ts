/**
 * `troupe/compute`: a stage's TensorFlow.js side: backend choice, cutting a model into
 * stages, a stage's forward/backward/update, losses, optimizers, and tensors on the wire.
 */
export { selectBackend, BackendName } from './backend.js';
export type { BackendChoice, BackendOptions } from './backend.js';
export { partitionModel, stageStarts, stageStartsOf } from './partition.js';
export type { StagePartition, StageSpec, CutTensor, PartitionOptions } from './partition.js';
export { StageCompute } from './stageCompute.js';
export type { StageComputeOptions, ActionResult } from './stageCompute.js';
export { HeldTape } from './heldTape.js';
export { resolveLoss } from './loss.js';
export type { LossFn, LossSpec } from './loss.js';
export { describeOptimizer, createOptimizer } from './optimizer.js';
export type { OptimizerSpec, OptimizerDescription } from './optimizer.js';
export { exportStageState, importStageState, stageWeights } from './stageState.js';
export type { StageState } from './stageState.js';
export { estimateStages, cutUnderBudget, describeMemory } from './memoryBudget.js';
export type { StageMemory, MemoryModel } from './memoryBudget.js';
export { profileLayers } from './profileLayers.js';
export { reshard } from './reshard.js';
export { cloneModel } from './cloneModel.js';
export { toTensor, fromTensor } from './wire.js';
