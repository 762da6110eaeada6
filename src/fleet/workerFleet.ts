/**
 * The workers of a `troupe up` run: forked and restarted by the driver, or remote (`--no-spawn`)
 * and waited for; who each rank is, and who took a lost worker's place.
 */
import type { JobEvent, WorkerLoss } from '../../actors/jobMachine.js';
import { decodeMessage, decodeReply, encodeJson, type Hello } from '../protocol/messages.js';
import { CtlVerb, ctlSubject, helloSubject, stageRole } from '../protocol/subjects.js';
import { deviceOf } from '../schedule/interleaved.js';
import { aborted, unlessAborted } from '../runtime/abortable.js';
import type { Plan } from '../runtime/plan.js';
import type { Bus } from '../transport/bus.js';
import { roleEnv } from '../transport/credentials.js';
import { countGpus, deviceEnv } from './device.js';
import type { RunJobOptions } from './runJob.js';
import { Supervisor, type WorkerExit } from './supervisor.js';
import { waitForWorkers } from './waitForWorkers.js';

/** What the fleet needs from the driver. */
export interface FleetHost {
  readonly o: RunJobOptions;
  readonly plan: Plan;
  /** Tells the job actor of a loss. */
  tell(e: JobEvent): void;
  /** Whether a recovery is under way (its round takes the workers that join then). */
  recovering(): boolean;
  say(line: string): void;
  warn(line: string): void;
}

export class WorkerFleet {
  private readonly supervisor: Supervisor;
  /** Each replica's workers, by rank, as last heard. */
  private hellos: Hello[][] = [];
  private readonly subs: { drain(): Promise<void> }[] = [];
  private bus: Bus | undefined;

  constructor(private readonly h: FleetHost) {
    this.supervisor = new Supervisor((e) =>
      h.tell({ type: 'WORKER_LOST', loss: { worker: e.rank, why: this.exitText(e), respawn: true, ranks: this.ranksOf(e.rank) } }),
    );
  }

  /** A worker process is a slot (replica * devices + device): with replicas, named by its replica and ranks. */
  private workerName(slot: number): string {
    if (this.h.plan.replicas === 1) return `worker ${slot}`;
    const ranks = this.ranksOf(slot);
    return `replica ${Math.floor(slot / this.h.plan.devices)} rank${ranks.length > 1 ? 's' : ''} ${ranks.join(',')}`;
  }

  private exitText(e: WorkerExit): string {
    return `${this.workerName(e.rank)} exited with ${e.signal ?? `code ${e.code}`}`;
  }

  /** Whether the driver forks its workers (else they join by hand). */
  private get spawns(): boolean {
    return this.h.o.spawn ?? true;
  }

  private ranksOf(slot: number): number[] {
    return this.h.plan.ranksOn(slot % this.h.plan.devices);
  }

  /** Every worker heard, replica by replica. */
  get workers(): readonly Hello[] {
    return this.hellos.flat();
  }

  /** Replica `replica`'s workers by rank. */
  of(replica: number): readonly Hello[] {
    return this.hellos[replica] ?? [];
  }

  /**
   * Forks one worker per device of every replica (or prints how to start them), then waits
   * for every rank. `credentialsFor` writes a file with the given roles' passwords (for the
   * workers started by hand; null when the run uses a server it was given). Once `signal`
   * aborts (the run is ending), nothing more is started or written.
   */
  async start(url: string, bus: Bus, signal: AbortSignal, credentialsFor: ((roles: readonly string[], name: string) => Promise<string>) | null): Promise<void> {
    this.bus = bus;
    const { o, plan } = this.h;
    const k = plan.replicas;
    const boundaries = plan.boundaries.join(',');
    if (this.spawns) {
      // Worker r gets GPU r mod n (none without GPUs, or when the backend asked for computes on the CPU).
      const gpus = o.backend === 'wasm' || o.backend === 'cpu' || o.backend === 'node' ? 0 : await countGpus();
      // Counting may take long (nvidia-smi, loading Dawn): a run closed meanwhile forks nothing.
      unlessAborted(signal);
      for (let replica = 0; replica < k; replica++) {
        for (let dev = 0; dev < plan.devices; dev++) {
          // The workers cut at the driver's boundaries: a cut by measured time must not be measured again.
          const args = [
            '--nats',
            url,
            '--job',
            plan.job,
            '--rank',
            plan.ranksOn(dev).join(','),
            '--boundaries',
            boundaries,
            '--config',
            o.config,
            ...(k > 1 ? ['--replica', String(replica), '--replicas', String(k)] : []),
            ...(o.backend ? ['--backend', o.backend] : []),
            ...(o.inspect ? ['--inspect'] : []),
            ...(o.verbosity === 'quiet' ? ['-q'] : []),
          ];
          const slot = replica * plan.devices + dev;
          // The worker's environment holds its own stages' passwords and no other.
          this.supervisor.spawn(slot, args, { ...deviceEnv(slot, gpus), ...roleEnv(plan.ranksOn(dev).map(stageRole)) });
        }
      }
    } else {
      this.h.warn(`troupe up: waiting for ${plan.stages * k} workers, one per device:`);
      // Each command names a credentials file with its own stages' passwords only.
      for (let dev = 0; dev < plan.devices; dev++) {
        const ranks = plan.ranksOn(dev);
        const file = credentialsFor ? await credentialsFor(ranks.map(stageRole), `stage${ranks.join('-')}`) : null;
        unlessAborted(signal);
        this.h.warn(
          `  ${file ? `TROUPE_NATS_CREDENTIALS=${file} ` : ''}troupe worker --nats ${url} --job ${plan.job} --rank ${ranks.join(',')}` +
            `${k > 1 ? ' --replica <i> --replicas ' + k : ''} --config ${o.config} --boundaries ${boundaries || "''"}`,
        );
      }
    }
    const perReplica = await Promise.all(plan.replicaJobs.map((j) => waitForWorkers(bus, j, plan.stages, o.readyTimeoutMs ?? 60_000, aborted(signal))));
    this.hellos = perReplica;
    perReplica.forEach((hs, i) => {
      for (const w of hs) this.h.say(`  ${k > 1 ? `replica ${i} ` : ''}rank ${w.rank}: pid ${w.pid} on ${w.host}, backend ${w.backend}, device ${w.device}`);
    });
    // A stage that says hello while the job runs is a new worker in a lost one's place (a remote one restarted by hand or by its host).
    plan.replicaJobs.forEach((j, replica) => this.subs.push(bus.subscribe(helloSubject(j), (m) => this.onHello(replica, m.data))));
  }

  /** Waits until every rank of replica 0 answers again (a recovery), and takes who they are now. */
  async rejoin(failed: Promise<never>): Promise<void> {
    this.hellos[0] = await waitForWorkers(this.bus!, this.h.plan.replicaJobs[0]!, this.h.plan.stages, this.h.o.readyTimeoutMs ?? 60_000, failed);
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
    if (this.h.recovering()) return;
    const { plan } = this.h;
    const dev = deviceOf(h.rank, plan.devices);
    const ranks = plan.ranksOn(dev);
    for (const r of ranks) this.hellos[replica]![r] = { ...h, rank: r };
    this.h.tell({
      type: 'WORKER_LOST',
      loss: {
        worker: replica * plan.devices + dev,
        why: `rank ${h.rank}'s worker (pid ${known.pid} on ${known.host}) was replaced by pid ${h.pid} on ${h.host}`,
        respawn: false,
        ranks,
      },
    });
  }

  /**
   * Remote workers that answer no ping, or answer as another process than the one known (a
   * replacement that joined unnoticed): lost. Forked workers are reported by their exits.
   */
  async census(): Promise<WorkerLoss[]> {
    if (this.spawns) return [];
    const { plan } = this.h;
    const losses = new Map<number, WorkerLoss>();
    await Promise.all(
      plan.replicaJobs.flatMap((j, replica) =>
        plan.partitions.map(async ({ rank }) => {
          const known = this.hellos[replica]?.[rank];
          let why: string | null = null;
          try {
            const h = decodeReply('hello', await this.bus!.request(ctlSubject(j, rank, CtlVerb.PING), encodeJson({}), 2_000));
            if (known && (h.pid !== known.pid || h.host !== known.host))
              why = `rank ${rank}'s worker (pid ${known.pid} on ${known.host}) was replaced by pid ${h.pid} on ${h.host}`;
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

  /** Starts the lost workers of this process again and says so; remote ones are waited for. */
  restart(losses: readonly WorkerLoss[], at: string, round: number, restarts: number, limit: number): void {
    losses.forEach((l, i) => {
      const n = restarts - losses.length + i + 1;
      const during = `${l.why} during ${at}${round > 1 ? ' (while recovering)' : ''}`;
      if (l.respawn) {
        const child = this.supervisor.respawn(l.worker);
        this.h.warn(`troupe up: ${during}; restarting it (restart ${n} of ${limit}), pid ${child.pid}`);
      } else this.h.warn(`troupe up: ${during}; waiting for its worker to (re)join (restart ${n} of ${limit})`);
    });
  }

  /** Kills the worker hosting a silent stage (its exit is the loss); a remote one is declared lost. */
  killSilent(rank: number, why: string): void {
    const dev = deviceOf(rank, this.h.plan.devices);
    if (this.spawns) {
      this.h.warn(`troupe up: killing worker ${dev} to restart it (${why})`);
      void this.supervisor.kill(dev);
      return;
    }
    this.h.warn(`troupe up: worker ${dev} is silent (${why}); waiting for a worker to take its place`);
    setTimeout(
      () => this.h.tell({ type: 'WORKER_LOST', loss: { worker: dev, why: `worker ${dev} went silent`, respawn: false, ranks: this.h.plan.ranksOn(dev) } }),
      0,
    );
  }

  /**
   * Asks every stage to stop (when a request can reach them: remote workers stop so) and
   * waits for the forked workers to exit; `now`: signals them at once (Ctrl-C, or their
   * server is gone).
   */
  async stop(now: boolean, reachable: boolean): Promise<void> {
    await Promise.all(this.subs.map((s) => s.drain().catch(() => {})));
    const bus = this.bus;
    if (bus && !bus.isClosed && reachable) {
      const { plan } = this.h;
      await Promise.all(
        plan.replicaJobs.flatMap((j) =>
          plan.partitions.map((_, r) => bus.request(ctlSubject(j, r, CtlVerb.STOP), encodeJson({ job: j }), 2_000).catch(() => {})),
        ),
      );
    }
    if (now) await this.supervisor.killAll();
    else await this.supervisor.stopAll();
  }
}
