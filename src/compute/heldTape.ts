/**
 * A forward's gradient tape, kept past the forward so that its backward needs no
 * recomputation, and walked in two parts: B (the gradients that flow back to the stage's
 * inputs) and W (the variables' gradients), as zero-bubble schedules need.
 *
 * tfjs records a tape only inside `engine.gradients()`, which runs forward and backward in one
 * synchronous call. Here the engine's own tape switch (`startTape`/`endTape`) is turned on for
 * the forward alone and the recorded nodes are taken away from the engine. Each node holds the
 * tensors its gradient function needs (kept clones); they are freed when the walk ends or the
 * tape is dropped. The gradient functions are tfjs's own: B then W calls exactly the functions
 * one `engine.gradients()` would, with the same upstream gradients.
 */
import * as tf from '@tensorflow/tfjs';
import { StateError } from '../errors.js';

/** A tfjs tape node (the engine's internal shape). */
interface TapeNode {
  readonly id: number;
  readonly kernelName: string;
  readonly inputs: Record<string, tf.Tensor>;
  readonly outputs: tf.Tensor[];
  readonly saved?: tf.Tensor[];
  readonly gradient?: (dys: tf.Tensor[]) => Record<string, () => tf.Tensor>;
}

interface EngineInternals {
  state: { gradientDepth: number; activeTape: TapeNode[] | null; activeScope: { track: tf.Tensor[] } | null };
  startTape(): void;
  endTape(): void;
}

function engine(): EngineInternals {
  return tf.engine() as unknown as EngineInternals;
}

/** A variable gradient whose computation waits for W: the node's lazy function and the upstream gradients it closes over. */
interface Deferred {
  readonly node: TapeNode;
  readonly inputName: string;
  readonly grad: () => tf.Tensor;
}

/**
 * The tape of one forward. `outputs` are ids only: the output tensors themselves may be
 * freed once sent. Call `backwardInputs` then `backwardWeights` (or `backward` for both), or
 * `dispose` to drop it.
 */
export class HeldTape {
  private deferred: Deferred[] = [];
  /** Upstream gradients kept alive for W: the tensors the deferred functions close over. */
  private keptForW: tf.Tensor[] = [];
  private stage: 'recorded' | 'inputs-done' | 'done' = 'recorded';
  /** Tensors whose gradients only the variables need: computed at W. */
  private weightOnly = new Set<number>();

  private constructor(
    /** Bytes of activations the tape keeps (weights excluded). */
    readonly bytes: number,
    private readonly nodes: TapeNode[],
    private readonly inputIds: readonly number[],
    private readonly inputShapes: readonly number[][],
    private readonly outputIds: readonly number[],
    private readonly variables: readonly tf.Variable[],
  ) {}

  /**
   * Runs `f` with the tape on. Returns its outputs (owned by the caller) and the tape;
   * `inputs` are the tensors the stage's input gradients are taken with respect to.
   */
  static record(f: () => tf.Tensor[], inputs: readonly tf.Tensor[], variables: readonly tf.Variable[]): { outputs: tf.Tensor[]; tape: HeldTape } {
    const e = engine();
    if (e.state.gradientDepth !== 0) throw new StateError('a stage forward cannot be recorded inside another gradient computation');
    let outputs: tf.Tensor[];
    e.startTape();
    try {
      outputs = tf.tidy(f);
    } catch (err) {
      freeSaved(e.state.activeTape ?? []);
      e.state.activeTape = null;
      throw err;
    } finally {
      e.endTape();
    }
    const nodes = e.state.activeTape ?? [];
    e.state.activeTape = null;
    // Bytes the tape keeps alive beyond the weights (its saved activations).
    const weightData = new Set(variables.map((v) => v.dataId));
    const seen = new Set<object>();
    let bytes = 0;
    for (const n of nodes) {
      for (const t of n.saved ?? []) {
        if (weightData.has(t.dataId) || seen.has(t.dataId)) continue;
        seen.add(t.dataId);
        bytes += t.size * (t.dtype === 'float32' || t.dtype === 'int32' ? 4 : 1);
      }
    }
    return {
      outputs,
      tape: new HeldTape(
        bytes,
        nodes,
        inputs.map((t) => t.id),
        inputs.map((t) => t.shape),
        outputs.map((t) => t.id),
        variables,
      ),
    };
  }

  /** Number of nodes recorded (for tests). */
  get size(): number {
    return this.nodes.length;
  }

  /** Whether B is still owed. */
  get inputsPending(): boolean {
    return this.stage === 'recorded';
  }

  /**
   * B: backpropagates `dys` (one per output; a scalar output may take none, meaning 1) to the
   * stage's inputs. Variable gradients are left for `backwardWeights`. Returns the input
   * gradients (zeros for an input the outputs do not depend on), owned by the caller.
   */
  backwardInputs(dys: readonly (tf.Tensor | null)[]): tf.Tensor[] {
    if (this.stage !== 'recorded') throw new StateError('the input gradients of this tape were already taken');
    const fromInput = reachableFrom(this.nodes, new Set(this.inputIds));
    const fromVariable = reachableFrom(this.nodes, new Set(this.variables.map((v) => v.id)));
    for (const id of fromInput) fromVariable.delete(id);
    this.weightOnly = fromVariable;
    const out = this.orFinish(() =>
      tf.tidy(() => {
        const map = new Map<number, tf.Tensor>();
        this.outputIds.forEach((id, i) => {
          const dy = dys[i];
          if (dy) map.set(id, dy.clone());
          else if (dys.length === 0 && i === 0) map.set(id, tf.scalar(1));
        });
        const kept: tf.Tensor[] = [];
        for (let i = this.nodes.length - 1; i >= 0; i--) {
          const node = this.nodes[i]!;
          const upstream = upstreamOf(node, map);
          if (!upstream) continue;
          const { fns, made } = gradientsOf(node, upstream);
          let defers = false;
          for (const [name, input] of Object.entries(node.inputs)) {
            if (fromInput.has(input.id))
              accumulate(
                map,
                input,
                tf.tidy(() => call(fns, name, node)),
              );
            else if (fromVariable.has(input.id)) {
              this.deferred.push({ node, inputName: name, grad: () => call(fns, name, node) });
              defers = true;
            }
          }
          // What a deferred function closes over (upstream gradients, or gradients already made) leaves the tidy with the results.
          if (defers) kept.push(...upstream, ...made);
        }
        const grads = this.inputIds.map((id, k) => map.get(id) ?? tf.zeros(this.inputShapes[k]!));
        return { grads, kept: [...new Set(kept)].filter((t) => !grads.includes(t)) };
      }),
    );
    this.keptForW = out.kept;
    this.stage = 'inputs-done';
    return out.grads;
  }

  /** W: the variables' gradients, in the order of `variables` (null for one the outputs do not depend on). */
  backwardWeights(): (tf.Tensor | null)[] {
    if (this.stage !== 'inputs-done') throw new StateError(this.stage === 'done' ? 'the weight gradients of this tape were already taken' : 'W before B');
    const weightOnly = this.weightOnly;
    const grads = this.orFinish(() =>
      tf.tidy(() => {
        const map = new Map<number, tf.Tensor>();
        const byNode = new Map<number, Deferred[]>();
        for (const d of this.deferred) byNode.set(d.node.id, [...(byNode.get(d.node.id) ?? []), d]);
        for (let i = this.nodes.length - 1; i >= 0; i--) {
          const node = this.nodes[i]!;
          const deferred = byNode.get(node.id);
          if (deferred) {
            for (const d of deferred) accumulate(map, node.inputs[d.inputName]!, tf.tidy(d.grad));
            continue;
          }
          // A node computed from variables alone (a transposed kernel, say): its gradient goes on to them.
          if (!node.outputs.every((o) => weightOnly.has(o.id))) continue;
          const upstream = upstreamOf(node, map);
          if (!upstream) continue;
          const { fns } = gradientsOf(node, upstream);
          for (const [name, input] of Object.entries(node.inputs)) {
            if (weightOnly.has(input.id))
              accumulate(
                map,
                input,
                tf.tidy(() => call(fns, name, node)),
              );
          }
        }
        return this.variables.map((v) => map.get(v.id) ?? null) as tf.Tensor[];
      }),
    ) as (tf.Tensor | null)[];
    // A gradient made in B (by a customGrad op) may be returned as it is: it is the caller's now.
    this.keptForW = this.keptForW.filter((t) => !grads.includes(t));
    this.finish();
    return grads;
  }

  /** B and W in one go: input gradients and variable gradients. */
  backward(dys: readonly (tf.Tensor | null)[]): { inputs: tf.Tensor[]; variables: (tf.Tensor | null)[] } {
    const inputs = this.backwardInputs(dys);
    try {
      return { inputs, variables: this.backwardWeights() };
    } catch (err) {
      tf.dispose(inputs);
      throw err;
    }
  }

  /** Frees what the tape holds (an aborted step, or after W). */
  dispose(): void {
    if (this.stage === 'done' && this.nodes.length === 0) return;
    this.finish();
  }

  /** Runs a walk; if it throws, the tape is spent and freed (its deferred gradients may have lost their tensors). */
  private orFinish<T>(walk: () => T): T {
    try {
      return walk();
    } catch (err) {
      this.finish();
      throw err;
    }
  }

  private finish(): void {
    freeSaved(this.nodes);
    this.nodes.length = 0;
    tf.dispose(this.keptForW);
    this.keptForW = [];
    this.deferred = [];
    this.stage = 'done';
  }
}

/** Ids of the tensors computed (transitively) from `seeds`, seeds included. */
function reachableFrom(nodes: readonly TapeNode[], seeds: ReadonlySet<number>): Set<number> {
  const reached = new Set(seeds);
  for (const node of nodes) {
    if (Object.values(node.inputs).some((t) => reached.has(t.id))) for (const o of node.outputs) reached.add(o.id);
  }
  return reached;
}

/**
 * The gradients flowing into a node's outputs, or null when none does (the node is off the
 * path). Outputs without one get zeros, as tfjs's own backprop gives them.
 */
function upstreamOf(node: TapeNode, map: ReadonlyMap<number, tf.Tensor>): tf.Tensor[] | null {
  const got = node.outputs.map((o) => map.get(o.id));
  if (got.every((d) => d === undefined)) return null;
  return got.map((d, i) => d ?? tf.zeros(node.outputs[i]!.shape));
}

/**
 * A node's lazy gradient functions for the given upstream gradients, and the tensors made while
 * getting them: most kernels compute nothing until a function is called, but a `customGrad` op
 * (a fused matMul, say) computes every gradient at once and its functions return those tensors.
 */
function gradientsOf(node: TapeNode, upstream: tf.Tensor[]): { fns: Record<string, () => tf.Tensor>; made: tf.Tensor[] } {
  if (!node.gradient) throw new StateError(`no gradient is registered for the kernel ${node.kernelName}`);
  const scope = engine().state.activeScope;
  const before = scope?.track.length ?? 0;
  const fns = node.gradient(upstream);
  return { fns, made: scope ? scope.track.slice(before) : [] };
}

function call(fns: Record<string, () => tf.Tensor>, name: string, node: TapeNode): tf.Tensor {
  const fn = fns[name];
  if (!fn) throw new StateError(`the gradient of ${node.kernelName} has no function for its input ${name}`);
  return fn();
}

function accumulate(map: Map<number, tf.Tensor>, x: tf.Tensor, dx: tf.Tensor): void {
  if (dx.dtype !== 'float32') throw new StateError(`the gradient of a ${x.dtype} tensor came out ${dx.dtype}`);
  const prev = map.get(x.id);
  map.set(x.id, prev ? tf.add(prev, dx) : dx);
}

function freeSaved(nodes: readonly TapeNode[]): void {
  for (const node of nodes) tf.dispose(node.saved ?? []);
}
