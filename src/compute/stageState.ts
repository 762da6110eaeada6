/**
 * A stage's state as wire tensors: its layers' weights (`w0..`) and its optimizer's slots
 * (`o0..`), with their names, for checkpoints and for moving weights between processes.
 */
import * as tf from '@tensorflow/tfjs';
import { ShapeError } from '../errors.js';
import type { WireTensor } from '../protocol/frame.js';
import type { StagePartition } from './partition.js';
import { readOptimizerState, writeOptimizerState } from './optimizerState.js';
import { fromTensor, toTensor } from './wire.js';

/** A stage's weights and optimizer state, ready to send or save. */
export interface StageState {
  /** Names of `w<i>`: the variables' original names (`dense_Dense1/kernel`). */
  readonly weightNames: readonly string[];
  /** Names of `o<i>`: the optimizer's state (`iter`, running scalars such as `accBeta1`, slots `.../m`). */
  readonly optimizerNames: readonly string[];
  readonly tensors: readonly WireTensor[];
}

/** Every weight of the stage's layers (trainable or not), in a stable order. */
export function stageWeights(part: StagePartition): tf.LayerVariable[] {
  return part.layers.flatMap((l) => l.weights);
}

/** Reads the stage's weights and its optimizer's state. */
export async function exportStageState(part: StagePartition, optimizer: tf.Optimizer): Promise<StageState> {
  const weights = stageWeights(part);
  const slots = await readOptimizerState(optimizer);
  const tensors = await Promise.all([...weights.map((w, i) => fromTensor(w.read(), `w${i}`)), ...slots.map((s, i) => fromTensor(s.tensor, `o${i}`))]);
  tf.dispose(slots.map((s) => s.tensor).filter((t) => !(t instanceof tf.Variable)));
  // Slots are named by the variable's layer name (`dense_Dense1/kernel/m`), not this model's
  // variable name (which another copy of the model suffixes): states move between models and cuts.
  const original = new Map(weights.map((w) => [(w as unknown as { val: { name: string } }).val.name, w.originalName] as const));
  const portable = (name: string) => {
    const cut = name.lastIndexOf('/');
    if (cut < 0) return name;
    const v = original.get(name.slice(0, cut));
    return v ? `${v}${name.slice(cut)}` : name;
  };
  return { weightNames: weights.map((w) => w.originalName), optimizerNames: slots.map((s) => portable(s.name)), tensors };
}

/** Writes weights (and, when present, optimizer state) into the stage; checks count and shapes. */
export async function importStageState(part: StagePartition, optimizer: tf.Optimizer, state: StageState): Promise<void> {
  const weights = stageWeights(part);
  const ws = state.tensors.filter((t) => t.name.startsWith('w'));
  const os = state.tensors.filter((t) => t.name.startsWith('o'));
  if (ws.length !== weights.length) throw new ShapeError(`stage ${part.rank} has ${weights.length} weights, the state has ${ws.length}`);
  if (os.length !== state.optimizerNames.length) throw new ShapeError(`optimizer state has ${os.length} tensors for ${state.optimizerNames.length} names`);
  ws.forEach((w, i) => {
    const v = weights[i]!;
    const same = w.shape.length === v.shape.length && w.shape.every((d, j) => d === v.shape[j]);
    if (!same)
      throw new ShapeError(
        `weight ${state.weightNames[i] ?? i} has shape [${w.shape.join(',')}], stage ${part.rank}'s ${v.originalName} is [${v.shape.join(',')}]`,
      );
  });
  tf.tidy(() => ws.forEach((w, i) => weights[i]!.write(toTensor(w, undefined, undefined, `weight ${i}`))));
  if (os.length > 0) {
    const named = os.map((o, i) => ({ name: state.optimizerNames[i]!, tensor: toTensor(o, undefined, undefined, `optimizer slot ${i}`) }));
    try {
      await writeOptimizerState(optimizer, named);
    } finally {
      tf.dispose(named.map((n) => n.tensor));
    }
  }
}
