/**
 * Per-stage memory: an estimate before the run (weights, optimizer state, activations held
 * for backwards) and a cut of the model that keeps every stage under a budget, or a clear
 * error naming the stage that cannot fit.
 */
import * as tf from '@tensorflow/tfjs';
import { PartitionError } from '../errors.js';
import { minMaxCut } from './balance.js';
import { HeldTape } from './heldTape.js';
import { layerInputs } from './layerInputs.js';

/** What a stage is estimated to hold, in bytes. */
export interface StageMemory {
  readonly rank: number;
  readonly weights: number;
  readonly optimizer: number;
  readonly activations: number;
  readonly total: number;
}

export interface MemoryModel {
  /** Optimizer tensors per weight (Adam 2, momentum 1, SGD 0). */
  readonly slotsPerWeight: number;
  /** Examples per microbatch. */
  readonly rows: number;
  /** Microbatches stage `rank` holds at most (its schedule row's bound). */
  readonly held: (rank: number) => number;
}

/** Optimizer tensors kept per weight, by optimizer class name (unknown: 2, the usual worst case). */
export function slotsPerWeight(className: string): number {
  const n = className.toLowerCase();
  if (n === 'sgd' || n === 'sgdoptimizer') return 0;
  if (n.startsWith('momentum') || n.startsWith('adagrad')) return 1;
  return 2;
}

/**
 * Per layer: parameter bytes, and the bytes per example its forward's gradient tape keeps
 * (measured: each layer's forward recorded alone on a sample of `rows` examples).
 */
function layerCosts(model: tf.LayersModel, rows: number): { params: number[]; kept: number[] } {
  const sample = layerInputs(model, rows, 21);
  try {
    const kept = sample.layers.map((l, i) => {
      const xs = sample.inputs[i]!;
      const vars = l.trainableWeights.map((w) => (w as unknown as { val: tf.Variable }).val);
      const { outputs, tape } = HeldTape.record(() => [l.apply(xs.length === 1 ? xs[0]! : xs, { training: true })].flat() as tf.Tensor[], xs, vars);
      const bytes = tape.bytes;
      tape.dispose();
      tf.dispose(outputs);
      return Math.ceil(bytes / rows);
    });
    return { params: sample.layers.map((l) => l.countParams() * 4), kept };
  } finally {
    sample.dispose();
  }
}

/** The estimate of the stage made of layers [from, to) at rank `rank`. */
function estimate(costs: { params: number[]; kept: number[] }, from: number, to: number, rank: number, m: MemoryModel): StageMemory {
  const sum = (xs: number[]) => xs.slice(from, to).reduce((a, b) => a + b, 0);
  const weights = sum(costs.params);
  const optimizer = weights * m.slotsPerWeight;
  const activations = sum(costs.kept) * m.rows * m.held(rank);
  return { rank, weights, optimizer, activations, total: weights + optimizer + activations };
}

/** Estimates for the stages starting at `starts` (plus the end). */
export function estimateStages(model: tf.LayersModel, starts: readonly number[], m: MemoryModel): StageMemory[] {
  const costs = layerCosts(model, Math.max(1, m.rows));
  return starts.slice(0, -1).map((s, r) => estimate(costs, s, starts[r + 1]!, r, m));
}

const mb = (b: number) => `${(b / 2 ** 20).toFixed(2)} MiB`;

/** How an estimate reads: `1.20 MiB (weights 0.40, optimizer 0.80, activations 0.00)`. */
export function describeMemory(e: StageMemory): string {
  return `${mb(e.total)} (weights ${mb(e.weights)}, optimizer ${mb(e.optimizer)}, activations ${mb(e.activations)})`;
}

/**
 * The cut into `p` stages whose largest estimate is smallest, checked against `budget` bytes
 * per stage. Returns the boundaries (first layer of stages 1..p-1) and the estimates; a
 * PartitionError names the stage over budget when even the best cut does not fit.
 */
export function cutUnderBudget(model: tf.LayersModel, p: number, budget: number, m: MemoryModel): { boundaries: number[]; estimates: StageMemory[] } {
  const costs = layerCosts(model, m.rows);
  const starts = minMaxCut(costs.params.length, p, (from, to, rank) => estimate(costs, from, to, rank, m).total);
  const estimates = starts.slice(0, -1).map((s, r) => estimate(costs, s, starts[r + 1]!, r, m));
  const over = estimates.filter((e) => e.total > budget).sort((a, b) => b.total - a.total)[0];
  if (over) {
    throw new PartitionError(`stage ${over.rank} needs ${describeMemory(over)} even in the best cut into ${p} stages; the budget is ${mb(budget)} per stage`);
  }
  return { boundaries: starts.slice(1, -1), estimates };
}
