/**
 * Checkpoints keyed by layer, not by stage (as DeepSpeed's are): every stage's state merged
 * into weights by their layers' names and optimizer slots by their variable's layer name and
 * kind, then cut again for any other partition of the same model. A run saved with p stages
 * resumes with q.
 */
import { CheckpointError } from '../errors.js';
import type { WireTensor } from '../protocol/frame.js';
import { isOptimizerScalar } from './optimizerState.js';
import type { StagePartition } from './partition.js';
import { stageWeights, type StageState } from './stageState.js';

/** A model's state by name: weights by original name, optimizer slots by `<weight>/<kind>`, and the optimizer-wide values. */
export interface LayerState {
  readonly weights: ReadonlyMap<string, WireTensor>;
  /** Slot kinds in the optimizer's order (Adam: m, v). */
  readonly kinds: readonly string[];
  readonly slots: ReadonlyMap<string, WireTensor>;
  readonly iter: WireTensor | null;
  /** Optimizer-wide running values besides `iter` (Adam: accBeta1, accBeta2), in saved order. */
  readonly scalars: ReadonlyMap<string, WireTensor>;
}

/** A state's optimizer iteration count (-1 without one). */
function iterOf(s: StageState): number {
  const i = s.optimizerNames.indexOf('iter');
  const t = i < 0 ? undefined : s.tensors.filter((x) => x.name.startsWith('o'))[i];
  return t && t.data.length === 1 ? Number(t.data[0]) : -1;
}

/** Merges the states of every stage of a run into one layer-keyed state. */
export function toLayerState(states: readonly StageState[]): LayerState {
  const weights = new Map<string, WireTensor>();
  const slots = new Map<string, WireTensor>();
  const kinds: string[] = [];
  let iter: WireTensor | null = null;
  const scalars = new Map<string, WireTensor>();
  // Optimizer-wide values come from a stage that stepped: one without trainable weights never
  // applies an update, so its iteration count and running products stay at their start.
  const source = states.reduce<StageState | undefined>((best, s) => (best === undefined || iterOf(s) > iterOf(best) ? s : best), undefined);
  for (const s of states) {
    const ws = s.tensors.filter((t) => t.name.startsWith('w'));
    const os = s.tensors.filter((t) => t.name.startsWith('o'));
    s.weightNames.forEach((n, i) => {
      if (weights.has(n)) throw new CheckpointError(`weight ${n} appears in two stages`);
      weights.set(n, ws[i]!);
    });
    s.optimizerNames.forEach((n, i) => {
      if (isOptimizerScalar(n)) {
        if (s !== source) return;
        if (n === 'iter') iter = os[i]!;
        else scalars.set(n, os[i]!);
        return;
      }
      const cut = n.lastIndexOf('/');
      const kind = n.slice(cut + 1);
      if (!kinds.includes(kind)) kinds.push(kind);
      slots.set(n, os[i]!);
    });
  }
  return { weights, kinds, slots, iter, scalars };
}

/** The state of one stage of another partition, taken from a layer-keyed state. */
function stateForPartition(part: StagePartition, ls: LayerState): StageState {
  const weights = stageWeights(part);
  const tensors: WireTensor[] = [];
  const weightNames = weights.map((w, i) => {
    const t = ls.weights.get(w.originalName);
    if (!t) throw new CheckpointError(`stage ${part.rank}: the checkpoint has no weight ${w.originalName}`);
    tensors.push({ ...t, name: `w${i}` });
    return w.originalName;
  });
  // The optimizer's layout: the iteration, its running values, then each kind for every trainable variable in order.
  const original = new Map(weights.map((w) => [(w as unknown as { val: { name: string } }).val.name, w.originalName] as const));
  const optimizerNames: string[] = [];
  const push = (name: string, t: WireTensor) => {
    tensors.push({ ...t, name: `o${optimizerNames.length}` });
    optimizerNames.push(name);
  };
  if (ls.iter || ls.slots.size > 0) {
    if (ls.iter) push('iter', ls.iter);
    for (const [name, t] of ls.scalars) push(name, t);
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
