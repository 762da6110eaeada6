/**
 * The host of the job machine (actors/jobMachine.ts) for `troupe up`: what its actors and
 * actions do with worker processes, nats-server, NATS requests and files. The machine decides
 * what happens when; this file only does it.
 */
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { createActor, fromPromise, type Actor } from 'xstate';
import { jobMachine, type JobEvent, type RecoverInput, type StepInput, type WorkerLoss } from '../../actors/jobMachine.js';
import { importStageState } from '../compute/stageState.js';
import { optimizerFactory } from '../compute/optimizer.js';
import { fromTensor } from '../compute/wire.js';
import type { WireTensor } from '../protocol/frame.js';
import { sliceRows } from '../protocol/rows.js';
import { decodeMessage, decodeReply, encodeJson, type Hello, type StatsMessage } from '../protocol/messages.js';
import { CtlVerb, ctlSubject, helloSubject } from '../protocol/subjects.js';
import { deviceOf } from '../schedule/interleaved.js';
import { abortable, aborted } from '../runtime/abortable.js';
import { runReplicas } from '../runtime/replicas.js';
import { SchedulerHost } from '../runtime/schedulerHost.js';
import { dumpStates, idleStages, loadStates, type RankState } from '../runtime/stageStates.js';
import { StepRunner, type StepResult } from '../runtime/stepRunner.js';
import { TraceRecorder } from '../inspect/trace.js';
import { startInspector, type Inspector } from '../inspect/inspectorServer.js';
import { PendingInspector } from '../inspect/pendingInspector.js';
import { Bus } from '../transport/bus.js';
import { writeCredentialsFile } from '../transport/credentials.js';
import { saveCheckpoint } from './checkpoint.js';
import { countGpus, deviceEnv } from './device.js';
import { startNatsServer, type NatsServer, type NatsServerOptions } from './natsServer.js';
import { Progress } from './progress.js';
import type { Prepared, RunJobOptions } from './runJob.js';
import { keepCadenceByTime } from './keepCadence.js';
import { saveModel } from './saveModel.js';
import { Supervisor, type WorkerExit } from './supervisor.js';
import { StepFeed } from './stepFeed.js';
import { waitForWorkers } from './waitForWorkers.js';

/** The state the driver keeps: a recovery loads it into every stage and replays the steps since. */
export interface Kept {
  readonly step: number;
  readonly states: readonly RankState[];
}

/** What a finished run's driver holds for the summary. */
export interface DriverRecord {
  readonly workers: readonly Hello[];
  readonly stats: readonly StatsMessage[];
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
  private server: NatsServer | undefined;
  /** The server above exited and is not started again yet. */
  private serverGone = false;
  private serverAgain: Promise<NatsServer> | undefined;
  private url = '';
  private bus: Bus | undefined;
  private credentialsFile: string | undefined;
  private page: Inspector | undefined;
  private trace: TraceRecorder | undefined;
  readonly scheds: SchedulerHost[] = [];
  private runners: StepRunner[] = [];
  private readonly supervisor: Supervisor;
  private readonly inspector: PendingInspector | undefined;
  /** Each replica's workers, by rank (as last heard). */
  private hellos: Hello[][] = [];
  private readonly subs: { drain(): Promise<void> }[] = [];
  private kept: Kept;
  private feed: StepFeed | undefined;
  private train: readonly WireTensor[] = [];
  private readonly progress: Progress;
  private readonly records = { losses: [] as number[], metrics: [] as (number | null)[], stepMs: [] as number[] };
  private last: StepResult | null = null;
  private heldOut: StepResult | null = null;
  private stats: StatsMessage[] = [];
  /** When the current step began to count (the end of the previous one, when they overlap). */
  private mark = 0;
  private flowing = false;
  private recoveryT0 = 0;
  /** The recovery round under way: the next one waits until it has stopped. */
  private round: Promise<void> = Promise.resolve();
  /** Preparing (server, connection, schedulers): closing waits for it, so nothing it starts outlives the run. */
  private preparing: Promise<void> | undefined;
  private closing = false;
  /** The last error noted: what the run throws if it fails. */
  error: unknown;

  constructor(o: RunJobOptions, p: Prepared, kept: Kept, private readonly keepEvery: number) {
    this.o = o;
    this.p = p;
    this.kept = kept;
    this.out = o.out ?? process.stdout;
    this.progress = new Progress(this.out);
    const restartLimit = o.restarts ?? 0;
    this.supervisor = new Supervisor((e) => this.tell({ type: 'WORKER_LOST', loss: { worker: e.rank, why: this.exitText(e), respawn: true, ranks: this.ranksOf(e.rank) } }));
    // The job actor shows in the inspector like the others (under the scheduler's subjects: the only ones the driver's user may publish on).
    this.inspector = o.inspect ? new PendingInspector({ scope: p.job, actor: 'job', channel: 'scheduler' }) : undefined;
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
        census: fromPromise(() => this.census()),
      },
      actions: {
        restartWorkers: (_, a) => this.restartWorkers(a.losses, a.at, a.round, a.restarts, a.limit, a.outage),
        killSilent: (_, { rank, why }) => this.killSilent(rank, why),
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

  private ranksOf(slot: number): number[] {
    return this.p.plan.ranksOn(slot % this.p.plan.devices);
  }

  private exitText(e: WorkerExit): string {
    return `worker ${e.rank} exited with ${e.signal ?? `code ${e.code}`}`;
  }

  /** NATS (started, or the given servers), the driver's connection, the inspector, the schedulers. */
  private async prepare(signal: AbortSignal): Promise<void> {
    const { o, p } = this;
    const restartLimit = o.restarts ?? 0;
    if (o.nats) this.url = o.nats;
    else {
      this.server = await startNatsServer(this.serverOptions());
      this.url = this.server.url;
      this.watchServer(this.server);
      // Other processes (troupe inspect, a worker on another host) log in with these; the file goes with the server.
      this.credentialsFile = await writeCredentialsFile();
      this.say(`troupe up: NATS credentials for other processes: TROUPE_NATS_CREDENTIALS=${this.credentialsFile}`);
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
      if (restartLimit === 0 && st.type === 'disconnect') this.tell({ type: 'NATS_LOST', why: `the driver lost its NATS connection to ${st.detail || 'its server'}`, server: false });
    });
    const { plan, cfg } = p;
    this.say(
      `troupe up: job ${p.job}, ${plan.stages} stages (${plan.partitions.map((s) => s.layerNames.join(', ')).join(' | ')}), schedule ${cfg.schedule ?? '1f1b'}, ${cfg.microbatches} microbatches, NATS ${this.url}${this.server ? ` (nats-server pid ${this.server.pid})` : ''}; driver on ${bus.server}`,
    );
    await this.inspector?.attach(bus);
    for (const j of this.jobs) {
      this.scheds.push(
        await SchedulerHost.start({
          bus, job: j, stages: plan.stages, inspect: o.inspect ?? false, onSilent: (m) => this.warn(`troupe up: ${m}`),
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
          scheduler: this.scheds[i]!, job: j, schedule: schedule.stages, ...(schedule.devices ? { devices: schedule.devices } : {}), microbatches: cfg.microbatches,
          inputs: plan.partitions[0]!.inputs.length, hasMetric: cfg.metric !== undefined, stepTimeoutMs: cfg.stepTimeoutMs ?? 120_000, lastStep: this.kept.step, ...(cfg.feed ? { feed: cfg.feed } : {}),
        }),
    );
    // The training set as bytes once; each step sends row slices of it (tensor slicing on wasm copies the whole set).
    this.train = await Promise.all([fromTensor(p.data.train.x, 'x0'), fromTensor(p.data.train.y, 'y0')]);
    this.feed = new StepFeed((s) => this.trainStep(s));
  }

  /** How this run starts its nats-server: the first time, and again after it died (on the same port). */
  private serverOptions(): NatsServerOptions {
    return this.o.natsConfig ? { config: this.o.natsConfig } : {};
  }

  /** A nats-server this driver started that exits on its own is a lost connection (started again with restarts). */
  private watchServer(server: NatsServer): void {
    void server.exited.then(() => {
      if (this.closing || server !== this.server) return;
      this.serverGone = true;
      this.tell({ type: 'NATS_LOST', why: `nats-server (pid ${server.pid}) exited`, server: true });
    });
  }

  /** Starts the nats-server again on its port with its configuration (the passwords are this process's): once per death. */
  private async restartServer(): Promise<void> {
    if (!this.serverGone) return;
    this.serverAgain ??= startNatsServer({ ...this.serverOptions(), port: this.server!.port })
      .then((server) => {
        this.server = server;
        this.serverGone = false;
        this.watchServer(server);
        this.warn(`troupe up: nats-server started again on port ${server.port} (pid ${server.pid}); every connection comes back to it`);
        return server;
      })
      .finally(() => {
        this.serverAgain = undefined;
      });
    await this.serverAgain;
  }

  /** Starts the workers (or prints how to), then waits for every rank of every replica. */
  private async awaitWorkers(signal: AbortSignal): Promise<void> {
    const { o, p } = this;
    const { plan } = p;
    const k = plan.replicas;
    const boundaries = plan.boundaries.join(',');
    if (o.spawn ?? true) {
      // Worker r gets GPU r mod n (none without GPUs, or when the backend asked for computes on the CPU).
      const gpus = o.backend === 'wasm' || o.backend === 'cpu' || o.backend === 'node' ? 0 : await countGpus();
      for (let replica = 0; replica < k; replica++) {
        for (let dev = 0; dev < plan.devices; dev++) {
          // The workers cut at the driver's boundaries: a cut by measured time must not be measured again.
          const args = ['--nats', this.url, '--job', p.job, '--rank', plan.ranksOn(dev).join(','), '--boundaries', boundaries, '--config', o.config, ...(k > 1 ? ['--replica', String(replica), '--replicas', String(k)] : []), ...(o.backend ? ['--backend', o.backend] : []), ...(o.inspect ? ['--inspect'] : []), ...(o.verbosity === 'quiet' ? ['-q'] : [])];
          const slot = replica * plan.devices + dev;
          this.supervisor.spawn(slot, args, deviceEnv(slot, gpus));
        }
      }
    } else {
      this.warn(`troupe up: waiting for ${plan.stages * k} workers: troupe worker --nats ${this.url} --job ${p.job} --rank <r>${k > 1 ? ' --replica <i> --replicas ' + k : ''} --boundaries ${boundaries} --config ${o.config}`);
    }
    const perReplica = await Promise.all(this.jobs.map((j) => waitForWorkers(this.bus!, j, plan.stages, o.readyTimeoutMs ?? 60_000, aborted(signal))));
    this.hellos = perReplica;
    perReplica.forEach((hs, i) => {
      for (const w of hs) this.say(`  ${k > 1 ? `replica ${i} ` : ''}rank ${w.rank}: pid ${w.pid} on ${w.host}, backend ${w.backend}, device ${w.device}`);
    });
    // A stage that says hello while the job runs is a new worker in a lost one's place (a remote one restarted by hand or by its host).
    this.jobs.forEach((j, replica) => this.subs.push(this.bus!.subscribe(helloSubject(j), (m) => this.onHello(replica, m.data))));
  }

  private onHello(replica: number, data: Uint8Array): void {
    let h: Hello;
    try {
      h = decodeMessage('hello', data);
    } catch {
      return; // not a hello: ignored here (waitForWorkers ignores it too)
    }
    const known = this.hellos[replica]?.[h.rank];
    if (!known || (known.pid === h.pid && known.host === h.host)) return;
    // During a recovery the round waits for workers itself; it takes this one.
    if (this.actor.getSnapshot().matches({ live: 'recovering' })) return;
    const dev = deviceOf(h.rank, this.p.plan.devices);
    const ranks = this.p.plan.ranksOn(dev);
    for (const r of ranks) this.hellos[replica]![r] = { ...h, rank: r };
    this.tell({
      type: 'WORKER_LOST',
      loss: { worker: replica * this.p.plan.devices + dev, why: `rank ${h.rank}'s worker (pid ${known.pid} on ${known.host}) was replaced by pid ${h.pid} on ${h.host}`, respawn: false, ranks },
    });
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
      this.progress.update({ step, total: p.total, epoch: Math.floor((step - 1) / p.stepsPerEpoch) + 1, epochs: p.cfg.epochs, loss, metric, samples: (step - p.firstStep) * p.cfg.batchSize });
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
    const states = await dumpStates(this.bus!, this.jobs[0]!, this.p.plan.stages, 30_000, signal);
    const dir = this.o.checkpointDir;
    if (dir) {
      await saveCheckpoint(dir, { step, stages: this.p.plan.stages, job: this.p.job, schedule: this.p.cfg.schedule ?? '1f1b', microbatches: this.p.cfg.microbatches }, states);
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
      Promise.all(this.jobs.flatMap((j, i) => this.hellos[i]!.map(async (w) => decodeReply('stats', await this.bus!.request(ctlSubject(j, w.rank, CtlVerb.STATS), encodeJson({}), 5_000))))),
      signal,
    );
    if (o.save && !o.signal?.aborted) await saveModel(p.model, o.save);
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
      if (input.serverDown) await abortable(this.restartServer(), signal);
      // The interrupted step fails (aborted on every stage that answers); a step begun ahead of it fails with it.
      sched.failStep(input.cause.rank, input.cause.code, input.cause.message);
      await abortable(sched.idle(), signal);
      await abortable(this.feed!.drop(), signal);
      this.hellos[0] = await waitForWorkers(bus, job, p, this.o.readyTimeoutMs ?? 60_000, aborted(signal));
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

  /**
   * Remote workers (`--no-spawn`) that answer no ping, or answer as another process than the
   * one known (a replacement that joined without being noticed): lost. Forked workers are
   * reported by their exits, so none are counted here.
   */
  private async census(): Promise<WorkerLoss[]> {
    if (this.o.spawn ?? true) return [];
    const { plan } = this.p;
    const losses = new Map<number, WorkerLoss>();
    await Promise.all(
      this.jobs.flatMap((j, replica) =>
        plan.partitions.map(async ({ rank }) => {
          const known = this.hellos[replica]?.[rank];
          let why: string | null = null;
          try {
            const h = decodeReply('hello', await this.bus!.request(ctlSubject(j, rank, CtlVerb.PING), encodeJson({}), 2_000));
            if (known && (h.pid !== known.pid || h.host !== known.host)) why = `rank ${rank}'s worker (pid ${known.pid} on ${known.host}) was replaced by pid ${h.pid} on ${h.host}`;
          } catch {
            why = `rank ${rank}'s worker${known ? ` (pid ${known.pid} on ${known.host})` : ''} answers no ping`;
          }
          const dev = deviceOf(rank, plan.devices);
          const worker = replica * plan.devices + dev;
          if (why && !losses.has(worker)) losses.set(worker, { worker, why, respawn: false, ranks: plan.ranksOn(dev) });
        }),
      ),
    );
    return [...losses.values()];
  }

  private restartWorkers(losses: readonly WorkerLoss[], at: string, round: number, restarts: number, limit: number, outage: string | null): void {
    if (round <= 1) this.recoveryT0 = performance.now();
    this.flowing = false;
    if (outage) this.warn(`troupe up: ${outage} during ${at}; frames in flight may be lost`);
    losses.forEach((l, i) => {
      const n = restarts - losses.length + i + 1;
      const during = `${l.why} during ${at}${round > 1 ? ' (while recovering)' : ''}`;
      if (l.respawn) {
        const child = this.supervisor.respawn(l.worker);
        this.warn(`troupe up: ${during}; restarting it (restart ${n} of ${limit}), pid ${child.pid}`);
      } else this.warn(`troupe up: ${during}; waiting for its worker to (re)join (restart ${n} of ${limit})`);
    });
  }

  private killSilent(rank: number, why: string): void {
    const dev = deviceOf(rank, this.p.plan.devices);
    if (this.o.spawn ?? true) {
      this.warn(`troupe up: killing worker ${dev} to restart it (${why})`);
      void this.supervisor.kill(dev);
      return;
    }
    // A remote worker cannot be killed from here: it is lost, and waited for.
    this.warn(`troupe up: worker ${dev} is silent (${why}); waiting for a worker to take its place`);
    setTimeout(() => this.tell({ type: 'WORKER_LOST', loss: { worker: dev, why: `worker ${dev} went silent`, respawn: false, ranks: this.p.plan.ranksOn(dev) } }), 0);
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
    return { workers: this.hellos.flat(), stats: this.stats, last: this.last, heldOut: this.heldOut, ...this.records, natsPid: this.server?.pid ?? null };
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
    await this.trace?.close().catch(() => {});
    await Promise.all(this.scheds.map((s) => s.close().catch(() => {})));
    await Promise.all(this.subs.map((s) => s.drain().catch(() => {})));
    await this.inspector?.close().catch(() => {});
    const bus = this.bus;
    // With its server gone (and not started again) no stop request can reach the workers: they are signalled at once.
    if (bus && !bus.isClosed && !this.serverGone) {
      await Promise.all(this.jobs.flatMap((j) => this.p.plan.partitions.map((_, r) => bus.request(ctlSubject(j, r, CtlVerb.STOP), encodeJson({ job: j }), 2_000).catch(() => {}))));
    }
    if (this.o.signal?.aborted || this.serverGone) await this.supervisor.killAll();
    else await this.supervisor.stopAll();
    await bus?.close().catch(() => {});
    await this.page?.close().catch(() => {});
    await this.serverAgain?.catch(() => {});
    await this.server?.stop();
    if (this.credentialsFile) await rm(dirname(this.credentialsFile), { recursive: true, force: true });
  }
}

