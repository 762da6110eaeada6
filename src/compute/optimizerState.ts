/**
 * An optimizer's whole state, exactly: tfjs's `getWeights()` plus the running values it leaves
 * out, so that a restored optimizer continues bit for bit like one that never stopped.
 *
 * tfjs's Adam keeps `accBeta1`/`accBeta2` (beta^t, multiplied once a step) outside its
 * weights, and its `setWeights` recomputes them as `pow(beta, t + 1)`, which differs from
 * the product in the last float32 bit after some steps (2, 5, 8, 11, ... for the defaults).
 * Adamax has no `getWeights`/`setWeights` at all and keeps `accBeta1` and a float `iteration`.
 * The other tf.train optimizers (SGD, Momentum, RMSProp, Adagrad, Adadelta) keep nothing
 * beyond their slots and `iter`, which `getWeights` returns.
 *
 * Layout, as `NamedTensor`s: `iter` first, then the optimizer-wide scalars (names without a
 * `/`, e.g. `accBeta1`), then the slots (`<variable>/<kind>`) in the optimizer's order.
 */
import * as tf from '@tensorflow/tfjs';
import { ShapeError, StateError } from '../errors.js';

/** A named tensor, as tfjs's `getWeights()` returns them. */
export interface NamedTensor {
  readonly name: string;
  readonly tensor: tf.Tensor;
}

/** The running scalars each tf.train class keeps outside `getWeights()`, by class name. */
const HIDDEN_STATE: Readonly<Record<string, readonly string[]>> = {
  Adam: ['accBeta1', 'accBeta2'],
  Adamax: ['accBeta1', 'iteration'],
};

/** tf.train's classes: their `setWeights` replaces the slot variables, so the old ones can go. */
const BUILT_IN = new Set(['SGD', 'Momentum', 'RMSProp', 'Adagrad', 'Adadelta', 'Adam', 'Adamax']);

interface SlotVariable {
  originalName: string;
  variable: tf.Variable;
}

/** Adamax's private fields (tfjs 4.x), read and written here because tfjs offers no access. */
interface AdamaxFields {
  accumulatedFirstMoment: SlotVariable[];
  accumulatedWeightedInfNorm: SlotVariable[];
  iterations_: number;
  beta1: number;
}

function fields<T>(opt: tf.Optimizer): T {
  return opt as unknown as T;
}

/** The optimizer's running scalar `name`, or a StateError when this tfjs no longer has it. */
function hiddenVariable(opt: tf.Optimizer, name: string): tf.Variable {
  const v = fields<Record<string, unknown>>(opt)[name];
  if (!(v instanceof tf.Variable))
    throw new StateError(
      `tfjs's ${opt.getClassName()} optimizer has no running value "${name}" (a tfjs version Troupe does not know): its exact state cannot be saved`,
    );
  return v as tf.Variable;
}

/** True for a name of an optimizer-wide value (`iter`, `accBeta1`) rather than a variable's slot. */
export function isOptimizerScalar(name: string): boolean {
  return !name.includes('/');
}

/**
 * Everything the optimizer keeps, in the layout above. The slots and running scalars are the
 * optimizer's own variables (do not dispose them); `iter` is a new tensor.
 */
export async function readOptimizerState(opt: tf.Optimizer): Promise<NamedTensor[]> {
  const cls = opt.getClassName();
  const hidden = (HIDDEN_STATE[cls] ?? []).map((name) => ({ name, tensor: hiddenVariable(opt, name) }));
  if (cls === 'Adamax') {
    const f = fields<AdamaxFields>(opt);
    const slots = [...f.accumulatedFirstMoment, ...f.accumulatedWeightedInfNorm].map((s) => ({ name: s.originalName, tensor: s.variable }));
    return [{ name: 'iter', tensor: tf.scalar(opt.iterations, 'int32') }, ...hidden, ...slots];
  }
  const all = await opt.getWeights();
  return hidden.length === 0 ? all : [all[0]!, ...hidden, ...all.slice(1)];
}

/** The names of running scalars `opt` keeps that a saved state (its optimizer tensor names) lacks. */
export function missingOptimizerState(opt: tf.Optimizer, names: readonly string[]): string[] {
  if (names.length === 0) return [];
  return (HIDDEN_STATE[opt.getClassName()] ?? []).filter((n) => !names.includes(n));
}

function checkScalar(t: tf.Tensor, name: string): void {
  if (t.rank !== 0 || t.dtype !== 'float32') throw new ShapeError(`optimizer value ${name} is ${t.dtype}[${t.shape.join(',')}], expected a float32 scalar`);
}

/**
 * Puts a state read by `readOptimizerState` (in this process or another) into `opt`. A state
 * without the running scalars (saved before they were) gets tfjs's own reconstruction,
 * `pow(beta, iter + 1)`: close to, not bit-identical with, an uninterrupted run.
 */
export async function writeOptimizerState(opt: tf.Optimizer, state: readonly NamedTensor[]): Promise<void> {
  const cls = opt.getClassName();
  const hiddenNames = HIDDEN_STATE[cls] ?? [];
  const given = state.filter((s) => hiddenNames.includes(s.name));
  for (const s of given) checkScalar(s.tensor, s.name);
  // Copies: the given tensors may be the optimizer's own variables (its state written back),
  // which tfjs's setWeights overwrites before they are put back.
  const hidden = new Map(given.map((s) => [s.name, tf.clone(s.tensor)] as const));
  try {
    await writeAll(
      opt,
      cls,
      state.filter((s) => !hiddenNames.includes(s.name)),
      hidden,
    );
  } finally {
    tf.dispose([...hidden.values()]);
  }
}

async function writeAll(opt: tf.Optimizer, cls: string, rest: readonly NamedTensor[], hidden: ReadonlyMap<string, tf.Tensor>): Promise<void> {
  if (BUILT_IN.has(cls) && rest[0]?.name !== 'iter')
    throw new ShapeError(`optimizer state must begin with "iter", it begins with "${rest[0]?.name ?? '(nothing)'}"`);
  if (cls === 'Adamax') {
    await writeAdamax(opt, rest, hidden);
    return;
  }
  const before = BUILT_IN.has(cls) ? await opt.getWeights() : [];
  await opt.setWeights([...rest]);
  // tfjs's setWeights makes new slot variables and drops the old ones without freeing them.
  const now = new Set((BUILT_IN.has(cls) ? await opt.getWeights() : []).map((s) => s.tensor));
  tf.dispose(before.map((s) => s.tensor).filter((t) => !now.has(t)));
  tf.dispose([...now].filter((t) => !(t instanceof tf.Variable)));
  for (const [name, t] of hidden) hiddenVariable(opt, name).assign(t);
}

async function writeAdamax(opt: tf.Optimizer, rest: readonly NamedTensor[], hidden: ReadonlyMap<string, tf.Tensor>): Promise<void> {
  const f = fields<AdamaxFields>(opt);
  const slots = rest.slice(1);
  if (slots.length % 2 !== 0) throw new ShapeError(`Adamax state has ${slots.length} slots, expected a first moment and an infinity norm per variable`);
  const iterations = (await rest[0]!.tensor.data())[0]!;
  const accBeta1 = hiddenVariable(opt, 'accBeta1');
  const iteration = hiddenVariable(opt, 'iteration');
  const old = [...f.accumulatedFirstMoment, ...f.accumulatedWeightedInfNorm].map((s) => s.variable);
  const half = slots.length / 2;
  // New variables share the given tensors' data, so the old ones may go even when they are those tensors.
  const asSlot = (s: NamedTensor): SlotVariable => ({ originalName: s.name, variable: s.tensor.variable(false) });
  f.accumulatedFirstMoment = slots.slice(0, half).map(asSlot);
  f.accumulatedWeightedInfNorm = slots.slice(half).map(asSlot);
  tf.dispose(old);
  f.iterations_ = iterations;
  tf.tidy(() => {
    // As Adam's setWeights does, when the state predates the running values.
    accBeta1.assign(hidden.get('accBeta1') ?? tf.pow(f.beta1, iterations + 1));
    iteration.assign(hidden.get('iteration') ?? tf.scalar(iterations));
  });
}
