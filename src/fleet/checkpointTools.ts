/** `troupe checkpoint inspect|export`: what a checkpoint holds, and the whole model from it. */
import * as tf from '@tensorflow/tfjs';
import { CheckpointError } from '../errors.js';
import { toLayerState } from '../compute/reshard.js';
import { toTensor } from '../compute/wire.js';
import { loadCheckpoint } from './checkpoint.js';
import { loadJobConfig } from './jobConfig.js';
import { saveModel } from './saveModel.js';

/** A readable summary: step, run configuration, and every layer weight with its shape. */
export async function describeCheckpoint(dir: string): Promise<string> {
  const c = await loadCheckpoint(dir);
  const lines = [
    `checkpoint ${dir}: step ${c.meta.step} of job ${c.meta.job}, saved ${c.meta.savedAt}`,
    `  run: ${c.meta.stages} stages, schedule ${c.meta.schedule}, ${c.meta.microbatches} microbatches`,
  ];
  for (const s of c.skipped) lines.push(`  refused ${s.name}: ${s.reason}`);
  for (const st of c.states) {
    const ws = st.tensors.filter((t) => t.name.startsWith('w'));
    lines.push(`  stage ${st.rank}: ${st.optimizerNames.length} optimizer tensors`);
    st.weightNames.forEach((n, i) => lines.push(`    ${n} [${ws[i]!.shape.join(', ')}] ${ws[i]!.dtype}`));
  }
  const params = c.states.flatMap((s) => s.tensors.filter((t) => t.name.startsWith('w'))).reduce((n, t) => n + t.data.length, 0);
  lines.push(`  ${params} parameters in all`);
  return lines.join('\n');
}

/** Builds the job's model, writes the checkpoint's weights into it by layer name, and saves it as a TF.js model directory. */
export async function exportCheckpoint(dir: string, config: string, out: string): Promise<{ step: number; weights: number }> {
  const c = await loadCheckpoint(dir);
  const cfg = await loadJobConfig(config);
  const model = await cfg.model();
  try {
    const ls = toLayerState(c.states);
    const missing = model.weights.filter((w) => !ls.weights.has(w.originalName)).map((w) => w.originalName);
    if (missing.length) throw new CheckpointError(`checkpoint ${dir} lacks the model's weights ${missing.join(', ')}`);
    tf.tidy(() => model.weights.forEach((w) => w.write(toTensor(ls.weights.get(w.originalName)!, undefined, undefined, w.originalName))));
    await saveModel(model, out);
    return { step: c.meta.step, weights: model.weights.length };
  } finally {
    model.dispose();
  }
}
