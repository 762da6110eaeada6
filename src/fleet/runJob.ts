/**
 * `troupe up`: runs a job on a fleet of worker processes, one stage each, joined only by
 * NATS. The job actor (actors/jobMachine.ts, hosted by driver.ts) starts nats-server (unless
 * given a URL), forks the workers, trains with a progress bar, keeps and checkpoints state,
 * recovers from lost workers, evaluates held-out data; this file checks the job before any
 * process starts, prints the summary, and ends every process the run started on success,
 * failure or interruption.
 */
import * as tf from '@tensorflow/tfjs';
import { waitFor } from 'xstate';
import { ConfigError, InterruptedError, messageOf } from '../errors.js';
import { selectBackend, type BackendName } from '../compute/backend.js';
import { resolveLoss } from '../compute/loss.js';
import { optimizerFactory } from '../compute/optimizer.js';
import { missingOptimizerState } from '../compute/optimizerState.js';
import { reshard } from '../compute/reshard.js';
import { describeMemory, slotsPerWeight } from '../compute/memoryBudget.js';
import { exportStageState, stageWeights } from '../compute/stageState.js';
import type { DType } from '../protocol/dtype.js';
import type { Hello, StatsMessage } from '../protocol/messages.js';
import { checkJobId } from '../protocol/subjects.js';
import type { Plan } from '../runtime/plan.js';
import type { RankState } from '../runtime/stageStates.js';
import type { StepResult } from '../runtime/stepRunner.js';
import { checkStepTensors, labelRuleOf, type StepTensorSpec } from '../runtime/stepTensors.js';
import { hasCheckpoint, loadCheckpoint, prepareCheckpointDir } from './checkpoint.js';
import { Driver } from './driver.js';
import { keepCadence } from './keepCadence.js';
import { jobIdOf, loadJobConfig, type JobConfig, type JobData } from './jobConfig.js';
import { jobPlan } from './jobPlan.js';
import { disposeModel } from '../compute/disposeModel.js';

/** Options of `runJob` (the flags of `troupe up`). */
export interface RunJobOptions {
  /** Path of the job config module. */
  readonly config: string;
  /** A running NATS server to use instead of starting one from nats.conf. */
  readonly nats?: string;
  /** The configuration to start nats-server with (default nats.conf; nats-tls.conf for TLS). */
  readonly natsConfig?: string;
  readonly job?: string;
  /** Save every stage's weights and optimizer state here after every step. */
  readonly checkpointDir?: string;
  /** Continue from the checkpoint in `checkpointDir`. */
  readonly resume?: boolean;
  /** Stop after this many steps in all (default: every step of every epoch). */
  readonly steps?: number;
  /** Write the trained model (model.json + weights.bin) to this directory. */
  readonly save?: string;
  /** Fork one worker per stage (default true); false waits for `troupe worker` processes to join. */
  readonly spawn?: boolean;
  /** Milliseconds to wait for every rank (default 60 s). */
  readonly readyTimeoutMs?: number;
  readonly backend?: BackendName;
  /** Publish every actor's inspection events (workers too) for `troupe inspect`. */
  readonly inspect?: boolean;
  /**
   * Serve the inspector page (and the Stately relay) on 127.0.0.1:<port> (0: a free one) from
   * the moment NATS is up, and print its URL (`troupe up --inspect[=port]`).
   */
  readonly inspectPort?: number;
  /** Write every step's timeline to this file in the Chrome trace event format. */
  readonly trace?: string;
  /** Print the progress bar (default true). */
  readonly progress?: boolean;
  /**
   * `'quiet'`: only what went wrong or needs the user (refused checkpoints, restarts, the
   * workers to start by hand); `'normal'` (default): also the progress bar, the fleet and the
   * summary; `'verbose'`: also a line per checkpoint saved.
   */
  readonly verbosity?: 'quiet' | 'normal' | 'verbose';
  /** Where progress and the summary go (default stdout). */
  readonly out?: NodeJS.WritableStream & { isTTY?: boolean };
  /** Aborts the run (Ctrl-C). */
  readonly signal?: AbortSignal;
  /**
   * Losses to survive (default 0: a dead worker ends the run): a worker that exits or goes
   * silent (restarted), a remote worker replaced by another (`--no-spawn`), the nats-server
   * this run started (started again on its port). Each loads every stage with the state the
   * driver kept last and replays the steps since, on the same batches.
   */
  readonly restarts?: number;
  /**
   * With restarts, the driver keeps every stage's state every this many steps (default: as
   * rarely as keeps a quarter of the bytes the steps move between stages, at most every 100
   * steps; every step with a checkpoint directory). A recovery replays at most this many steps.
   */
  readonly keepEvery?: number;
}

/** What a finished run reports. */
export interface RunJobResult {
  readonly job: string;
  readonly steps: number;
  readonly last: StepResult | null;
  readonly heldOut: StepResult | null;
  readonly workers: readonly Hello[];
  readonly stats: readonly StatsMessage[];
  /** The driver's copy of the model, holding the trained weights. */
  readonly model: tf.LayersModel;
  readonly natsPid: number | null;
  readonly seconds: number;
  /** Wall time of each training step, in milliseconds (checkpoints excluded). */
  readonly stepMs: readonly number[];
  /** Each training step's loss (mean over its batch) and metric, in step order. */
  readonly losses: readonly number[];
  readonly metrics: readonly (number | null)[];
  /** Losses recovered from (worker restarts, replacements, nats-server restarts). */
  readonly restarts: number;
}

/** A job checked and planned, before any process starts. */
export interface Prepared {
  readonly cfg: JobConfig;
  readonly job: string;
  readonly model: tf.LayersModel;
  /** The cut, the placed schedule, the replicas' scopes (the workers get the boundaries). */
  readonly plan: Plan;
  /** What every step's inputs and labels are checked against: the model's inputs and outputs, the loss's label rule. */
  readonly tensors: StepTensorSpec;
  readonly data: JobData;
  readonly stepsPerEpoch: number;
  /** The last step to train. */
  readonly total: number;
  /** The step the run starts after (0, or the checkpoint's on resume). */
  readonly firstStep: number;
}

/** Everything that can be checked before a process starts: config, model, cut, data. */
async function prepareJob(o: RunJobOptions): Promise<Omit<Prepared, 'firstStep'>> {
  const cfg = await loadJobConfig(o.config);
  const where = `job config ${o.config}`;
  const job = checkJobId(o.job ?? jobIdOf(cfg, o.config));
  await selectBackend({ ...(o.backend ? { prefer: o.backend } : {}), log: null });
  const model = await cfg.model();
  if (!(model instanceof tf.LayersModel)) throw new ConfigError(`${where}: field "model" did not return a tf.LayersModel`);
  try {
    return await checkJob(o, cfg, job, model);
  } catch (err) {
    disposeModel(model); // the job is refused: nobody else holds its model
    throw err;
  }
}

/** prepareJob once the model is built: the cut, the loss, the optimizer and the data checked. */
async function checkJob(o: RunJobOptions, cfg: JobConfig, job: string, model: tf.LayersModel): Promise<Omit<Prepared, 'firstStep'>> {
  const where = `job config ${o.config}`;
  // The driver picks the cut (by parameters, measured time or the memory budget); the workers get it as --boundaries.
  const plan = await jobPlan(cfg, model, job, undefined, (field, cause) => new ConfigError(`${where}: field "${field}": ${messageOf(cause)}`, { cause }));
  if (plan.memory && o.verbosity !== 'quiet')
    (o.out ?? process.stdout).write(
      `troupe up: cut under the memory budget: ${plan.memory.estimates.map((e) => `stage ${e.rank} ${describeMemory(e)}`).join('; ')}\n`,
    );
  resolveLoss(cfg.loss, cfg.metric);
  optimizerFactory(cfg.optimizer)().dispose();
  const data = await cfg.data();
  const isTensor = (t: unknown): t is tf.Tensor => t instanceof tf.Tensor;
  const check = (e: { x?: unknown; y?: unknown } | undefined, what: string) => {
    if (!e || !isTensor(e.x) || !isTensor(e.y) || e.x.shape[0] !== e.y.shape[0]) {
      throw new ConfigError(`${where}: field "data" must give ${what}.x and ${what}.y tensors with the same first dimension`);
    }
  };
  check(data?.train, 'train');
  if (data.test !== undefined) check(data.test, 'test');
  // The model's shapes and dtypes, checked before any process starts.
  const tensors: StepTensorSpec = { inputs: plan.partitions[0]!.inputs, outputs: plan.partitions[plan.stages - 1]!.outputs, labels: labelRuleOf(cfg.loss) };
  for (const [what, e] of [
    ['train', data.train],
    ['test', data.test],
  ] as const) {
    if (!e) continue;
    try {
      checkStepTensors([{ name: 'x0', dtype: e.x.dtype as DType, shape: e.x.shape }], [{ name: 'y0', dtype: e.y.dtype as DType, shape: e.y.shape }], tensors);
    } catch (cause) {
      throw new ConfigError(`${where}: field "data": ${what}: ${messageOf(cause)}`, { cause });
    }
  }
  const stepsPerEpoch = Math.floor(data.train.x.shape[0] / cfg.batchSize);
  if (stepsPerEpoch < 1) throw new ConfigError(`${where}: field "batchSize" ${cfg.batchSize} is larger than the ${data.train.x.shape[0]} training examples`);
  if (cfg.batchSize < cfg.microbatches) throw new ConfigError(`${where}: field "batchSize" ${cfg.batchSize} is smaller than microbatches ${cfg.microbatches}`);
  const all = stepsPerEpoch * cfg.epochs;
  if (o.steps !== undefined && !(Number.isInteger(o.steps) && o.steps > 0)) throw new ConfigError(`--steps must be a positive integer, got ${o.steps}`);
  return { cfg, job, model, plan, tensors, data, stepsPerEpoch, total: Math.min(all, o.steps ?? all) };
}

async function initialStates(p: Omit<Prepared, 'firstStep'>): Promise<RankState[]> {
  return Promise.all(
    p.plan.partitions.map(async (part) => {
      const opt = optimizerFactory(p.cfg.optimizer)();
      const s = await exportStageState(part, opt);
      opt.dispose();
      return { rank: part.rank, step: 0, ...s };
    }),
  );
}

/** Runs a job end to end; see the module comment. */
export async function runJob(o: RunJobOptions): Promise<RunJobResult> {
  const t0 = performance.now();
  const prep = await prepareJob(o);
  try {
    return await runPrepared(o, prep, t0);
  } catch (err) {
    // The model is the caller's only in a result; a run that fails (or is interrupted) disposes it.
    disposeModel(prep.model);
    throw err;
  }
}

/** runJob once the job is prepared: the checkpoint, the driver, the summary. */
async function runPrepared(o: RunJobOptions, prep: Omit<Prepared, 'firstStep'>, t0: number): Promise<RunJobResult> {
  const out = o.out ?? process.stdout;
  // Information, and what went wrong or needs the user (printed even when quiet).
  const say = (l: string) => void (o.verbosity !== 'quiet' && out.write(`${l}\n`));
  const warn = (l: string) => void out.write(`${l}\n`);
  const { cfg, job, plan } = prep;
  const k = plan.replicas;
  const p = plan.stages;
  if (o.signal?.aborted) throw new InterruptedError(`job ${job} interrupted before it started`);
  if (o.resume && !o.checkpointDir) throw new ConfigError('--resume needs --checkpoint-dir');
  const restartLimit = o.restarts ?? 0;
  if (!Number.isInteger(restartLimit) || restartLimit < 0) throw new ConfigError(`restarts must be a non-negative integer, got ${String(o.restarts)}`);
  if (restartLimit > 0 && k > 1)
    throw new ConfigError('--restarts is not supported with replicas > 1 yet (a replica stuck in the all-reduce cannot be aborted)');
  if (o.keepEvery !== undefined && !(Number.isInteger(o.keepEvery) && o.keepEvery > 0))
    throw new ConfigError(`--keep-every must be a positive integer, got ${String(o.keepEvery)}`);
  if (o.checkpointDir) {
    // A directory the run cannot write fails it now, not after its first step.
    const { removed, inUse } = await prepareCheckpointDir(o.checkpointDir);
    if (removed.length) say(`troupe up: removed ${removed.length} abandoned checkpoint temporaries in ${o.checkpointDir} (${removed.join(', ')})`);
    if (inUse.length) say(`troupe up: ${inUse.join(', ')} in ${o.checkpointDir} belong to a live process: another run writes checkpoints there`);
  }
  const ckpt = o.resume && o.checkpointDir && hasCheckpoint(o.checkpointDir) ? await loadCheckpoint(o.checkpointDir) : null;
  for (const s of ckpt?.skipped ?? []) warn(`troupe up: checkpoint ${s.name} in ${o.checkpointDir} refused: ${s.reason}`);
  if (o.resume && !ckpt) throw new ConfigError(`--resume: no checkpoint in ${o.checkpointDir}`);
  if (ckpt) {
    const opt = optimizerFactory(cfg.optimizer)();
    const missing = missingOptimizerState(
      opt,
      ckpt.states.flatMap((st) => st.optimizerNames),
    );
    if (missing.length)
      say(
        `troupe up: checkpoint step ${ckpt.meta.step} in ${o.checkpointDir} has no ${missing.join(', ')} (saved by an older Troupe): ` +
          `${opt.getClassName()}'s running values are rebuilt from the step count, so this run is close to, not bit-identical with, an uninterrupted one`,
      );
    opt.dispose();
  }
  // A checkpoint of another cut is resharded by layer name (weights and optimizer slots).
  const partitions = plan.partitions;
  const ckptStates =
    ckpt &&
    (ckpt.meta.stages !== p ||
      ckpt.states.some(
        (s, r) =>
          s.weightNames.join() !==
          stageWeights(partitions[r]!)
            .map((w) => w.originalName)
            .join(),
      ))
      ? reshard(ckpt.states, [...partitions]).map((s, rank) => ({ ...s, rank, step: ckpt.meta.step }))
      : ckpt?.states;
  if (ckpt && ckptStates !== ckpt.states) say(`troupe up: checkpoint of ${ckpt.meta.stages} stages resharded by layer to this job's ${p}`);
  // The state every stage starts from: the driver's initial weights, or the checkpoint.
  const first = { step: ckpt?.meta.step ?? 0, states: ckptStates ?? (await initialStates(prep)) };
  // The state as it will be kept: the weights and the optimizer's slots (a fresh optimizer has none yet).
  const weightBytes = first.states.reduce((n, st) => n + st.tensors.reduce((m, t) => m + (t.name.startsWith('w') ? t.data.byteLength : 0), 0), 0);
  const probe = optimizerFactory(cfg.optimizer)();
  const stateBytes = weightBytes * (1 + slotsPerWeight(probe.getClassName()));
  probe.dispose();
  const keepEvery = o.keepEvery ?? keepCadence(partitions, cfg.batchSize, stateBytes);
  const driver = new Driver(o, { ...prep, firstStep: first.step }, first, keepEvery);
  const onAbort = () => driver.interrupt();
  try {
    driver.actor.start();
    o.signal?.addEventListener('abort', onAbort, { once: true });
    if (o.signal?.aborted) onAbort(); // Ctrl-C while the job was being prepared
    const end = await waitFor(driver.actor, (s) => s.status === 'done', { timeout: Infinity });
    if (end.matches('interrupted') || o.signal?.aborted) throw new InterruptedError(`job ${job} interrupted`);
    if (end.matches('failed')) throw driver.error;
    const r = driver.record();
    const seconds = (performance.now() - t0) / 1000;
    const steps = prep.total - first.step;
    say(
      `summary: job ${job}, ${steps} steps in ${seconds.toFixed(1)} s${r.last ? `, last loss ${r.last.loss.toFixed(4)}` : ''}` +
        `${end.context.restarts ? `, ${end.context.restarts} restart${end.context.restarts > 1 ? 's' : ''}` : ''}`,
    );
    if (r.heldOut)
      say(
        `  held-out: loss ${r.heldOut.loss.toFixed(4)}${r.heldOut.metric !== null ? `, metric ${(r.heldOut.metric * 100).toFixed(2)}%` : ''}` +
          ` on ${prep.data.test!.x.shape[0]} examples`,
      );
    for (const { replica, st } of r.stageStats) {
      say(
        `  ${k > 1 ? `replica ${replica} ` : ''}stage ${st.rank}: busy ${(st.busyMs / 1000).toFixed(2)} s, idle ${(st.idleMs / 1000).toFixed(2)} s, ` +
          `machine ${(st.machineMs / 1000).toFixed(2)} s, reading frames ${(st.framesMs / 1000).toFixed(2)} s, ` +
          `${st.forwards} F / ${st.backwards} B${st.weightGrads ? ` / ${st.weightGrads} W` : ''}, ` +
          `in ${(st.bytesIn / 1e6).toFixed(1)} MB, out ${(st.bytesOut / 1e6).toFixed(1)} MB, peak in flight ${st.peakHeld}, ` +
          `refused ${st.rejected} (dropped unused)${st.conflicts ? `, ${st.conflicts} conflicting (their steps failed)` : ''}`,
      );
    }
    if (o.save) say(`  model saved in ${o.save} (in Node: loadModel(${JSON.stringify(o.save)}) from 'troupe')`);
    await driver.writeTrace();
    return {
      job,
      steps,
      last: r.last,
      heldOut: r.heldOut,
      workers: r.workers,
      stats: r.stageStats.map((s) => s.st),
      model: prep.model,
      natsPid: r.natsPid,
      seconds,
      stepMs: r.stepMs,
      losses: r.losses,
      metrics: r.metrics,
      restarts: end.context.restarts,
    };
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    await driver.close();
  }
}
