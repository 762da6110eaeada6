/**
 * Checkpoints keyed by layer, not by stage (as DeepSpeed's are): every stage's state merged
 * into weights by their layers' names and optimizer slots by their variable's layer name and
 * kind, then cut again for any other partition of the same model. A run saved with p stages
 * resumes with q.
 */
import { CheckpointError } from '../errors.js';
import type { WireTensor } from '../protocol/frame.js';
import type { StagePartition } from './partition.js';
import { stageWeights, type StageState } from './stageState.js';

/** A model's state by name: weights by original name, optimizer slots by `<weight>/<kind>`, and the iteration count. */
export interface LayerState {
  readonly weights: ReadonlyMap<string, WireTensor>;
  /** Slot kinds in the optimizer's order (Adam: m, v). */
  readonly kinds: readonly string[];
  readonly slots: ReadonlyMap<string, WireTensor>;
  readonly iter: WireTensor | null;
}

/** Merges the states of every stage of a run into one layer-keyed state. */
export function toLayerState(states: readonly StageState[]): LayerState {
  const weights = new Map<string, WireTensor>();
  const slots = new Map<string, WireTensor>();
  const kinds: string[] = [];
  let iter: WireTensor | null = null;
  for (const s of states) {
    const ws = s.tensors.filter((t) => t.name.startsWith('w'));
    const os = s.tensors.filter((t) => t.name.startsWith('o'));
    s.weightNames.forEach((n, i) => {
      if (weights.has(n)) throw new CheckpointError(`weight ${n} appears in two stages`);
      weights.set(n, ws[i]!);
    });
    s.optimizerNames.forEach((n, i) => {
      if (n === 'iter') {
        iter ??= os[i]!;
        return;
      }
      const cut = n.lastIndexOf('/');
      const kind = n.slice(cut + 1);
      if (!kinds.includes(kind)) kinds.push(kind);
      slots.set(n, os[i]!);
    });
  }
  return { weights, kinds, slots, iter };
}

/** The state of one stage of another partition, taken from a layer-keyed state. */
export function stateForPartition(part: StagePartition, ls: LayerState): StageState {
  const weights = stageWeights(part);
  const tensors: WireTensor[] = [];
  const weightNames = weights.map((w, i) => {
    const t = ls.weights.get(w.originalName);
    if (!t) throw new CheckpointError(`stage ${part.rank}: the checkpoint has no weight ${w.originalName}`);
    tensors.push({ ...t, name: `w${i}` });
    return w.originalName;
  });
  // Slots in the optimizer's layout: the iteration, then each kind for every trainable variable in order.
  const original = new Map(weights.map((w) => [(w as unknown as { val: { name: string } }).val.name, w.originalName] as const));
  const optimizerNames: string[] = [];
  const push = (name: string, t: WireTensor) => {
    tensors.push({ ...t, name: `o${optimizerNames.length}` });
    optimizerNames.push(name);
  };
  if (ls.iter || ls.slots.size > 0) {
    if (ls.iter) push('iter', ls.iter);
    for (const kind of ls.kinds) {
      for (const v of part.variables) {
        const name = `${original.get(v.name) ?? v.name}/${kind}`;
        const t = ls.slots.get(name);
        if (!t) throw new CheckpointError(`stage ${part.rank}: the checkpoint has no optimizer slot ${name}`);
        push(name, t);
      }
    }
  }
  return { weightNames, optimizerNames, tensors };
}

/** Every stage's state of `partitions`, cut from states saved under any other partition. */
export function reshard(states: readonly StageState[], partitions: readonly StagePartition[]): StageState[] {
  const ls = toLayerState(states);
  return partitions.map((p) => stateForPartition(p, ls));
}
