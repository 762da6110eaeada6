/** A lone stage over NATS training a seeded MLP, beside that MLP's single-process reference. */
import * as tf from '@tensorflow/tfjs';
import { createPipeline, type FeedMode, type LossSpec, type Pipeline } from '../../src/index.js';
import { mlpAndReference } from './models.js';

export interface LoneStageOptions {
  readonly sizes: readonly number[];
  readonly seed: number;
  readonly microbatches: number;
  readonly job: string;
  /** The nats-server's URL. */
  readonly servers: string;
  /** Default: categorical cross-entropy. */
  readonly loss?: LossSpec;
  readonly feed?: FeedMode;
}

/** `mlpAndReference(sizes, seed)` with SGD(0.1); the model runs as one 1F1B stage in this process. */
export async function loneStage(o: LoneStageOptions): Promise<{ model: tf.Sequential; ref: tf.Sequential; pipe: Pipeline }> {
  const { model, ref } = mlpAndReference(o.sizes, o.seed, tf.train.sgd(0.1));
  const pipe = await createPipeline({
    model,
    stages: 1,
    microbatches: o.microbatches,
    schedule: '1f1b',
    job: o.job,
    ...(o.feed ? { feed: o.feed } : {}),
    optimizer: tf.train.sgd(0.1),
    loss: o.loss ?? 'categoricalCrossentropy',
    nats: { servers: o.servers },
  });
  return { model, ref, pipe };
}
