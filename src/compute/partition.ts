/**
 * Cuts a tf.LayersModel into pipeline stages at layer boundaries. Each stage is a tf.model
 * over fresh inputs for the tensors that cross its cut, re-applying the original layer
 * objects, so every stage shares the original's weights.
 */
import * as tf from '@tensorflow/tfjs';
import { PartitionError } from '../errors.js';
import { balanceByCost } from './balance.js';

type Layer = tf.layers.Layer;
type Sym = tf.SymbolicTensor;

/** How a model is cut: a stage count (even split by parameters) or the first layer of stages 1..p-1. */
export type StageSpec = number | readonly (number | string)[];

/** A tensor crossing into a stage: its shape without the batch dimension and its dtype. */
export interface CutTensor {
  readonly shape: readonly number[];
  readonly dtype: 'float32' | 'int32' | 'bool';
}

/** One stage of a partitioned model. */
export interface StagePartition {
  readonly rank: number;
  readonly stages: number;
  /** Names of the original model's layers in this stage, in order. */
  readonly layerNames: readonly string[];
  /** The original model's layer objects in this stage (shared, not copies). */
  readonly layers: readonly tf.layers.Layer[];
  /** Tensors this stage receives (model inputs for stage 0), in wire order. */
  readonly inputs: readonly CutTensor[];
  /** Tensors this stage sends on (model outputs for the last stage), in wire order. */
  readonly outputs: readonly CutTensor[];
  /** The stage's trainable variables, in a stable order. */
  readonly variables: readonly tf.Variable[];
  /** Number of parameters (trainable and not) in the stage's layers. */
  readonly params: number;
  /** Runs the stage: outputs from inputs, in wire order. Pass-through outputs are the input tensors themselves. */
  run(inputs: readonly tf.Tensor[], training: boolean): tf.Tensor[];
}

/** Layers whose training-time randomness or state would differ when a backward recomputes the forward (activation checkpointing). */
const RECOMPUTE_UNSAFE = new Set(['Dropout', 'SpatialDropout1D', 'SpatialDropout2D', 'GaussianNoise', 'GaussianDropout', 'AlphaDropout', 'BatchNormalization']);

/** Options of `partitionModel`. */
export interface PartitionOptions {
  /**
   * The stages will recompute their forward at backward time (activation checkpointing):
   * refuse layers a recomputed forward cannot reproduce (dropout, batch norm). Default false:
   * a stage keeps its forward's tape, so such layers run once per microbatch.
   */
  readonly recompute?: boolean;
  /**
   * Cost of each layer (in cut order) for a stage count: stages are balanced by these (for
   * example milliseconds from `profileLayers`) instead of by parameter count.
   */
  readonly costs?: readonly number[];
}

function layersOf(model: tf.LayersModel): Layer[] {
  return model.layers.filter((l) => l.getClassName() !== 'InputLayer');
}

function asList<T>(x: T | T[]): T[] {
  return Array.isArray(x) ? x : [x];
}

function dtypeOf(t: Sym, where: string): CutTensor['dtype'] {
  if (t.dtype === 'float32' || t.dtype === 'int32' || t.dtype === 'bool') return t.dtype;
  throw new PartitionError(`${where}: tensor ${t.name} has dtype ${t.dtype}, which frames cannot carry`);
}

function cutOf(t: Sym, where: string): CutTensor {
  const shape = t.shape.slice(1);
  if (shape.some((d) => d === null)) throw new PartitionError(`${where}: tensor ${t.name} has an unknown dimension ${JSON.stringify(t.shape)}`);
  return { shape: shape as number[], dtype: dtypeOf(t, where) };
}

/** Start index of every stage (plus the end), from a stage spec (a count is balanced by `costs`, else by parameters). */
export function stageStarts(model: tf.LayersModel, spec: StageSpec, costs?: readonly number[]): number[] {
  const layers = layersOf(model);
  const n = layers.length;
  if (typeof spec === 'number') {
    if (!Number.isInteger(spec) || spec < 1) throw new PartitionError(`stages must be a positive integer, got ${spec}`);
    if (spec > n) throw new PartitionError(`cannot cut ${n} layers into ${spec} stages`);
    if (costs && (costs.length !== n || costs.some((c) => !(c >= 0))))
      throw new PartitionError(`layer costs: ${n} non-negative numbers expected, got [${costs.join(', ')}]`);
    return balanceByCost(costs ?? layers.map((l) => l.countParams()), spec);
  }
  const starts = spec.map((b, i) => {
    const idx = typeof b === 'number' ? b : layers.findIndex((l) => l.name === b);
    if (typeof b === 'string' && idx < 0) throw new PartitionError(`boundary ${i}: no layer named "${b}"`);
    if (!Number.isInteger(idx) || idx < 1 || idx >= n) throw new PartitionError(`boundary ${i}: layer index ${String(b)} is outside 1..${n - 1}`);
    return idx;
  });
  for (let i = 1; i < starts.length; i++) {
    if (starts[i]! <= starts[i - 1]!) throw new PartitionError(`boundaries must increase: ${JSON.stringify(spec)}`);
  }
  return [0, ...starts, n];
}

/**
 * Cuts `model` into stages. Several tensors may cross a cut (a skip connection); a tensor
 * needed beyond the next stage passes through the stages between.
 *
 * @example
 * const [s0, s1] = partitionModel(model, 2);          // even split by parameter count
 * const parts = partitionModel(model, ['dense_Dense2']); // stage 1 starts at layer dense_Dense2 (see model.layers.map((l) => l.name))
 */
export function partitionModel(model: tf.LayersModel, spec: StageSpec, opts: PartitionOptions = {}): StagePartition[] {
  const layers = layersOf(model);
  if (opts.recompute ?? false) {
    for (const l of layers) {
      const rate = (l.getConfig() as { rate?: number }).rate;
      if (RECOMPUTE_UNSAFE.has(l.getClassName()) && !(l.getClassName().includes('Dropout') && rate === 0)) {
        throw new PartitionError(
          `layer ${l.name} (${l.getClassName()}) cannot be recomputed: ` +
            'a recomputing stage would draw other random masks or update statistics twice at backward time; train it without recompute',
        );
      }
    }
  }
  const starts = stageStarts(model, spec, opts.costs);
  const p = starts.length - 1;
  const stageOfLayer = new Map<Layer, number>();
  for (let s = 0; s < p; s++) for (let i = starts[s]!; i < starts[s + 1]!; i++) stageOfLayer.set(layers[i]!, s);

  // Capture the original graph before any stage re-applies a layer (which adds inbound nodes).
  const nodeInputs = new Map<Layer, Sym[]>();
  const nodeOutputs = new Map<Layer, Sym[]>();
  const producer = new Map<Sym, number>();
  for (const t of model.inputs) producer.set(t, -1);
  for (const l of layers) {
    if (l.inboundNodes.length === 0) throw new PartitionError(`layer ${l.name} is not connected to the model`);
    nodeInputs.set(l, l.inboundNodes[0]!.inputTensors);
    const outs = asList(l.getOutputAt(0));
    nodeOutputs.set(l, outs);
    for (const t of outs) producer.set(t, stageOfLayer.get(l)!);
  }
  // Last stage that consumes each tensor; model outputs are consumed "after" the last stage.
  const lastUse = new Map<Sym, number>();
  const use = (t: Sym, s: number) => lastUse.set(t, Math.max(lastUse.get(t) ?? -1, s));
  for (const l of layers) for (const t of nodeInputs.get(l)!) use(t, stageOfLayer.get(l)!);
  for (const t of model.outputs) use(t, p);
  for (const t of nodeInputs.values())
    for (const x of t) {
      if (!producer.has(x)) throw new PartitionError(`tensor ${x.name} comes from outside the model's layers`);
    }

  // Tensors crossing into stage k: produced before k, still needed at k or later.
  const crossing: Sym[][] = [[...model.inputs]];
  for (let k = 1; k < p; k++) {
    crossing.push([...producer.keys()].filter((t) => producer.get(t)! < k && (lastUse.get(t) ?? -1) >= k));
  }
  crossing.push([...model.outputs]);
  return Array.from({ length: p }, (_, k) => buildStage(k, p, layers.slice(starts[k], starts[k + 1]), crossing[k]!, crossing[k + 1]!, nodeInputs, nodeOutputs));
}

function buildStage(
  rank: number,
  p: number,
  layers: Layer[],
  ins: Sym[],
  outs: Sym[],
  nodeInputs: Map<Layer, Sym[]>,
  nodeOutputs: Map<Layer, Sym[]>,
): StagePartition {
  const where = `stage ${rank}`;
  const fresh = new Map<Sym, Sym>();
  const newInputs = ins.map((t) => {
    const c = cutOf(t, where);
    const x = tf.input({ shape: [...c.shape], dtype: c.dtype });
    fresh.set(t, x);
    return x;
  });
  for (const l of layers) {
    const args = nodeInputs.get(l)!.map((t) => {
      const m = fresh.get(t);
      if (!m) throw new PartitionError(`${where}: layer ${l.name} needs ${t.name}, which does not reach the stage`);
      return m;
    });
    const result = asList(l.apply(args.length === 1 ? args[0]! : args) as Sym | Sym[]);
    nodeOutputs.get(l)!.forEach((t, i) => fresh.set(t, result[i]!));
  }
  // Each output is computed here, or is one of the stage's inputs passed through.
  const passIndex = outs.map((t) => ins.indexOf(t));
  const computed = outs.filter((_, i) => passIndex[i]! < 0).map((t) => fresh.get(t)!);
  const usedInputs = newInputs.filter((x) => layers.some((l) => nodeInputs.get(l)!.some((t) => fresh.get(t) === x)));
  const usedIdx = usedInputs.map((x) => newInputs.indexOf(x));
  const sub = computed.length > 0 ? tf.model({ inputs: usedInputs, outputs: computed }) : null;
  const variables = layers.flatMap((l) => l.trainableWeights.map((w) => w.read() as tf.Variable));
  return {
    rank,
    stages: p,
    layerNames: layers.map((l) => l.name),
    layers,
    inputs: ins.map((t) => cutOf(t, where)),
    outputs: outs.map((t) => cutOf(t, where)),
    variables,
    params: layers.reduce((n, l) => n + l.countParams(), 0),
    run(inputs, training) {
      if (inputs.length !== ins.length) throw new PartitionError(`${where} takes ${ins.length} inputs, got ${inputs.length}`);
      const ys = sub
        ? asList(
            sub.apply(
              usedIdx.map((i) => inputs[i]!),
              { training },
            ) as tf.Tensor | tf.Tensor[],
          )
        : [];
      let j = 0;
      return passIndex.map((pi) => (pi >= 0 ? inputs[pi]! : ys[j++]!));
    },
  };
}

/** The first layer index of every stage of a partition, plus the end (the inverse of `stageStarts`). */
export function stageStartsOf(partitions: readonly StagePartition[]): number[] {
  const starts = [0];
  for (const part of partitions) starts.push(starts[starts.length - 1]! + part.layers.length);
  return starts;
}
