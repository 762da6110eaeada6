/**
 * The host of the job machine (actors/jobMachine.ts) for `troupe up`: what its actors and
 * actions do with worker processes, nats-server, NATS requests and files. The machine decides
 * what happens when; this file only does it.
 */
import { createActor, fromPromise, type Actor } from 'xstate';
import { jobMachine, type JobEvent, type RecoverInput, type StepInput, type WorkerLoss } from '../../actors/jobMachine.js';
import { importStageState } from '../compute/stageState.js';
import { optimizerFactory } from '../compute/optimizer.js';
import { fromTensor } from '../compute/wire.js';
import type { WireTensor } from '../protocol/frame.js';
import { sliceRows } from '../protocol/rows.js';
import { decodeReply, encodeJson, type Hello, type StatsMessage } from '../protocol/messages.js';
import { CtlVerb, ctlSubject } from '../protocol/subjects.js';
import { abortable, aborted, unlessAborted } from '../runtime/abortable.js';
import { runReplicas } from '../runtime/replicas.js';
import { SchedulerHost } from '../runtime/schedulerHost.js';
import { dumpStates, idleStages, loadStates, type RankState } from '../runtime/stageStates.js';
import { StepRunner, type StepResult } from '../runtime/stepRunner.js';
import { TraceRecorder } from '../inspect/trace.js';
import { startInspector, type Inspector } from '../inspect/inspectorServer.js';
import { PendingInspector } from '../inspect/pendingInspector.js';
import { Bus } from '../transport/bus.js';
import { saveCheckpoint } from './checkpoint.js';
import type { NatsServerOptions } from './natsServer.js';
import { OwnServer } from './ownServer.js';
import { Progress } from './progress.js';
import type { Prepared, RunJobOptions } from './runJob.js';
import { keepCadenceByTime } from './keepCadence.js';
import { saveModel } from './saveModel.js';
import { StepFeed } from './stepFeed.js';
import { WorkerFleet } from './workerFleet.js';

/** The state the driver keeps: a recovery loads it into every stage and replays the steps since. */
export interface Kept {
  readonly step: number;
  readonly states: readonly RankState[];
}

/** One stage's counters, and the replica it belongs to. */
export interface StageStats {
  readonly replica: number;
  readonly st: StatsMessage;
}

/** What a finished run's driver holds for the summary. */
export interface DriverRecord {
  readonly workers: readonly Hello[];
  readonly stageStats: readonly StageStats[];
  readonly last: StepResult | null;
  readonly heldOut: StepResult | null;
  readonly stepMs: readonly number[];
  readonly losses: readonly number[];
  readonly metrics: readonly (number | null)[];
  readonly natsPid: number | null;
}

/** The job actor and everything it started. */
export class Driver {
  readonly actor: Actor<typeof jobMachine>;
  private readonly o: RunJobOptions;
  private readonly p: Prepared;
  private readonly out: NodeJS.WritableStream & { isTTY?: boolean };
  private server: OwnServer | undefined;
  private url = '';
  private bus: Bus | undefined;
  private page: Inspector | undefined;
  private trace: TraceRecorder | undefined;
  readonly scheds: SchedulerHost[] = [];
  private runners: StepRunner[] = [];
  private readonly fleet: WorkerFleet;
  private readonly inspector: PendingInspector | undefined;
  private kept: Kept;
  private feed: StepFeed | undefined;
  private train: readonly WireTensor[] = [];
  private readonly progress: Progress;
  private readonly records = { losses: [] as number[], metrics: [] as (number | null)[], stepMs: [] as number[] };
  private last: StepResult | null = null;
  private heldOut: StepResult | null = null;
  private stats: StageStats[] = [];
  /** When the current step began to count (the end of the previous one, when they overlap). */
  private mark = 0;
  private flowing = false;
  private recoveryT0 = 0;
  /** The recovery round under way: the next one waits until it has stopped. */
  private round: Promise<void> = Promise.resolve();
  /** Preparing (server, connection, schedulers): closing waits for it, so nothing it starts outlives the run. */
  private preparing: Promise<void> | undefined;
  /** The last file write begun (settled, never rejecting): see write(). */
  private writing: Promise<unknown> = Promise.resolve();
  private closing = false;
  /** The last error noted: what the run throws if it fails. */
  error: unknown;

  constructor(
    o: RunJobOptions,
    p: Prepared,
    kept: Kept,
    private readonly keepEvery: number,
  ) {
    this.o = o;
    this.p = p;
    this.kept = kept;
    this.out = o.out ?? process.stdout;
    this.progress = new Progress(this.out);
    const restartLimit = o.restarts ?? 0;
    this.fleet = new WorkerFleet({
      o,
      plan: p.plan,
      tell: (e) => this.tell(e),
      recovering: () => this.actor.getSnapshot().matches({ live: 'recovering' }),
      say: (l) => this.say(l),
      warn: (l) => this.warn(l),
    });
    // The job actor shows in the inspector like the others.
    this.inspector = o.inspect ? new PendingInspector({ scope: p.job, actor: 'job' }) : undefined;
    const machine = jobMachine.provide({
      actors: {
        prepare: fromPromise(({ signal }) => (this.preparing = this.prepare(signal))),
        awaitWorkers: fromPromise(({ signal }) => this.awaitWorkers(signal)),
        load: fromPromise(({ signal }) => this.load(signal)),
        step: fromPromise<{ loss: number; metric: number | null }, StepInput>(({ input }) => this.step(input)),
        keep: fromPromise<{ keepEvery: number | null }, { step: number }>(({ input, signal }) => this.keep(input.step, signal)),
        evaluate: fromPromise(({ signal }) => this.evaluate(signal)),
        finish: fromPromise(({ signal }) => this.finish(signal)),
        recover: fromPromise<void, RecoverInput>(({ input, signal }) => this.recover(input, signal)),
        census: fromPromise(() => this.fleet.census()),
      },
      actions: {
        restartWorkers: (_, a) => this.restartWorkers(a.losses, a.at, a.round, a.restarts, a.limit, a.outage),
        killSilent: (_, { rank, why }) => this.fleet.killSilent(rank, why),
        recordStep: (_, { step, loss, metric }) => this.recordStep(step, loss, metric),
        recovered: (_, { kept, at }) => this.recovered(kept, at),
        keepError: (_, { error }) => {
          this.error = error;
        },
      },
    });
    this.actor = createActor(machine, {
      id: 'job',
      input: { step: kept.step, total: p.total, keepEvery, checkpoint: o.checkpointDir !== undefined, restartLimit, evaluate: p.data.test !== undefined },
      ...(this.inspector ? { inspect: this.inspector.inspect } : {}),
    });
  }

  /** Tells the job actor what happened, unless the run is ending (the actor is stopped then). */
  private tell(e: JobEvent): void {
    if (!this.closing) this.actor.send(e);
  }

  private get jobs(): readonly string[] {
    return this.p.plan.replicaJobs;
  }

  /** Information, and what went wrong or needs the user (printed even when quiet). */
  private say(l: string): void {
    if (this.o.verbosity !== 'quiet') this.out.write(`${l}\n`);
  }

  private warn(l: string): void {
    this.out.write(`${l}\n`);
  }

  /** NATS (started, or the given servers), the driver's connection, the inspector, the schedulers. */
  private async prepare(signal: AbortSignal): Promise<void> {
    const { o, p } = this;
    const restartLimit = o.restarts ?? 0;
    if (o.nats) this.url = o.nats;
    else {
      this.server = await OwnServer.start(this.serverOptions(), (why) => this.tell({ type: 'NATS_LOST', why, server: true }));
      this.url = this.server.url;
      // troupe inspect logs in as the inspector, with this file and nothing else.
      this.say(`troupe up: NATS credentials for troupe inspect: TROUPE_NATS_CREDENTIALS=${await this.server.credentialsFor(['inspector'], 'inspector')}`);
    }
    if (signal.aborted) return;
    if (o.inspectPort !== undefined) {
      this.page = await startInspector({ nats: this.url, job: p.job, port: o.inspectPort, stately: true });
      this.say(`troupe up: inspector at ${this.page.url} (Stately's inspector: ${this.page.url}stately)`);
    }
    const bus = await Bus.connect({ servers: this.url.split(','), name: `troupe-${p.job}-driver`, role: 'driver' });
    this.bus = bus;
    bus.onStatus((st) => {
      if (this.closing) return;
      // With restarts, a connection that comes back replays the step (frames in flight may be lost);
      // without, a lost one fails the run at once, naming the server.
      if (restartLimit > 0 && st.type === 'reconnect') this.tell({ type: 'NATS_LOST', why: 'the NATS connection came back', server: false });
      if (restartLimit === 0 && st.type === 'disconnect')
        this.tell({ type: 'NATS_LOST', why: `the driver lost its NATS connection to ${st.detail || 'its server'}`, server: false });
    });
    const { plan, cfg } = p;
    this.say(
      `troupe up: job ${p.job}, ${plan.stages} stages (${plan.partitions.map((s) => s.layerNames.join(', ')).join(' | ')}), ` +
        `schedule ${cfg.schedule ?? '1f1b'}, ${cfg.microbatches} microbatches, ` +
        `NATS ${this.url}${this.server ? ` (nats-server pid ${this.server.pid})` : ''}; driver on ${bus.server}`,
    );
    await this.inspector?.attach(bus);
    for (const j of this.jobs) {
      this.scheds.push(
        await SchedulerHost.start({
          bus,
          job: j,
          stages: plan.stages,
          inspect: o.inspect ?? false,
          onSilent: (m) => this.warn(`troupe up: ${m}`),
          ...(cfg.livenessTimeoutMs ? { livenessTimeoutMs: cfg.livenessTimeoutMs } : {}),
          ...(cfg.stallTimeoutMs ? { stallTimeoutMs: cfg.stallTimeoutMs } : {}),
        }),
      );
    }
    if (o.trace) this.trace = await TraceRecorder.start(bus, this.jobs[0]!);
    const schedule = plan.placed;
    this.runners = this.jobs.map(
      (j, i) =>
        new StepRunner({
          scheduler: this.scheds[i]!,
          job: j,
          schedule: schedule.stages,
          ...(schedule.devices ? { devices: schedule.devices } : {}),
          microbatches: cfg.microbatches,
          tensors: p.tensors,
          hasMetric: cfg.metric !== undefined,
          stepTimeoutMs: cfg.stepTimeoutMs ?? 120_000,
          lastStep: this.kept.step,
          ...(cfg.feed ? { feed: cfg.feed } : {}),
        }),
    );
    // The training set as bytes once; each step sends row slices of it (tensor slicing on wasm copies the whole set).
    this.train = await Promise.all([fromTensor(p.data.train.x, 'x0'), fromTensor(p.data.train.y, 'y0')]);
    this.feed = new StepFeed((s) => this.trainStep(s));
  }

  /**
   * How this run starts its nats-server, the first time and again after it died (on the same
   * port): a server of this job's own, whose users act in this job only.
   */
  private serverOptions(): NatsServerOptions {
    return { job: this.p.job, ...(this.o.natsConfig ? { config: this.o.natsConfig } : {}) };
  }

  /** Starts the workers (or prints how to), then waits for every rank of every replica. */
  private async awaitWorkers(signal: AbortSignal): Promise<void> {
    const server = this.server;
    await this.fleet.start(this.url, this.bus!, signal, server ? (roles, name) => server.credentialsFor(roles, name) : null);
  }

  /** Loads the kept state (initial weights or a checkpoint) into every stage of every replica. */
  private async load(signal: AbortSignal): Promise<void> {
    await Promise.all(this.jobs.map((j) => loadStates(this.bus!, j, this.kept.states, 30_000, signal)));
    if (this.kept.step > 0 && this.o.resume) this.say(`troupe up: resumed from ${this.o.checkpointDir} at step ${this.kept.step}`);
  }

  /** Step `s` on its batch of the training set (all replicas). */
  private trainStep(s: number): Promise<StepResult> {
    const { cfg, stepsPerEpoch } = this.p;
    const at = ((s - 1) % stepsPerEpoch) * cfg.batchSize;
    const batch = (w: WireTensor) => sliceRows(w, at, cfg.batchSize);
    return runReplicas(this.runners, [batch(this.train[0]!)], [batch(this.train[1]!)], false);
  }

  private async step({ step, ahead }: StepInput): Promise<{ loss: number; metric: number | null }> {
    if (!this.flowing) this.mark = performance.now();
    this.flowing = ahead;
    const r = await this.feed!.run(step, ahead);
    this.last = r;
    return { loss: r.loss, metric: r.metric };
  }

  private recordStep(step: number, loss: number, metric: number | null): void {
    const { p, o } = this;
    this.records.losses.push(loss);
    this.records.metrics.push(metric);
    this.records.stepMs.push(performance.now() - this.mark);
    this.mark = performance.now();
    if ((o.progress ?? true) && o.verbosity !== 'quiet') {
      this.progress.update({
        step,
        total: p.total,
        epoch: Math.floor((step - 1) / p.stepsPerEpoch) + 1,
        epochs: p.cfg.epochs,
        loss,
        metric,
        samples: (step - p.firstStep) * p.cfg.batchSize,
      });
    }
  }

  /**
   * Every stage's state of step `step` into the driver (replicas hold the same weights), and
   * into the checkpoint directory. Unless the user chose the cadence, the next keeps come as
   * rarely as keeps its share of the time: what this one took against the recent steps.
   */
  private async keep(step: number, signal: AbortSignal): Promise<{ keepEvery: number | null }> {
    this.flowing = false;
    const t0 = performance.now();
    // Each stage's state must carry its seal (the keys the scheduler asked for this step's).
    const states = await dumpStates(this.bus!, this.jobs[0]!, this.p.plan.stages, 30_000, await this.scheds[0]!.sealKeys(), signal);
    const dir = this.o.checkpointDir;
    if (dir) {
      // Abandoned (a recovery began) while the states came in: nothing is written.
      unlessAborted(signal);
      await this.write(() =>
        saveCheckpoint(
          dir,
          { step, stages: this.p.plan.stages, job: this.p.job, schedule: this.p.cfg.schedule ?? '1f1b', microbatches: this.p.cfg.microbatches },
          states,
        ),
      );
      if (this.o.verbosity === 'verbose') this.progress.note(`checkpoint step ${step} saved in ${dir}`);
    }
    if (signal.aborted) throw new Error('abandoned');
    this.kept = { step, states };
    if (this.o.keepEvery !== undefined || this.o.checkpointDir) return { keepEvery: null };
    return { keepEvery: keepCadenceByTime(this.keepEvery, performance.now() - t0, this.records.stepMs.slice(-8)) };
  }

  private async evaluate(signal: AbortSignal): Promise<void> {
    const test = this.p.data.test!;
    const xy = await Promise.all([fromTensor(test.x, 'x0'), fromTensor(test.y, 'y0')]);
    // Abandoned while the set was read (a recovery started): it starts no evaluation step.
    unlessAborted(signal);
    this.heldOut = await abortable(runReplicas(this.runners, [xy[0]], [xy[1]], true), signal);
  }

  /** The trained weights into the driver's model, the stages' counters, the model saved. */
  private async finish(signal: AbortSignal): Promise<void> {
    const { p, o } = this;
    for (const st of this.kept.states) {
      const ws = st.tensors.filter((t) => t.name.startsWith('w'));
      const opt = optimizerFactory(p.cfg.optimizer)();
      await importStageState(p.plan.partitions[st.rank]!, opt, { weightNames: st.weightNames, optimizerNames: [], tensors: ws });
      opt.dispose();
    }
    this.stats = await abortable(
      Promise.all(
        this.jobs.flatMap((j, i) =>
          this.fleet
            .of(i)
            .map(async (w) => ({ replica: i, st: decodeReply('stats', await this.bus!.request(ctlSubject(j, w.rank, CtlVerb.STATS), encodeJson({}), 5_000)) })),
        ),
      ),
      signal,
    );
    // This actor's signal: a recovery abandons it too (the user's Ctrl-C ends it as well).
    unlessAborted(signal);
    if (o.save) await this.write(() => saveModel(p.model, o.save!));
  }

  /**
   * A file write (a checkpoint, the saved model) once the one before has ended: a keep or
   * finish abandoned mid-write goes on writing the same files. close() waits for the last.
   */
  private write<T>(work: () => Promise<T>): Promise<T> {
    const done = this.writing.then(work);
    this.writing = done.catch(() => {});
    return done;
  }

  /**
   * One recovery round, after the previous one has stopped: the nats-server again if it died,
   * the interrupted step failed, every rank up (the restarted workers, or a remote one's
   * replacement), the step dropped everywhere, the kept state loaded into every stage.
   */
  private recover(input: RecoverInput, signal: AbortSignal): Promise<void> {
    const previous = this.round;
    const round = (async () => {
      await previous;
      const bus = this.bus!;
      const job = this.jobs[0]!;
      const p = this.p.plan.stages;
      const sched = this.scheds[0]!;
      if (input.serverDown)
        await abortable(
          this.server!.restart((l) => this.warn(l)),
          signal,
        );
      // The interrupted step fails (aborted on every stage that answers); a step begun ahead of it fails with it.
      sched.failStep(input.cause.rank, input.cause.code, input.cause.message);
      await abortable(sched.idle(), signal);
      await abortable(this.feed!.drop(), signal);
      await this.fleet.rejoin(aborted(signal));
      // A replaced worker's stages seal with new keys: the next step asks every stage again.
      sched.reseal();
      // What the driver published while disconnected (a plan begun ahead) goes out on reconnecting:
      // it reaches the stages before they are asked where they are, not after.
      await abortable(bus.flush(), signal);
      // The scheduler's own abort may have gone out while the stages were unreachable: each is asked.
      await idleStages(bus, job, p, 30_000, signal);
      await loadStates(bus, job, this.kept.states, 30_000, signal);
    })();
    this.round = round.catch(() => {});
    return round;
  }

  private restartWorkers(losses: readonly WorkerLoss[], at: string, round: number, restarts: number, limit: number, outage: string | null): void {
    if (round <= 1) this.recoveryT0 = performance.now();
    this.flowing = false;
    if (outage) this.warn(`troupe up: ${outage} during ${at}; frames in flight may be lost`);
    this.fleet.restart(losses, at, round, restarts, limit);
  }

  /** After a recovery: the records of the steps to replay go, and the user is told what is replayed. */
  private recovered(kept: number, at: string): void {
    const keep = kept - this.p.firstStep;
    for (const l of [this.records.losses, this.records.metrics, this.records.stepMs]) l.length = Math.min(l.length, keep);
    const m = /^step (\d+)$/.exec(at);
    const what = m ? (Number(m[1]) === kept + 1 ? `step ${kept + 1}` : `steps ${kept + 1} to ${m[1]} from the state kept at step ${kept}`) : at;
    this.warn(`troupe up: recovered in ${(performance.now() - this.recoveryT0).toFixed(0)} ms; replaying ${what}`);
  }

  /** Ctrl-C: where every stage was, before everything stops. */
  interrupt(): void {
    for (const s of this.scheds) if (s.running) this.warn(`troupe up: interrupted during ${s.report()}`);
    this.actor.send({ type: 'INTERRUPT' });
  }

  /** What the summary needs. */
  record(): DriverRecord {
    return { workers: this.fleet.workers, stageStats: this.stats, last: this.last, heldOut: this.heldOut, ...this.records, natsPid: this.server?.pid ?? null };
  }

  /** Writes the trace (after the last step's events are in), when one was asked for. */
  async writeTrace(): Promise<void> {
    if (!this.trace || !this.bus) return;
    await this.bus.flush();
    await this.trace.write(this.o.trace!);
    this.say(`  trace of ${this.trace.count} actions in ${this.o.trace} (Chrome trace event format: Perfetto, chrome://tracing)`);
  }

  /** Ends every process and connection the run started, however it ends. */
  async close(): Promise<void> {
    this.closing = true;
    this.actor.stop();
    await this.preparing?.catch(() => {});
    await this.round;
    // Nothing is written into the user's directories once the run has ended.
    await this.writing;
    await this.trace?.close().catch(() => {});
    await Promise.all(this.scheds.map((s) => s.close().catch(() => {})));
    await this.inspector?.close().catch(() => {});
    // With its server gone (and not started again) no stop request can reach the workers: they are signalled at once.
    const gone = this.server?.gone ?? false;
    await this.fleet.stop(this.o.signal?.aborted === true || gone, !gone);
    await this.bus?.close().catch(() => {});
    await this.page?.close().catch(() => {});
    await this.server?.stop();
  }
}
