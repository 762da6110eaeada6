/** Binds the scheduler actor to NATS: step plans and INPUT frames out, stage events in. */
import { createActor, fromPromise, waitFor, type Actor } from 'xstate';
import { freesForFeed, schedulerMachine, type RefusedFrame, type SchedulerEvent, type StepFailure, type StepOutcome, type StepRequest } from '../../actors/schedulerMachine.js';
import { ForgedFrameError, FrameError, StageError, StateError, StepTimeoutError, TransportError, TroupeError, UnexpectedFrameError, messageOf } from '../errors.js';
import { encodeKeyOnly, type Frame } from '../protocol/frame.js';
import { checkSeal, parseSealKey, sealKeyText } from '../protocol/seal.js';
import type { FrameSubscription } from '../transport/subscribeFrames.js';
import { decodeAck, decodeMessage, decodeReply, encodeJson, type ErrorEvent, type ProbeReply, type RejectEvent, type StepPlan } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { CtlVerb, SchedEvent, ctlSubject, outputSubject, parseSchedSubject, schedWildcard, stageSubject } from '../protocol/subjects.js';
import { ActorInspector, actorSessionId } from '../inspect/actorInspector.js';
import { RollCall, type StepShape } from '../inspect/rollCall.js';
import type { Bus, BusMessage } from '../transport/bus.js';
import { deferred, type Deferred } from './deferred.js';
import { sendFrame } from './localStages.js';

/** Options of the scheduler host. */
export interface SchedulerHostOptions {
  readonly bus: Bus;
  readonly job: string;
  readonly stages: number;
  /** Milliseconds a control request may wait for its ack (default 10 s). */
  readonly requestTimeoutMs?: number;
  /** Largest output frame of a prediction taken, in bytes (default 256 MiB). */
  readonly maxFrameBytes?: number;
  /**
   * Publish the actor's inspection events on troupe.<job>.inspect.scheduler (default off).
   * With or without, the host answers an inspector's `who` with the step's shape and the
   * errors and refused frames it kept.
   */
  readonly inspect?: boolean;
  /**
   * Liveness: during a step every stage is probed every `heartbeatMs` (default 1 s); one that
   * answers no probe for this long (default 30 s) fails the step as STAGE_SILENT, naming its
   * last known state and the messages it waited for. A stage answers between actions, so this
   * must exceed the longest action.
   */
  readonly livenessTimeoutMs?: number;
  readonly heartbeatMs?: number;
  /**
   * A step whose stages all answer probes but that ends no action for this long fails as
   * STEP_STALLED with its action grid (`report()`): which stage waits for which message.
   * Actions count when reported: a stage sends its action events with its next frame, when
   * it waits, or with its next other event, so this must exceed a stage's longest stretch of
   * actions that publish nothing (a run of W actions, say).
   */
  readonly stallTimeoutMs?: number;
  /** Told at once, with the step's action grid, when a stage is found silent or the step stalls (the step then fails). */
  readonly onSilent?: (message: string) => void;
}

/** One step as the pipeline hands it to the scheduler. */
export interface StepWork extends StepRequest {
  /** Each stage's plan. */
  plan(rank: number): StepPlan;
  /** INPUT frames of microbatch `mb`, each with the rank it goes to. */
  inputs(mb: number): readonly { readonly rank: number; readonly frame: Frame }[];
}

/** A running scheduler actor (xstate): subscribe to follow its state; its host sends it its events. */
export type SchedulerActor = Actor<typeof schedulerMachine>;

/** A step waiting for the running one; `begun` once its plans and first inputs went out early. */
interface Queued {
  readonly work: StepWork;
  readonly pending: Deferred<RunOutcome>;
  begun?: Promise<number>;
}

/** Scheduler events that belong to a step (a REJECT with its frame's key does too). */
type StepEvent = Exclude<SchedulerEvent, { type: 'START' | 'REJECT' }> | { type: 'REJECT'; rank: number; refused: RefusedFrame };

const stepOf = (e: StepEvent): number => (e.type === 'REJECT' ? e.refused.step : e.step);

/** A step's outcome, and whether it began early (plans and first inputs sent while the previous step ran). */
export interface RunOutcome extends StepOutcome {
  readonly begunEarly: boolean;
}

/** Turns a step failure into the error the caller sees. */
export function errorOf(f: StepFailure): TroupeError {
  if (f.code === 'STEP_TIMEOUT') return new StepTimeoutError(f.message);
  if (f.rank < 0) return new TransportError(`${f.key}: ${f.message}`);
  return new StageError(f.rank, f.key, `${f.code}: ${f.message}`, { reason: f.code });
}

/**
 * The scheduler actor and its subscription to stage events. One step runs at a time.
 *
 * @example
 * const sched = await SchedulerHost.start({ bus, job, stages: 2 });
 * const outcome = await sched.run(work);
 */
export class SchedulerHost {
  readonly actor: SchedulerActor;
  private readonly sub: { drain(): Promise<void> };
  private pending: Deferred<StepOutcome> | undefined;
  private work: StepWork | undefined;
  /** Steps called while one runs, in order. */
  private readonly queue: Queued[] = [];
  /** The running step's early beginning (plans acked, first inputs sent), until beginStep takes it. */
  private earlyStart: Promise<number> | undefined;
  /** Events of a begun step that came before it started. */
  private early: StepEvent[] = [];
  /** The last step whose plans every stage has acked. */
  private planned = -1;
  /** Whether a failure's queued steps are being dropped; steps called meanwhile wait in `afterSettling`. */
  private settling = false;
  private readonly afterSettling: Queued[] = [];
  private feeding: Promise<void> = Promise.resolve();
  /** Scheduler events that could not be parsed. */
  malformedEvents = 0;
  /** The latest frames the stages refused (at most 100), newest last. */
  readonly lastRejects: RejectEvent[] = [];
  /** Frames the stages refused, since the start. */
  private rejects = 0;
  /** Stage errors and step failures since the start: how many, the first, the latest (at most 20). */
  private errorCount = 0;
  private firstError: ErrorEvent | null = null;
  private readonly lastErrors: ErrorEvent[] = [];
  /** The running (or last) step's shape, as last announced to inspectors. */
  private shape: StepShape | undefined;
  private readonly inspector: ActorInspector | undefined;
  private rollCall: RollCall | undefined;

  private constructor(private readonly o: SchedulerHostOptions) {
    this.lastProbe = Array.from({ length: o.stages }, () => null);
    const timeout = o.requestTimeoutMs ?? 10_000;
    const machine = schedulerMachine.provide({
      actors: {
        beginStep: fromPromise<number, StepRequest>(async ({ input }) => {
          const w = this.work!;
          // Begun while the previous step applied its update: plans acked, first inputs sent.
          const early = this.earlyStart;
          this.earlyStart = undefined;
          if (early) {
            const fed = await early;
            this.beginEarly();
            return fed;
          }
          await this.seal(timeout);
          await this.requestAll(CtlVerb.STEP, (r) => encodeJson(w.plan(r)), timeout);
          // Every stage has this step's plan: the next one's may follow.
          this.planned = input.step;
          this.beginEarly();
          return 0;
        }),
        abortStep: fromPromise<void, { step: number }>(async ({ input }) => {
          // A stage found silent in this step would only time the abort out: it is not asked.
          const skip = new Set(this.silent.filter((s) => s.step === input.step).map((s) => s.rank));
          await this.requestAll(CtlVerb.ABORT, () => encodeJson({ step: input.step }), timeout, skip);
        }),
      },
      actions: {
        feedInputs: (_, { from, to }) => {
          for (let mb = from; mb < to; mb++) this.feed(this.work!, mb);
        },
        sendUpdate: (_, { step, except }) => {
          for (let r = 0; r < o.stages; r++) if (r !== except) this.sendUpdate(step, r);
        },
        grantUpdate: (_, { step, rank }) => this.sendUpdate(step, rank),
        resolveStep: (_, outcome) => this.pending?.resolve(outcome),
        rejectStep: (_, { step, failure }) => {
          // A stage's own error was kept as it came; a failure of the scheduler's (timeout, silence, transport) is kept here.
          if (!this.lastErrors.some((e) => e.step === step && e.key === failure.key && e.code === failure.code)) this.keepError({ step, ...failure });
          // A stage may have been replaced (a restarted worker makes a new key): asked again before the next step.
          this.keys = null;
          this.pending?.reject(errorOf(failure));
        },
      },
    });
    // Named by job, so that the stages in other processes can name it as a sender.
    this.inspector = o.inspect ? new ActorInspector({ bus: o.bus, scope: o.job, actor: 'scheduler', sessionId: actorSessionId(o.job, 'scheduler') }) : undefined;
    this.actor = createActor(machine, {
      input: { stages: o.stages },
      id: 'scheduler',
      ...(this.inspector ? { inspect: this.inspector.inspect } : {}),
    });
    this.sub = o.bus.subscribe(schedWildcard(o.job), (m) => this.onEvent(m));
    // A prediction's outputs: the last stage's frames (sealed by it), kept by step and microbatch until taken.
    this.outputSub = o.bus.subscribeFrames(outputSubject(o.job), {
      maxBytes: o.maxFrameBytes ?? 256 * 1024 * 1024,
      phase: Phase.FORWARD,
      admit: (h, m) => {
        if (h.key.job !== o.job) return new UnexpectedFrameError(`output of job ${h.key.job}`);
        const key = this.keys?.[o.stages - 1];
        if (!key || !checkSeal(h, m.subject, key)) return new ForgedFrameError(`output ${h.key.step}/${h.key.microbatch} does not carry the last stage's seal`);
        return null;
      },
      onFrame: (f) => {
        const byMb = this.outputFrames.get(f.key.step) ?? new Map<number, Frame>();
        byMb.set(f.key.microbatch, f);
        this.outputFrames.set(f.key.step, byMb);
      },
      onRefuse: () => this.malformedEvents++,
    });
  }

  /** Starts the actor and subscribes to stage events. */
  static async start(o: SchedulerHostOptions): Promise<SchedulerHost> {
    const h = new SchedulerHost(o);
    h.actor.start();
    h.rollCall = await RollCall.start({ bus: o.bus, scope: o.job, actor: 'scheduler', answer: () => h.presence() });
    return h;
  }

  /** What the scheduler tells an inspector that asks who is there. */
  private presence() {
    return {
      actors: this.inspector?.present() ?? [],
      ...(this.shape ? { shape: this.shape } : {}),
      errors: { count: this.errorCount, first: this.firstError, latest: [...this.lastErrors] },
      rejects: { count: this.rejects, latest: this.lastRejects.slice(-20) },
    };
  }

  private keepError(e: ErrorEvent): void {
    this.errorCount++;
    this.firstError ??= e;
    this.lastErrors.push(e);
    if (this.lastErrors.length > 20) this.lastErrors.shift();
  }

  /**
   * Every stage's seal key, asked of each (the reply comes to this connection alone), and
   * each stage told its neighbours' keys: done before the first step, and again after a
   * failed step (a worker may have been replaced and made a new key).
   */
  private async seal(timeoutMs: number): Promise<void> {
    if (this.keys) return;
    const ranks = Array.from({ length: this.o.stages }, (_, r) => r);
    const keys = await Promise.all(
      ranks.map(async (r) => {
        const subject = ctlSubject(this.o.job, r, CtlVerb.KEY);
        try {
          return parseSealKey(decodeReply('key', await this.o.bus.request(subject, encodeJson({}), timeoutMs)).key);
        } catch (cause) {
          throw new TransportError(`stage ${r} gave no seal key: ${messageOf(cause)}`, { cause });
        }
      }),
    );
    const text = (r: number) => (r >= 0 && r < keys.length ? sealKeyText(keys[r]!) : '');
    await this.requestAll(CtlVerb.PEERS, (r) => encodeJson({ prev: text(r - 1), next: text(r + 1) }), timeoutMs);
    this.keys = keys;
  }

  /** The stages' seal keys (by rank) as last asked; null before the first step and after a failed one. */
  sealKeys(): readonly Uint8Array[] | null {
    return this.keys;
  }

  /** Forgets the stages' seal keys: the next step asks them again (call it when a stage was replaced). */
  reseal(): void {
    this.keys = null;
  }

  private async requestAll(verb: CtlVerb, body: (rank: number) => Uint8Array, timeoutMs: number, skip: ReadonlySet<number> = new Set()): Promise<void> {
    const ranks = Array.from({ length: this.o.stages }, (_, r) => r).filter((r) => !skip.has(r));
    const acks = await Promise.all(ranks.map(async (r) => ({ r, ack: decodeAck(await this.o.bus.request(ctlSubject(this.o.job, r, verb), body(r), timeoutMs)) })));
    const bad = acks.find((a) => !a.ack.ok);
    if (bad && !bad.ack.ok) throw new TransportError(`stage ${bad.r} refused ${verb}: ${bad.ack.code}: ${bad.ack.message}`);
  }

  /**
   * Sends the first queued step's plans (each stage queues it behind the running step) and,
   * once every stage has acked, its first inputs. The running step's plans were acked first,
   * and every stage knows the queued plan before any frame of that step exists, so no stage
   * is sent a frame of a step it has not heard of.
   */
  private beginEarly(): void {
    const q = this.queue[0];
    const running = this.work;
    if (!q || q.begun || !running || this.planned !== running.step) return;
    // After a step without UPDATE each stage goes on to the queued one as soon as its own list
    // is done; stages sharing a device must not (a co-hosted stage may still be in the step).
    if (!running.update && running.plan(0).order !== '') return;
    const w = q.work;
    q.begun = (async () => {
      await this.requestAll(CtlVerb.STEP, (r) => encodeJson(w.plan(r)), this.o.requestTimeoutMs ?? 10_000);
      this.planned = w.step;
      // Dropped meanwhile (the running step failed and its abort took the queued plan too): no inputs.
      if (this.queue[0] !== q) return 0;
      const n = Math.min(w.microbatches, w.feedBound);
      for (let mb = 0; mb < n; mb++) this.feed(w, mb);
      return n;
    })();
    q.begun.catch(() => {}); // seen when the step starts (beginStep) or is dropped
  }

  private feed(w: StepWork, mb: number): void {
    // Chained so microbatches go out in order even when a publish waits for the server.
    this.feeding = this.feeding.then(async () => {
      for (const { rank, frame } of w.inputs(mb)) await sendFrame(this.o.bus, this.o.job, rank, Phase.INPUT, frame);
    }).catch((err: unknown) => this.transportFailed(w.step, err));
  }

  /** Publishes UPDATE of `step` to stage `rank`. */
  private sendUpdate(step: number, rank: number): void {
    const m = encodeKeyOnly({ job: this.o.job, step, microbatch: 0, phase: Phase.UPDATE }, 'sched');
    void this.o.bus.publish(stageSubject(this.o.job, rank, Phase.UPDATE), m.data, m.headers).catch((err: unknown) => this.transportFailed(step, err));
  }

  private transportFailed(step: number, err: unknown): void {
    // Through deliver: a failed early input of a begun step fails that step once it starts.
    this.deliver({ type: 'STAGE_ERROR', rank: -1, step, failure: { key: `step ${step} publish`, code: 'TRANSPORT', message: messageOf(err) } });
  }

  private onEvent(m: BusMessage): void {
    try {
      // The sender is the subject's rank, which only that stage's user may publish on; a body
      // naming another rank is refused.
      const from = parseSchedSubject(m.subject);
      if (!from || from.rank >= this.o.stages) throw new FrameError(`unknown scheduler event subject ${m.subject}`);
      const { rank } = from;
      const mine = <T extends { rank: number }>(e: T): T => {
        if (e.rank !== rank) throw new FrameError(`${m.subject}: the event names stage ${e.rank}, the subject stage ${rank}`);
        return e;
      };
      switch (from.event) {
        case SchedEvent.ACTION: {
          const e = mine(decodeMessage('action', m.data));
          return this.deliver({ type: 'ACTION', rank, step: e.step, action: e.action });
        }
        case SchedEvent.LOSS:
          // A loss comes from the last stage.
          if (rank !== this.o.stages - 1) throw new FrameError(`${m.subject}: a loss from stage ${rank}, not the last`);
          return this.deliver({ type: 'LOSS', ...decodeMessage('loss', m.data) });
        case SchedEvent.DONE:
          return this.deliver({ type: 'DONE', ...mine(decodeMessage('done', m.data)) });
        case SchedEvent.UPDATED:
          return this.deliver({ type: 'UPDATED', ...mine(decodeMessage('updated', m.data)) });
        case SchedEvent.ERROR: {
          const e = mine(decodeMessage('error', m.data));
          this.keepError(e);
          return this.deliver({ type: 'STAGE_ERROR', rank, step: e.step, failure: { key: e.key, code: e.code, message: e.message } });
        }
        case SchedEvent.REJECT: {
          const e = mine(decodeMessage('reject', m.data));
          this.lastRejects.push(e);
          if (this.lastRejects.length > 100) this.lastRejects.shift();
          this.rejects++;
          if (e.step === null || e.phase === null) return this.fromStage(rank, () => this.actor.send({ type: 'REJECT', rank }));
          // With its key, the machine judges it (a refused INPUT fails its step); one of a begun step waits for it.
          const key = `${this.o.job}/${e.step}/${e.microbatch ?? '?'}/${e.phase}`;
          return this.deliver({ type: 'REJECT', rank, refused: { step: e.step, phase: e.phase, key, code: e.code, message: e.message } });
        }
        default:
          throw new FrameError(`unknown scheduler event subject ${m.subject}`);
      }
    } catch {
      this.malformedEvents++;
    }
  }

  /** Hands a stage event to the actor; one of a step that began early but has not started yet waits for it. */
  private deliver(e: StepEvent): void {
    const head = this.queue[0];
    if (head?.begun && stepOf(e) === head.work.step && stepOf(e) !== this.work?.step) {
      this.early.push(e);
      return;
    }
    if (e.type === 'ACTION' && this.work && e.step === this.work.step) {
      this.ran[e.rank]?.add(e.action);
      this.progressAt = performance.now();
      // Only stage 0's releases move the machine; the rest count for progress (above) and
      // the trace, not as machine transitions (each costs the driver 0.2-0.3 ms here).
      if (!freesForFeed(this.work, e)) return;
    }
    // A loss comes from the last stage.
    this.fromStage(e.type === 'LOSS' ? this.o.stages - 1 : e.rank, () => this.actor.send(e));
  }

  /** Runs `send` with stage `rank` (-1: none, the scheduler's own transport) as the event's sender, for the inspector. */
  private fromStage(rank: number, send: () => void): void {
    if (this.inspector && rank >= 0) this.inspector.sendFrom(`stage-${rank}`, send);
    else send();
  }

  /**
   * Runs one step; resolves with its outcome or rejects with the step's first error. Called
   * while a step runs, the step is queued: the first in the queue begins (plans and first
   * inputs out) as soon as every stage holds the running step's plan, so each stage starts
   * it right after applying the running step's update. When a step fails, the steps queued
   * behind it are not run: they reject with a StateError whose cause is that failure.
   */
  async run(work: StepWork): Promise<RunOutcome> {
    // A failure is settled first (its begun successor aborted on every stage): a step called
    // meanwhile waits for it, or a stage still aborting that successor could drop it too.
    if (this.settling) {
      const q: Queued = { work, pending: deferred<RunOutcome>() };
      this.afterSettling.push(q);
      return q.pending.promise;
    }
    if (this.work || this.queue.length > 0 || !this.actor.getSnapshot().matches('idle')) {
      const q: Queued = { work, pending: deferred<RunOutcome>() };
      this.queue.push(q);
      this.beginEarly();
      return q.pending.promise;
    }
    return this.runNow(work);
  }

  /** Runs `work` now; `begun` when its plans and first inputs went out early. */
  private async runNow(work: StepWork, begun?: Promise<number>): Promise<RunOutcome> {
    this.work = work;
    const begunEarly = begun !== undefined;
    this.earlyStart = begun;
    const pending = deferred<StepOutcome>();
    this.pending = pending;
    const { plan: _p, inputs: _i, ...req } = work;
    this.ran = Array.from({ length: this.o.stages }, () => new Set<string>());
    this.progressAt = performance.now();
    // Inspectors learn the step's real shape (for its theoretical bubble) when it changes.
    const changed = !this.shape || this.shape.microbatches !== work.microbatches;
    this.shape = { step: work.step, stages: this.o.stages, microbatches: work.microbatches };
    if (changed) this.rollCall?.announce();
    this.actor.send({ type: 'START', req });
    // Events of this step that came while the previous one finished.
    const early = this.early.filter((e) => stepOf(e) === work.step);
    this.early = this.early.filter((e) => stepOf(e) > work.step);
    for (const e of early) this.deliver(e);
    const watchdog = this.watch(work.step);
    let failed: unknown;
    try {
      return { ...(await pending.promise), begunEarly };
    } catch (err) {
      failed = err;
      // A failed prediction's outputs will not be taken: they go.
      for (const s of [...this.outputFrames.keys()]) if (s <= work.step) this.outputFrames.delete(s);
      this.outputSub.keepOnly(work.step + 1);
      throw err;
    } finally {
      watchdog.stop();
      await this.feeding;
      if (this.pending === pending) {
        this.pending = undefined;
        this.work = undefined;
      }
      if (failed === undefined) this.next();
      else void this.settle(work.step, failed);
    }
  }

  /** After a step that succeeded: the next queued step runs. */
  private next(): void {
    const q = this.queue.shift();
    if (q) this.runNow(q.work, q.begun).then(q.pending.resolve, q.pending.reject);
  }

  /**
   * After step `step` failed: every queued step is dropped (a begun one aborted on every
   * stage first) and rejects; then the steps called meanwhile run, in order.
   */
  private async settle(step: number, failed: unknown): Promise<void> {
    const dropped = this.queue.splice(0);
    this.settling = dropped.length > 0;
    this.early = [];
    for (const q of dropped) {
      if (q.begun) {
        // A stage may have started it already (its update was applied before the failure was known).
        await q.begun.catch(() => {});
        await this.requestAll(CtlVerb.ABORT, () => encodeJson({ step: q.work.step }), this.o.requestTimeoutMs ?? 10_000).catch(() => {});
      }
      q.pending.reject(new StateError(`step ${q.work.step} was not run: step ${step} failed (${messageOf(failed)})`, { cause: failed }));
    }
    this.settling = false;
    for (const q of this.afterSettling.splice(0)) this.run(q.work).then(q.pending.resolve, q.pending.reject);
  }

  /** Probes every stage while step `step` runs; a stage silent past the liveness timeout fails the step. */
  private watch(step: number): { stop(): void } {
    const every = this.o.heartbeatMs ?? 1_000;
    const limit = this.o.livenessTimeoutMs ?? 30_000;
    const start = performance.now();
    const lastHeard = Array.from({ length: this.o.stages }, () => start);
    const lastSeen = this.lastProbe;
    let stopped = false;
    const asking = new Set<number>();
    const probe = async (rank: number) => {
      if (asking.has(rank)) return; // its last probe is still out
      asking.add(rank);
      try {
        const reply = decodeReply('probe', await this.o.bus.request(ctlSubject(this.o.job, rank, CtlVerb.PROBE), encodeJson({}), limit));
        lastHeard[rank] = performance.now();
        lastSeen[rank] = reply;
      } catch {
        // No answer (a timeout, no responders): the silence is judged below.
      } finally {
        asking.delete(rank);
      }
    };
    // A first probe now: a stage's whereabouts are known even in steps shorter than a heartbeat.
    for (let r = 0; r < this.o.stages; r++) void probe(r);
    const stallAfter = this.o.stallTimeoutMs ?? Infinity;
    const timer = setInterval(() => {
      if (stopped) return;
      const now = performance.now();
      // Every stage answers, but no action has ended for too long: a stuck step.
      if (now - this.progressAt >= stallAfter) {
        const s = this.actor.getSnapshot();
        if (!s.matches({ active: 'updating' }) && !s.matches({ active: 'aborting' })) {
          stopped = true;
          const report = `step ${step} made no progress for ${Math.round(now - this.progressAt)} ms\n${this.report()}`;
          this.o.onSilent?.(report);
          const stuck = this.ran.findIndex((done, r) => this.work!.plan(r).actions.split(' ').some((a) => a && !done.has(a)));
          this.failStep(Math.max(0, stuck), 'STEP_STALLED', report);
          return;
        }
      }
      for (let r = 0; r < this.o.stages; r++) {
        if (now - lastHeard[r]! >= limit) {
          const seen = lastSeen[r];
          const where = seen
            ? `last seen in step ${seen.step}, state ${seen.state}${seen.action ? ` at ${seen.action}` : ''}${seen.awaiting.length ? `, waiting for ${seen.awaiting.join(', ')}` : ''}`
            : 'never answered a probe';
          stopped = true;
          this.silent.push({ rank: r, step, state: seen?.state ?? null, action: seen?.action ?? null, awaiting: seen?.awaiting ?? [] });
          const message = `stage ${r} answered no liveness probe for ${Math.round(now - lastHeard[r]!)} ms; ${where}`;
          this.o.onSilent?.(`${message}\n${this.report()}`);
          this.failStep(r, 'STAGE_SILENT', `${message}\n${this.report()}`);
          return;
        }
        void probe(r);
      }
    }, every);
    return {
      stop: () => {
        stopped = true;
        clearInterval(timer);
      },
    };
  }

  private readonly outputSub: FrameSubscription;
  /** Every stage's seal key by rank, once asked (seal); null until then and after a failed step. */
  private keys: Uint8Array[] | null = null;
  private readonly outputFrames = new Map<number, Map<number, Frame>>();

  /** The output frames of predict step `step`, in microbatch order (and forgets them). */
  takeOutputs(step: number, microbatches: number): Frame[] {
    const byMb = this.outputFrames.get(step);
    this.outputFrames.delete(step);
    const frames = Array.from({ length: microbatches }, (_, mb) => byMb?.get(mb));
    const missing = frames.flatMap((f, mb) => (f ? [] : [mb]));
    if (missing.length) throw new TransportError(`step ${step}: the outputs of microbatches ${missing.join(', ')} did not arrive`);
    return frames as Frame[];
  }

  /** Whether a step is running. */
  get running(): boolean {
    return this.work !== undefined;
  }

  /** Actions each stage reported done in the running step. */
  private ran: Set<string>[] = [];
  /** When the running step last made progress (an action ended). */
  private progressAt = 0;

  /**
   * The running step's action grid, a row per stage: actions done, the one it is at in
   * brackets, what that one waits for, and the stage's state as its last probe answer gave it.
   *
   * ```
   * stage 0  running.waiting   F0 F1 [B0] F2 B1 F3 B2 B3   waiting for BACKWARD:0
   * stage 1  (no answer)       F0 [B0] F1 B1 ...
   * ```
   */
  report(): string {
    const w = this.work;
    if (!w) return 'no step is running';
    const lines = [`step ${w.step}, ${w.microbatches} microbatches${w.forwardOnly ? ', forward only' : ''}:`];
    const rows = Array.from({ length: this.o.stages }, (_, r) => {
      const actions = w.plan(r).actions.split(' ').filter(Boolean);
      const done = this.ran[r] ?? new Set<string>();
      const at = actions.findIndex((a) => !done.has(a));
      const probe = this.lastProbe[r];
      const state = probe && probe.step === w.step ? probe.state : probe ? `step ${probe.step} ${probe.state}` : '(no answer)';
      const grid = actions.map((a, i) => (i === at ? `[${a}]` : done.has(a) ? a : '·'.repeat(a.length))).join(' ');
      const waits = at < 0 ? 'done' : probe && probe.step === w.step && probe.awaiting.length ? `waiting for ${probe.awaiting.join(', ')}` : `at ${actions[at]}`;
      return { r, state, grid, waits };
    });
    const width = Math.max(...rows.map((x) => x.state.length));
    for (const x of rows) lines.push(`  stage ${x.r}  ${x.state.padEnd(width)}  ${x.grid}   ${x.waits}`);
    return lines.join('\n');
  }

  /** Each stage's last answer to a liveness probe (kept across steps). */
  private readonly lastProbe: (ProbeReply | null)[];

  /** Stages the liveness watchdog found silent, latest last. */
  readonly silent: { readonly rank: number; readonly step: number; readonly state: string | null; readonly action: string | null; readonly awaiting: readonly string[] }[] = [];

  /**
   * Fails the running step as if stage `rank` had reported an error (a worker the driver saw
   * die): the step is aborted on every stage and its promise rejects. No-op when idle.
   */
  failStep(rank: number, code: string, message: string): void {
    const s = this.actor.getSnapshot();
    if (s.matches('idle') || !s.context.req) return;
    this.actor.send({ type: 'STAGE_ERROR', rank, step: s.context.req.step, failure: { key: `rank ${rank}`, code, message } });
  }

  /**
   * Fails step `step` from outside (data-parallel replicas: another replica's step failed, so
   * this one cannot reach its all-reduce) and resolves once every stage has left it. Running,
   * it is aborted on every stage, also while its stages wait in the all-reduce (the machine
   * aborts nothing in `updating`; with replicas no stage can have applied an update that
   * another replica never sent gradients for). Queued, it is dropped (aborted on the stages
   * that began it) and rejects unrun. Over, or never called: nothing.
   */
  async cancel(step: number, code: string, message: string): Promise<void> {
    const queued = [this.queue, this.afterSettling].flatMap((list) => list.filter((q) => q.work.step === step).map((q) => ({ list, q })));
    for (const { list, q } of queued) {
      list.splice(list.indexOf(q), 1);
      this.early = this.early.filter((e) => stepOf(e) !== step);
      if (q.begun) {
        await q.begun.catch(() => {});
        await this.abortStages(step);
      }
      q.pending.reject(new StateError(`step ${step} was not run: ${message}`));
    }
    if (queued.length > 0) return;
    const s = this.actor.getSnapshot();
    if (s.matches('idle') || s.context.req?.step !== step) return;
    const updating = s.matches({ active: 'updating' });
    this.actor.send({ type: 'STAGE_ERROR', rank: -1, step, failure: { key: `step ${step}`, code, message } });
    if (updating) await this.abortStages(step);
    await this.idle();
  }

  /** Asks every stage to abort step `step` (a stage past it refuses, one idle in it has nothing to do); refusals are ignored. */
  async abortStages(step: number): Promise<void> {
    await this.requestAll(CtlVerb.ABORT, () => encodeJson({ step }), this.o.requestTimeoutMs ?? 10_000).catch(() => {});
  }

  /** Resolves once no step is running (an aborted step has finished aborting). */
  async idle(): Promise<void> {
    await waitFor(this.actor, (s) => s.matches('idle'), { timeout: Infinity });
    await this.feeding;
  }

  /** Stops the actor and drains the subscription. The bus stays open. */
  async close(): Promise<void> {
    this.pending?.reject(new StateError('the scheduler was closed during the step'));
    for (const q of [...this.queue.splice(0), ...this.afterSettling.splice(0)]) q.pending.reject(new StateError(`the scheduler was closed before step ${q.work.step} ran`));
    this.actor.stop();
    this.inspector?.close();
    await this.rollCall?.close();
    await this.sub.drain();
    await this.outputSub.drain();
  }
}
