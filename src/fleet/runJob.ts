/**
 * `troupe up`: runs a job on a fleet of worker processes, one stage each, joined only by
 * NATS. Starts nats-server (unless given a URL), forks the workers, trains with a progress
 * bar, checkpoints, evaluates held-out data, prints a summary, and ends every process it
 * started on success, failure or interruption.
 */
import { mkdir, rm, writeFile } from 'node:fs/promises';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { ConfigError, InterruptedError, StageError, StateError, messageOf } from '../errors.js';
import { selectBackend, type BackendName } from '../compute/backend.js';
import { resolveLoss } from '../compute/loss.js';
import { optimizerFactory } from '../compute/optimizer.js';
import { missingOptimizerState } from '../compute/optimizerState.js';
import { partitionModel, stageStartsOf, type StagePartition } from '../compute/partition.js';
import { profileLayers } from '../compute/profileLayers.js';
import { reshard } from '../compute/reshard.js';
import { cutUnderBudget, describeMemory, slotsPerWeight, type MemoryModel } from '../compute/memoryBudget.js';
import { maxInFlight } from '../schedule/constraint.js';
import { exportStageState, importStageState, stageWeights } from '../compute/stageState.js';
import { fromTensor } from '../compute/wire.js';
import type { WireTensor } from '../protocol/frame.js';
import type { DType } from '../protocol/dtype.js';
import { sliceRows } from '../protocol/rows.js';
import { decodeReply, encodeJson, type Hello, type StatsMessage } from '../protocol/messages.js';
import { CtlVerb, checkJobId, ctlSubject } from '../protocol/subjects.js';
import { deviceOf, type PlacedSchedule } from '../schedule/interleaved.js';
import { buildPlacedSchedule } from '../schedule/schedules.js';
import { deferred } from '../runtime/deferred.js';
import { SchedulerHost } from '../runtime/schedulerHost.js';
import { dropStep, dumpStates, loadStates, type RankState } from '../runtime/stageStates.js';
import { StepRunner, type StepResult } from '../runtime/stepRunner.js';
import { checkStepTensors, labelRuleOf, type StepTensorSpec } from '../runtime/stepTensors.js';
import { TraceRecorder } from '../inspect/trace.js';
import { startInspector, type Inspector } from '../inspect/inspectorServer.js';
import { Bus } from '../transport/bus.js';
import { hasCheckpoint, loadCheckpoint, prepareCheckpointDir, saveCheckpoint } from './checkpoint.js';
import { countGpus, deviceEnv } from './device.js';
import { jobIdOf, loadJobConfig, type JobConfig, type JobData } from './jobConfig.js';
import { startNatsServer, type NatsServer } from './natsServer.js';
import { removeWithThisProcess } from './tiedProcess.js';
import { Progress } from './progress.js';
import { saveModel } from './saveModel.js';
import { Supervisor, type WorkerExit } from './supervisor.js';
import { replicaJob } from './worker.js';
import { roleEnv, writeCredentialsFile } from '../transport/credentials.js';
import { stageRole } from '../protocol/subjects.js';
import { runReplicas } from '../runtime/replicas.js';
import { waitForWorkers } from './waitForWorkers.js';

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
   * Worker deaths to survive (default 0: a dead worker ends the run). Each death restarts the
   * worker, loads every stage with the state of the last completed step (the driver keeps a
   * copy after every step) and replays the interrupted step.
   */
  readonly restarts?: number;
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
}

export { InterruptedError } from '../errors.js';

interface Prepared {
  readonly cfg: JobConfig;
  readonly job: string;
  readonly model: tf.LayersModel;
  readonly partitions: StagePartition[];
  /** The schedule, with each device's order when devices host several stages. */
  readonly schedule: PlacedSchedule;
  readonly data: JobData;
  readonly stepsPerEpoch: number;
  readonly total: number;
}

/** Everything that can be checked before a process starts: config, model, cut, data. */
export async function prepareJob(o: RunJobOptions): Promise<Prepared> {
  const cfg = await loadJobConfig(o.config);
  const where = `job config ${o.config}`;
  const job = checkJobId(o.job ?? jobIdOf(cfg, o.config));
  await selectBackend({ ...(o.backend ? { prefer: o.backend } : {}), log: null });
  const model = await cfg.model();
  if (!(model instanceof tf.LayersModel)) throw new ConfigError(`${where}: field "model" did not return a tf.LayersModel`);
  let partitions: StagePartition[];
  let spec = cfg.stages;
  if (cfg.memoryBudget !== undefined) {
    // Under a memory budget the driver picks the cut (the workers get it as --boundaries).
    if (typeof cfg.stages !== 'number') throw new ConfigError(`${where}: field "memoryBudget" chooses the cut: give "stages" as a count`);
    const bounds = buildPlacedSchedule(cfg.schedule ?? '1f1b', cfg.stages, cfg.microbatches, cfg.virtualStages ?? 1).stages.map(maxInFlight);
    const probe = optimizerFactory(cfg.optimizer)();
    const memory: MemoryModel = { slotsPerWeight: slotsPerWeight(probe.getClassName()), rows: Math.ceil(cfg.batchSize / (cfg.replicas ?? 1) / cfg.microbatches), held: (r) => bounds[r]! };
    probe.dispose();
    try {
      const fit = cutUnderBudget(model, cfg.stages, cfg.memoryBudget, memory);
      spec = fit.boundaries;
      if (o.verbosity !== 'quiet') (o.out ?? process.stdout).write(`troupe up: cut under the memory budget: ${fit.estimates.map((e) => `stage ${e.rank} ${describeMemory(e)}`).join('; ')}\n`);
    } catch (cause) {
      throw new ConfigError(`${where}: field "memoryBudget": ${messageOf(cause)}`, { cause });
    }
  }
  try {
    const costs = cfg.balance === 'time' && typeof cfg.stages === 'number' && cfg.memoryBudget === undefined ? await profileLayers(model, { rows: Math.ceil(cfg.batchSize / cfg.microbatches) }) : undefined;
    partitions = partitionModel(model, spec, { recompute: cfg.recompute ?? false, ...(costs ? { costs } : {}) });
  } catch (cause) {
    throw new ConfigError(`${where}: field "stages": ${messageOf(cause)}`, { cause });
  }
  let schedule: PlacedSchedule;
  try {
    schedule = buildPlacedSchedule(cfg.schedule ?? '1f1b', partitions.length, cfg.microbatches, cfg.virtualStages ?? 1);
  } catch (cause) {
    throw new ConfigError(`${where}: field "schedule": ${messageOf(cause)}`, { cause });
  }
  resolveLoss(cfg.loss, cfg.metric);
  optimizerFactory(cfg.optimizer)().dispose();
  const data = await cfg.data();
  const check = (e: { x?: unknown; y?: unknown } | undefined, what: string) => {
    if (!e || !(e.x instanceof tf.Tensor) || !(e.y instanceof tf.Tensor) || e.x.shape[0] !== e.y.shape[0]) {
      throw new ConfigError(`${where}: field "data" must give ${what}.x and ${what}.y tensors with the same first dimension`);
    }
  };
  check(data?.train, 'train');
  if (data.test !== undefined) check(data.test, 'test');
  // The model's shapes and dtypes, checked before any process starts.
  const tensors = stepTensorSpec(partitions, cfg);
  for (const [what, e] of [['train', data.train], ['test', data.test]] as const) {
    if (!e) continue;
    try {
      checkStepTensors([{ name: 'x0', dtype: e.x.dtype as DType, shape: e.x.shape }], [{ name: 'y0', dtype: e.y.dtype as DType, shape: e.y.shape }], tensors);
    } catch (cause) {
      throw new ConfigError(`${where}: field "data": ${what}: ${messageOf(cause)}`, { cause });
    }
  }
  const stepsPerEpoch = Math.floor(data.train.x.shape[0]! / cfg.batchSize);
  if (stepsPerEpoch < 1) throw new ConfigError(`${where}: field "batchSize" ${cfg.batchSize} is larger than the ${data.train.x.shape[0]} training examples`);
  if (cfg.batchSize < cfg.microbatches) throw new ConfigError(`${where}: field "batchSize" ${cfg.batchSize} is smaller than microbatches ${cfg.microbatches}`);
  const all = stepsPerEpoch * cfg.epochs;
  if (o.steps !== undefined && !(Number.isInteger(o.steps) && o.steps > 0)) throw new ConfigError(`--steps must be a positive integer, got ${o.steps}`);
  return { cfg, job, model, partitions, schedule, data, stepsPerEpoch, total: Math.min(all, o.steps ?? all) };
}

/** What every step's inputs and labels are checked against: the model's inputs and outputs, the loss's label rule. */
function stepTensorSpec(partitions: readonly StagePartition[], cfg: JobConfig): StepTensorSpec {
  return { inputs: partitions[0]!.inputs, outputs: partitions[partitions.length - 1]!.outputs, labels: labelRuleOf(cfg.loss) };
}

async function initialStates(p: Prepared): Promise<RankState[]> {
  return Promise.all(
    p.partitions.map(async (part) => {
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
  const out = o.out ?? process.stdout;
  // Information, and what went wrong or needs the user (printed even when quiet).
  const say = (l: string) => void (o.verbosity !== 'quiet' && out.write(`${l}\n`));
  const warn = (l: string) => void out.write(`${l}\n`);
  const prep = await prepareJob(o);
  const { cfg, job, partitions, data, schedule } = prep;
  // Data parallel: k copies of the pipeline, each on subjects of its own (scope <job>.r<i>).
  const k = cfg.replicas ?? 1;
  const jobs = Array.from({ length: k }, (_, i) => replicaJob(job, i, k));
  // Worker processes: one per device, hosting its stages (k, k + d, ... with virtual stages).
  const devices = schedule.devices?.length ?? partitions.length;
  const ranksOn = (dev: number) => partitions.map((s) => s.rank).filter((r) => deviceOf(r, devices) === dev);
  if (o.signal?.aborted) throw new InterruptedError(`job ${job} interrupted before it started`);
  const p = partitions.length;
  if (o.resume && !o.checkpointDir) throw new ConfigError('--resume needs --checkpoint-dir');
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
    const missing = missingOptimizerState(opt, ckpt.states.flatMap((st) => st.optimizerNames));
    if (missing.length) say(`troupe up: checkpoint step ${ckpt.meta.step} in ${o.checkpointDir} has no ${missing.join(', ')} (saved by an older Troupe): ${opt.getClassName()}'s running values are rebuilt from the step count, so this run is close to, not bit-identical with, an uninterrupted one`);
    opt.dispose();
  }
  // A checkpoint of another cut is resharded by layer name (weights and optimizer slots).
  const ckptStates = ckpt && (ckpt.meta.stages !== p || ckpt.states.some((s, r) => s.weightNames.join() !== stageWeights(partitions[r]!).map((w) => w.originalName).join()))
    ? reshard(ckpt.states, partitions).map((s, rank) => ({ ...s, rank, step: ckpt.meta.step }))
    : ckpt?.states;
  if (ckpt && ckptStates !== ckpt.states) say(`troupe up: checkpoint of ${ckpt.meta.stages} stages resharded by layer to this job's ${p}`);

  const failure = deferred<never>();
  failure.promise.catch(() => {});
  const scheds: SchedulerHost[] = [];
  const onAbort = () => {
    // Ctrl-C: where every stage was, before everything stops.
    for (const s of scheds) if (s.running) warn(`troupe up: interrupted during ${s.report()}`);
    failure.reject(new InterruptedError(`job ${job} interrupted`));
  };
  o.signal?.addEventListener('abort', onAbort, { once: true });
  if (o.signal?.aborted) onAbort(); // Ctrl-C while the job was being prepared
  let server: NatsServer | undefined;
  let bus: Bus | undefined;
  let sched: SchedulerHost | undefined;
  const credentialsFiles: string[] = [];
  /** Each file also goes with this process if it is killed (SIGKILL leaves no finally). */
  const dropCredentials: (() => void)[] = [];
  let trace: TraceRecorder | undefined;
  let inspector: Inspector | undefined;
  const restartLimit = o.restarts ?? 0;
  if (!Number.isInteger(restartLimit) || restartLimit < 0) throw new ConfigError(`restarts must be a non-negative integer, got ${String(o.restarts)}`);
  if (restartLimit > 0 && k > 1) throw new ConfigError('--restarts is not supported with replicas > 1 yet (a replica stuck in the all-reduce cannot be aborted)');
  let restarts = 0;
  // Deaths the run will survive: noted here, handled by recover() at the next await of the run.
  const dead = new Map<number, WorkerExit>();
  let died = deferred<void>();
  /** NATS reconnections not yet recovered from (they count against no limit). */
  let outages = 0;
  // A worker process is a slot (replica * devices + device): with replicas, named by its replica and ranks.
  const workerName = (slot: number) => {
    if (k === 1) return `worker ${slot}`;
    const ranks = ranksOn(slot % devices);
    return `replica ${Math.floor(slot / devices)} rank${ranks.length > 1 ? 's' : ''} ${ranks.join(',')}`;
  };
  const exitText = (e: WorkerExit) => `${workerName(e.rank)} exited with ${e.signal ?? `code ${e.code}`}`;
  const supervisor = new Supervisor((e) => {
    if (restarts + dead.size < restartLimit) {
      dead.set(e.rank, e);
      died.resolve();
    } else {
      const limit = restartLimit > 0 ? ` (restart limit ${restartLimit} reached)` : '';
      failure.reject(new StateError(`${exitText(e)} during the run${limit}`));
    }
  });
  try {
    // A server of this job's own: its users act in this job only, with passwords made for it.
    const url = o.nats ?? (server = await startNatsServer({ job, ...(o.natsConfig ? { config: o.natsConfig } : {}) })).url;
    /** A file holding the passwords of `roles` only, for another process; it goes with the run. */
    const credentialsFor = async (roles: readonly string[], name: string) => {
      const file = await writeCredentialsFile(roles, process.env, name);
      credentialsFiles.push(file);
      dropCredentials.push(removeWithThisProcess(dirname(file)));
      return file;
    };
    if (server) {
      // troupe inspect logs in as the inspector, with this file and nothing else.
      say(`troupe up: NATS credentials for troupe inspect: TROUPE_NATS_CREDENTIALS=${await credentialsFor(['inspector'], 'inspector')}`);
    }
    if (o.inspectPort !== undefined) {
      inspector = await startInspector({ nats: url, job, port: o.inspectPort, stately: true });
      say(`troupe up: inspector at ${inspector.url} (Stately's inspector: ${inspector.url}stately)`);
    }
    bus = await Bus.connect({ servers: url.split(','), name: `troupe-${job}-driver`, role: 'driver' });
    // A NATS outage loses the frames in flight: with restarts on, the step is replayed from the kept state.
    bus.onStatus((st) => {
      if (st.type === 'reconnect' && restartLimit > 0) {
        outages++;
        died.resolve();
      }
    });
    say(`troupe up: job ${job}, ${p} stages (${partitions.map((s) => s.layerNames.join(', ')).join(' | ')}), schedule ${cfg.schedule ?? '1f1b'}, ${cfg.microbatches} microbatches, NATS ${url}${server ? ` (nats-server pid ${server.pid})` : ''}; driver on ${bus.server}`);
    if (o.spawn ?? true) {
      // Worker r gets GPU r mod n (none without GPUs, or when the backend asked for computes on the CPU).
      const gpus = o.backend === 'wasm' || o.backend === 'cpu' || o.backend === 'node' ? 0 : await countGpus();
      for (let replica = 0; replica < k; replica++) {
        for (let dev = 0; dev < devices; dev++) {
          // The workers cut at the driver's boundaries: a cut by measured time must not be measured again.
          const args = ['--nats', url, '--job', job, '--rank', ranksOn(dev).join(','), '--boundaries', stageStartsOf(partitions).slice(1, -1).join(','), '--config', o.config, ...(k > 1 ? ['--replica', String(replica), '--replicas', String(k)] : []), ...(o.backend ? ['--backend', o.backend] : []), ...(o.inspect ? ['--inspect'] : []), ...(o.verbosity === 'quiet' ? ['-q'] : [])];
          const slot = replica * devices + dev;
          // The worker's environment holds its own stages' passwords and no other.
          supervisor.spawn(slot, args, { ...deviceEnv(slot, gpus), ...roleEnv(ranksOn(dev).map(stageRole)) });
        }
      }
    } else {
      warn(`troupe up: waiting for ${p * k} workers, one per device:`);
      // Each command names a credentials file with its own stages' passwords only.
      for (let dev = 0; dev < devices; dev++) {
        const ranks = ranksOn(dev);
        const file = server ? await credentialsFor(ranks.map(stageRole), `stage${ranks.join('-')}`) : null;
        warn(`  ${file ? `TROUPE_NATS_CREDENTIALS=${file} ` : ''}troupe worker --nats ${url} --job ${job} --rank ${ranks.join(',')}${k > 1 ? ' --replica <i> --replicas ' + k : ''} --config ${o.config}`);
      }
    }
    const perReplica = await Promise.all(jobs.map((j) => waitForWorkers(bus!, j, p, o.readyTimeoutMs ?? 60_000, failure.promise)));
    const workers = perReplica.flat();
    perReplica.forEach((hs, i) => {
      for (const w of hs) say(`  ${k > 1 ? `replica ${i} ` : ''}rank ${w.rank}: pid ${w.pid} on ${w.host}, backend ${w.backend}, device ${w.device}`);
    });

    // The state of the last completed step, kept when restarts are allowed: a restart loads it everywhere.
    let lastGood: readonly RankState[] = ckptStates ?? (await initialStates(prep));
    await Promise.race([Promise.all(jobs.map((j) => loadStates(bus!, j, lastGood))), failure.promise]);
    const lastStep = ckpt?.meta.step ?? 0;
    if (ckpt) say(`troupe up: resumed from ${o.checkpointDir} at step ${lastStep}`);
    for (const j of jobs) {
      scheds.push(
        await SchedulerHost.start({
          bus, job: j, stages: p, inspect: o.inspect ?? false, onSilent: (m) => warn(`troupe up: ${m}`),
          ...(cfg.livenessTimeoutMs ? { livenessTimeoutMs: cfg.livenessTimeoutMs } : {}),
          ...(cfg.stallTimeoutMs ? { stallTimeoutMs: cfg.stallTimeoutMs } : {}),
        }),
      );
    }
    sched = scheds[0];
    if (o.trace) trace = await TraceRecorder.start(bus, jobs[0]!);
    const runners = jobs.map(
      (j, i) =>
        new StepRunner({
          scheduler: scheds[i]!, job: j, schedule: schedule.stages, ...(schedule.devices ? { devices: schedule.devices } : {}), microbatches: cfg.microbatches,
          tensors: stepTensorSpec(partitions, cfg), hasMetric: cfg.metric !== undefined, stepTimeoutMs: cfg.stepTimeoutMs ?? 120_000, lastStep, ...(cfg.feed ? { feed: cfg.feed } : {}),
        }),
    );
    const progress = new Progress(out);
    let last: StepResult | null = null;
    const stepMs: number[] = [];
    const losses: number[] = [];
    const metrics: (number | null)[] = [];
    // The training set as bytes once; each step sends row slices of it (tensor slicing on wasm copies the whole set).
    const [trainX, trainY] = await Promise.all([fromTensor(data.train.x, 'x0'), fromTensor(data.train.y, 'y0')]);
    /** Runs `work` unless a worker dies first (then resolves to null: the caller recovers and retries). */
    const unlessDied = async <T>(work: Promise<T>): Promise<T | null> => {
      const lostFrames = (err: unknown) => err instanceof StageError && err.reason === 'NATS_RECONNECT';
      const settled = work.then(
        (v) => ({ v }),
        (err: unknown) => {
          // A stage that reconnected to NATS failed the step: recoverable like the driver's own reconnection.
          if (restartLimit > 0 && lostFrames(err)) {
            outages++;
            return null;
          }
          // A silent (hung) stage: its worker is killed, and the death is recovered from like any other.
          if (restartLimit > 0 && err instanceof StageError && err.reason === 'STAGE_SILENT') {
            const dev = deviceOf(err.rank, devices);
            warn(`troupe up: killing worker ${dev} to restart it (${err.message.split('\n')[0]})`);
            return supervisor.kill(dev).then(() => null);
          }
          throw err;
        },
      );
      const r = await Promise.race([settled, failure.promise, died.promise.then(() => null)]);
      if (r === null) work.catch(() => {}); // the interrupted work fails on its own; recover() aborts it
      return r ? r.v : null;
    };
    /**
     * Restarts the dead workers, fails the interrupted step on every stage, and loads every
     * stage with the last completed step's state. Messages of the dead incarnation carry the
     * old step and are refused; the replay runs under a new step id.
     */
    const recover = async (interrupted: string): Promise<void> => {
      const t = performance.now();
      // A worker that dies while another is recovered: the recovery starts over, with it too.
      for (let round = 0; ; round++) {
        const exits = [...dead.values()];
        dead.clear();
        if (outages > 0) warn(`troupe up: the NATS connection came back during ${interrupted}; frames in flight may be lost`);
        const outage = outages > 0;
        outages = 0;
        for (const e of exits) {
          restarts++;
          const child = supervisor.respawn(e.rank);
          warn(`troupe up: ${exitText(e)} during ${interrupted}${round > 0 ? ' (while recovering)' : ''}; restarting it (restart ${restarts} of ${restartLimit}), pid ${child.pid}`);
        }
        died = deferred<void>();
        const again = died.promise.then(() => true);
        const steps = (async () => {
          await waitForWorkers(bus!, job, p, o.readyTimeoutMs ?? 60_000, failure.promise);
          // A restarted worker's stages seal with new keys: the next step asks every stage again.
          sched!.reseal();
          for (const e of exits) for (const r of ranksOn(e.rank)) sched!.failStep(r, 'WORKER_DIED', `${exitText(e)}; its step is replayed`);
          if (outage) sched!.failStep(0, 'NATS_RECONNECT', 'the NATS connection was lost; the step is replayed');
          await sched!.idle();
          // The scheduler's own abort may have gone out while the stages were unreachable.
          await dropStep(bus!, job, p, runners[0]!.step);
          await loadStates(bus!, job, lastGood);
          return false;
        })();
        // A failure with a death already noted (its worker gone mid-recovery) is a new round too.
        const outcome = steps.then(
          () => false,
          (err: unknown) => {
            if (dead.size > 0) return true;
            throw err;
          },
        );
        if (!(await Promise.race([outcome, again, failure.promise]))) break;
      }
      warn(`troupe up: recovered in ${(performance.now() - t).toFixed(0)} ms; replaying ${interrupted}`);
    };
    /** Step `s` on its batch of the training set. */
    const trainStep = (s: number) => {
      const at = ((s - 1) % prep.stepsPerEpoch) * cfg.batchSize;
      const batch = (w: WireTensor) => sliceRows(w, at, cfg.batchSize);
      return runReplicas(runners, [batch(trainX)], [batch(trainY)], false);
    };
    // Without checkpoints or restarts nothing happens between steps: the next step is called
    // before this one ends, so its plan and first inputs go out while this one runs.
    const overlap = !o.checkpointDir && restartLimit === 0;
    let ahead: Promise<StepResult> | null = null;
    let mark = performance.now();
    for (let s = lastStep + 1; s <= prep.total; s++) {
      if (!overlap) mark = performance.now();
      const current = ahead ?? trainStep(s);
      ahead = overlap && s < prep.total ? trainStep(s + 1) : null;
      ahead?.catch(() => {}); // a failure of step s drops it; step s's error is the one reported
      const result = await unlessDied(current);
      if (!result) {
        await recover(`step ${s}`);
        s--;
        continue;
      }
      last = result;
      losses.push(result.loss);
      metrics.push(result.metric);
      stepMs.push(performance.now() - mark);
      mark = performance.now();
      if ((o.progress ?? true) && o.verbosity !== 'quiet') progress.update({ step: s, total: prep.total, epoch: Math.floor((s - 1) / prep.stepsPerEpoch) + 1, epochs: cfg.epochs, loss: last.loss, metric: last.metric, samples: (s - lastStep) * cfg.batchSize });
      if (o.checkpointDir || restartLimit > 0) {
        const states = await unlessDied(dumpStates(bus, jobs[0]!, p, undefined, scheds[0]!.sealKeys())); // replicas hold the same weights
        if (!states) {
          // Every stage finished step s, but its state is not in hand: step s runs again from s - 1.
          await recover(`step ${s}`);
          s--;
          continue;
        }
        lastGood = states;
        if (o.checkpointDir) {
          await saveCheckpoint(o.checkpointDir, { step: s, stages: p, job, schedule: cfg.schedule ?? '1f1b', microbatches: cfg.microbatches }, states);
          if (o.verbosity === 'verbose') progress.note(`checkpoint step ${s} saved in ${o.checkpointDir}`);
        }
      }
    }
    // The driver's model takes the trained weights, for held-out evaluation and saving.
    const final = restartLimit > 0 ? lastGood : await Promise.race([dumpStates(bus, jobs[0]!, p, undefined, scheds[0]!.sealKeys()), failure.promise]);
    for (const st of final) {
      const ws = st.tensors.filter((t) => t.name.startsWith('w'));
      const opt = optimizerFactory(cfg.optimizer)();
      await importStageState(partitions[st.rank]!, opt, { weightNames: st.weightNames, optimizerNames: [], tensors: ws });
      opt.dispose();
    }
    let heldOut: StepResult | null = null;
    const test = data.test ? await Promise.all([fromTensor(data.test.x, 'x0'), fromTensor(data.test.y, 'y0')]) : null;
    while (test) {
      heldOut = await unlessDied(runReplicas(runners, [test[0]], [test[1]], true));
      if (heldOut) break;
      await recover('the held-out evaluation');
    }
    const replicaStats = await Promise.all(jobs.flatMap((j, i) => perReplica[i]!.map(async (w) => ({ replica: i, st: decodeReply('stats', await bus!.request(ctlSubject(j, w.rank, CtlVerb.STATS), encodeJson({}), 5_000)) }))));
    const stats = replicaStats.map((r) => r.st);
    if (o.signal?.aborted) throw new InterruptedError(`job ${job} interrupted`);
    if (o.save) await saveModel(prep.model, o.save);
    const seconds = (performance.now() - t0) / 1000;
    say(`summary: job ${job}, ${prep.total - lastStep} steps in ${seconds.toFixed(1)} s${last ? `, last loss ${last.loss.toFixed(4)}` : ''}`);
    if (heldOut) say(`  held-out: loss ${heldOut.loss.toFixed(4)}${heldOut.metric !== null ? `, metric ${(heldOut.metric * 100).toFixed(2)}%` : ''} on ${data.test!.x.shape[0]} examples`);
    for (const { replica, st } of replicaStats) {
      say(`  ${k > 1 ? `replica ${replica} ` : ''}stage ${st.rank}: busy ${(st.busyMs / 1000).toFixed(2)} s, idle ${(st.idleMs / 1000).toFixed(2)} s, machine ${(st.machineMs / 1000).toFixed(2)} s, reading frames ${(st.framesMs / 1000).toFixed(2)} s, ${st.forwards} F / ${st.backwards} B${st.weightGrads ? ` / ${st.weightGrads} W` : ''}, in ${(st.bytesIn / 1e6).toFixed(1)} MB, out ${(st.bytesOut / 1e6).toFixed(1)} MB, peak in flight ${st.peakHeld}, refused ${st.rejected} (dropped unused)${st.conflicts ? `, ${st.conflicts} conflicting (their steps failed)` : ''}`);
    }
    if (o.save) say(`  model saved in ${o.save} (in Node: loadModel(${JSON.stringify(o.save)}) from 'troupe')`);
    if (trace) {
      await bus.flush(); // the last step's action events are in
      await trace.write(o.trace!);
      say(`  trace of ${trace.count} actions in ${o.trace} (Chrome trace event format: Perfetto, chrome://tracing)`);
    }
    return { job, steps: prep.total - lastStep, last, heldOut, workers, stats, model: prep.model, natsPid: server?.pid ?? null, seconds, stepMs, losses, metrics };
  } finally {
    o.signal?.removeEventListener('abort', onAbort);
    await trace?.close().catch(() => {});
    await Promise.all(scheds.map((s) => s.close().catch(() => {})));
    if (bus && !bus.isClosed) {
      await Promise.all(jobs.flatMap((j) => partitions.map((_, r) => bus!.request(ctlSubject(j, r, CtlVerb.STOP), encodeJson({ job: j }), 2_000).catch(() => {}))));
    }
    if (o.signal?.aborted) await supervisor.killAll();
    else await supervisor.stopAll();
    await bus?.close().catch(() => {});
    await inspector?.close().catch(() => {});
    await server?.stop();
    for (const file of credentialsFiles) await rm(dirname(file), { recursive: true, force: true });
    for (const drop of dropCredentials) drop();
  }
}
