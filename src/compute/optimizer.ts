/** Optimizers as data, so each stage (in any process) gets its own instance of the user's choice. */
import * as tf from '@tensorflow/tfjs';
import { ConfigError } from '../errors.js';

/** An optimizer described by its tfjs class name and config (`{ className: 'Adam', config: {...} }`). */
export interface OptimizerDescription {
  readonly className: string;
  readonly config: tf.serialization.ConfigDict;
}

/** An optimizer instance (used as a template: never stepped itself), a factory, or a description. */
export type OptimizerSpec = tf.Optimizer | (() => tf.Optimizer) | OptimizerDescription;

/** The class name and config of an optimizer. */
export function describeOptimizer(opt: tf.Optimizer): OptimizerDescription {
  return { className: opt.getClassName(), config: opt.getConfig() };
}

/** Defaults of tf.train's optimizers (their constructors' defaults), so a description may give only what it changes. */
const DEFAULTS: Record<string, tf.serialization.ConfigDict> = {
  SGD: {},
  Momentum: { useNesterov: false },
  Adam: { learningRate: 0.001, beta1: 0.9, beta2: 0.999 },
  Adamax: { learningRate: 0.002, beta1: 0.9, beta2: 0.999, decay: 0 },
  RMSProp: { decay: 0.9, momentum: 0, centered: false },
  Adagrad: { initialAccumulatorValue: 0.1 },
  Adadelta: { learningRate: 0.001, rho: 0.95 },
};

/** A new optimizer from a description, or a ConfigError naming the unknown class or the missing setting. */
export function createOptimizer(d: OptimizerDescription): tf.Optimizer {
  const entry = tf.serialization.SerializationMap.getMap().classNameMap[d.className];
  if (!entry) throw new ConfigError(`unknown optimizer class "${d.className}"; known: ${Object.keys(DEFAULTS).join(', ')}`);
  const [cls, fromConfig] = entry;
  const config = { ...DEFAULTS[d.className], ...d.config };
  if (typeof config['learningRate'] !== 'number') throw new ConfigError(`optimizer ${d.className} needs a numeric learningRate`);
  return fromConfig(cls, config) as tf.Optimizer;
}

/**
 * A function making fresh optimizers from `spec`. Optimizers keep their slots per variable
 * position and count one iteration per `applyGradients`, so stages must not share one.
 */
export function optimizerFactory(spec: OptimizerSpec): () => tf.Optimizer {
  if (spec instanceof tf.Optimizer) {
    const d = describeOptimizer(spec);
    return () => createOptimizer(d);
  }
  if (typeof spec === 'function') return spec;
  if (spec && typeof spec === 'object' && typeof spec.className === 'string') return () => createOptimizer(spec);
  throw new ConfigError('optimizer must be a tf.Optimizer, a function returning one, or { className, config }');
}
