/**
 * The driver's check of a step's inputs and labels against the model, before any frame is
 * published: a wrong width or dtype fails at the call with a ShapeError naming the tensor,
 * instead of a stage refusing the frame on the wire.
 */
import { ShapeError } from '../errors.js';
import type { CutTensor } from '../compute/partition.js';
import type { LossSpec } from '../compute/loss.js';
import { floatWire } from '../compute/wire.js';
import type { WireTensor } from '../protocol/frame.js';
import { sizeOf } from '../protocol/dtype.js';

/**
 * How the loss reads its labels: `output` (tfjs's named losses but one: labels shaped as the
 * output), `sparse` (sparseCategoricalCrossentropy: one class id per output row, [n], [n, 1],
 * int32 or float32), `batch` (a loss function: only the batch dimension is known). A named
 * loss computes in float32: its int32 or bool labels travel as float32 (see floatLabels).
 */
export type LabelRule = 'output' | 'sparse' | 'batch';

/** What a step's tensors are checked against. */
export interface StepTensorSpec {
  /** Stage 0's inputs (the model's), without the batch dimension. */
  readonly inputs: readonly CutTensor[];
  /** The last stage's outputs (the model's). */
  readonly outputs: readonly CutTensor[];
  readonly labels: LabelRule;
}

/** The label rule of a loss as `createPipeline` or a job config names it. */
export function labelRuleOf(loss: LossSpec): LabelRule {
  if (typeof loss !== 'string') return 'batch';
  return loss === 'sparseCategoricalCrossentropy' ? 'sparse' : 'output';
}

const fmt = (dtype: string, shape: readonly (number | string)[]) => `${dtype}[${shape.join(',')}]`;

/** What the check reads of a tensor: its name, dtype and shape (a wire tensor, or a data set's description). */
export type TensorDescription = Pick<WireTensor, 'name' | 'dtype' | 'shape'>;

/** tfjs's trainOnBatch takes [n] where it expects [n, 1]; so does the driver, as a view. */
function asColumn<T extends TensorDescription>(w: T, trailing: readonly number[]): T {
  return w.shape.length === 1 && trailing.length === 1 && trailing[0] === 1 ? { ...w, shape: [w.shape[0]!, 1] } : w;
}

function dtypeHint(got: string, want: string): string {
  if (got === 'int32' && want === 'float32') {
    return (
      "; the model's input is float32 (tfjs's default): cast the ids (x.toFloat()) or declare the input int32 " +
      "(tf.input({ shape, dtype: 'int32' }) or a first tf.layers.inputLayer({ inputShape, dtype: 'int32' }))"
    );
  }
  return '';
}

/**
 * Checks `xw` (x0, x1, ...) against the model's inputs and `yw` (y0, ...) against its
 * outputs under the loss's label rule, and returns them as the stages take them (a [n]
 * tensor where [n, 1] is expected becomes [n, 1], as in tfjs). Throws a ShapeError naming
 * the tensor, what was expected and what it got.
 *
 * @example
 * checkStepTensors([x], [y], { inputs: [{ shape: [8], dtype: 'float32' }], outputs: [{ shape: [3], dtype: 'float32' }], labels: 'output' });
 */
export function checkStepTensors<T extends TensorDescription>(xw: readonly T[], yw: readonly T[], spec: StepTensorSpec): { xs: T[]; ys: T[] } {
  if (xw.length !== spec.inputs.length) throw new ShapeError(`the model takes ${spec.inputs.length} input tensor(s), got ${xw.length}`);
  if (yw.length > spec.outputs.length)
    throw new ShapeError(
      `the model has ${spec.outputs.length} output(s), got ${yw.length} label tensors (${yw
        .slice(spec.outputs.length)
        .map((y) => y.name)
        .join(', ')} would be ignored)`,
    );
  const batch = xw[0]?.shape[0];
  for (const t of [...xw, ...yw]) {
    if (t.shape.length === 0 || t.shape[0] !== batch) {
      throw new ShapeError(
        `${t.name}: got ${fmt(t.dtype, t.shape)}, batch dimension ${String(t.shape[0])}, expected ${String(batch)} ` +
          '(every input and label needs the same batch dimension)',
      );
    }
  }
  const n = batch!;
  const xs = xw.map((w, i) => {
    const want = spec.inputs[i]!;
    const x = asColumn(w, want.shape);
    const shape = [n, ...want.shape];
    if (x.dtype !== want.dtype || x.shape.length !== shape.length || x.shape.some((d, j) => d !== shape[j])) {
      throw new ShapeError(
        `input ${w.name}: got ${fmt(w.dtype, w.shape)}, expected ${fmt(want.dtype, shape)} (the model's input ${i})${dtypeHint(w.dtype, want.dtype)}`,
      );
    }
    return x;
  });
  const ys = yw.map((w, i) => {
    const out = spec.outputs[i]!;
    if (spec.labels === 'batch') return w;
    if (spec.labels === 'sparse') {
      // sparseCategoricalCrossentropy flattens the labels: one class id per row of the output's last axis.
      const ids = sizeOf(out.shape.slice(0, -1));
      if (sizeOf(w.shape.slice(1)) !== ids || w.dtype === 'bool') {
        throw new ShapeError(
          `label ${w.name}: got ${fmt(w.dtype, w.shape)}, ` +
            `expected int32 or float32 class ids [${[n, ...out.shape.slice(0, -1)].join(',')}] or [${[n, ...out.shape.slice(0, -1), 1].join(',')}] ` +
            `(sparseCategoricalCrossentropy on the model's output ${fmt(out.dtype, [n, ...out.shape])})`,
        );
      }
      return w;
    }
    const y = asColumn(w, out.shape);
    const shape = [n, ...out.shape];
    if (y.shape.length !== shape.length || y.shape.some((d, j) => d !== shape[j])) {
      throw new ShapeError(
        `label ${w.name}: got ${fmt(w.dtype, w.shape)}, expected ${fmt(w.dtype, shape)}, the shape of the model's output ${i} ` +
          '(its loss takes labels shaped as the output; class ids go with sparseCategoricalCrossentropy)',
      );
    }
    return y;
  });
  return { xs, ys };
}

/**
 * Labels of a named loss as float32: tfjs's losses compute in float32, and some fail or go
 * wrong on other dtypes (sparseCategoricalCrossentropy's floor refuses int32; on wasm,
 * meanAbsolutePercentageError of int32 labels is 0 and bool labels crash the kernels).
 * int32 values up to 2^24 and bools convert exactly. A loss function gets its labels as given.
 */
export function floatLabels(ys: readonly WireTensor[], rule: LabelRule): WireTensor[] {
  if (rule === 'batch') return [...ys];
  return ys.map(floatWire);
}
