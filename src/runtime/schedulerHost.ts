/**
 * Binds the scheduler actor to NATS: stage events in as the machine's events, its actions out
 * as step plans, INPUT and UPDATE frames, aborts and probes. The machine owns the queue of
 * steps, their early beginning, settling after a failure, liveness and stalls.
 */
import { createActor, fromPromise, waitFor, type Actor } from 'xstate';
import { livenessProbes } from '../../actors/liveness.js';
import {
  freesForFeed,
  schedulerMachine,
  type SchedulerEvent,
  type SilentStage,
  type StepFailure,
  type StepOutcome,
  type StepRequest,
} from '../../actors/schedulerMachine.js';
import { stepGrid } from '../../actors/stepGrid.js';
import { StageError, StateError, StepTimeoutError, TransportError, type TroupeError, messageOf } from '../errors.js';
import type { Frame } from '../protocol/frame.js';
import { decodeReply, encodeJson, type RejectEvent, type StepPlan } from '../protocol/messages.js';
import { CtlVerb, ctlSubject, schedWildcard } from '../protocol/subjects.js';
import { ActorInspector, actorSessionId } from '../inspect/actorInspector.js';
import { RollCall } from '../inspect/rollCall.js';
import type { Bus } from '../transport/bus.js';
import { deferred, type Deferred } from './deferred.js';
import { PredictOutputs } from './predictOutputs.js';
import { readSchedEvent } from './schedEvents.js';
import { SchedulerPresence } from './schedulerPresence.js';
import { SchedulerSends } from './schedulerSends.js';
import { askSealKeys, requestAll } from './stageRequests.js';
import { StepProgressTracker } from './stepProgress.js';

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
   * Publish the actor's inspection events on troupe.<job>.inspect.scheduler (default off). With or without, the host answers an
   * inspector's `who` with the step's shape and the errors and refused frames it kept.
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
   * STEP_STALLED with its action grid (`report()`). Actions count when reported: a stage sends
   * its action events with its next frame, when it waits, or with its next other event, so
   * this must exceed a stage's longest stretch of actions that publish nothing.
   */
  readonly stallTimeoutMs?: number;
  /** Told at once, with the step's action grid, when a stage is found silent or the step stalls (the step then fails). */
  readonly onSilent?: (message: string) => void;
}

/** One step as the pipeline hands it to the scheduler. */
export interface StepWork extends StepRequest {
  /** Each stage's plan. */
  readonly plan: (rank: number) => StepPlan;
  /** INPUT frames of microbatch `mb`, each with the rank it goes to. */
  readonly inputs: (mb: number) => readonly { readonly rank: number; readonly frame: Frame }[];
}

/** A running scheduler actor (xstate): subscribe to follow its state; its host sends it its events. */
export type SchedulerActor = Actor<typeof schedulerMachine>;

/** A step's outcome, and whether it began early (plans and first inputs sent while the previous step ran). */
export interface RunOutcome extends StepOutcome {
  readonly begunEarly: boolean;
}

/** Turns a step failure into the error the caller sees. */
function errorOf(f: StepFailure): TroupeError {
  if (f.code === 'STEP_TIMEOUT') return new StepTimeoutError(f.message);
  if (f.rank < 0) return new TransportError(`${f.key}: ${f.message}`);
  return new StageError(f.rank, f.key, `${f.code}: ${f.message}`, { reason: f.code });
}

/** A step called: its work and the caller's promise. */
interface Call {
  readonly work: StepWork;
  readonly pending: Deferred<RunOutcome>;
  begunEarly: boolean;
}

/**
 * The scheduler actor and its subscription to stage events.
 *
 * @example
 * const sched = await SchedulerHost.start({ bus, job, stages: 2 });
 * const outcome = await sched.run(work);
 */
export class SchedulerHost {
  readonly actor: SchedulerActor;
  private readonly calls = new Map<number, Call>();
  private readonly progress: StepProgressTracker;
  private readonly outputs: PredictOutputs;
  private readonly sub: { drain(): Promise<void> };
  private readonly sends: SchedulerSends;
  private readonly presence = new SchedulerPresence();
  /** Every stage's seal key by rank, once asked; null until then and after a failed step. */
  private keys: Uint8Array[] | null = null;
  /** The last failed step's error: the cause of the steps it drops. */
  private failed: { step: number; error: TroupeError } | null = null;
  /** Scheduler events that could not be parsed. */
  malformedEvents = 0;
  private readonly inspector: ActorInspector | undefined;
  private rollCall: RollCall | undefined;

  private constructor(private readonly o: SchedulerHostOptions) {
    const { bus, job, stages } = o;
    const timeout = o.requestTimeoutMs ?? 10_000;
    this.progress = new StepProgressTracker(stages);
    // A failed early input of a begun step fails that step once it starts (the machine holds it).
    this.sends = new SchedulerSends(bus, job, (step, err) =>
      this.deliver(-1, { type: 'STAGE_ERROR', rank: -1, step, failure: { key: `step ${step} publish`, code: 'TRANSPORT', message: messageOf(err) } }),
    );
    const machine = schedulerMachine.provide({
      actors: {
        beginStep: fromPromise<number, StepRequest>(async ({ input }) => {
          await this.sealKeys();
          await requestAll(bus, job, stages, CtlVerb.STEP, (r) => encodeJson(this.work(input.step).plan(r)), timeout);
          return 0;
        }),
        abortStep: fromPromise<void, { step: number; skip?: readonly number[] }>(({ input }) =>
          requestAll(bus, job, stages, CtlVerb.ABORT, () => encodeJson({ step: input.step }), timeout, new Set(input.skip)),
        ),
        liveness: livenessProbes({
          probe: async (r, ms) => decodeReply('probe', await bus.request(ctlSubject(job, r, CtlVerb.PROBE), encodeJson({}), ms)),
          progress: () => this.progress.progress(),
        }),
      },
      actions: {
        feedInputs: (_, { step, from, to }) => {
          const w = this.calls.get(step)?.work;
          for (let mb = from; w && mb < to; mb++) this.sends.feed(step, () => w.inputs(mb));
        },
        sendUpdate: (_, { step, except }) => {
          for (let r = 0; r < stages; r++) if (r !== except) this.sends.update(step, r);
        },
        grantUpdate: (_, { step, rank }) => this.sends.update(step, rank),
        planEarly: ({ self }, { step }) => {
          const answer = (e: SchedulerEvent) => self.getSnapshot().status === 'active' && self.send(e);
          requestAll(bus, job, stages, CtlVerb.STEP, (r) => encodeJson(this.work(step).plan(r)), timeout).then(
            () => answer({ type: 'PLANNED', step }),
            (err: unknown) => answer({ type: 'PLAN_FAILED', step, message: messageOf(err) }),
          );
        },
        abortEarly: ({ self }, { step }) => {
          void this.abortStages(step).then(() => self.getSnapshot().status === 'active' && self.send({ type: 'EARLY_ABORTED', step }));
        },
        stepStarts: (_, { step, begunEarly }) => {
          const call = this.calls.get(step);
          if (call) call.begunEarly = begunEarly;
          this.progress.start(step);
          if (this.presence.stepShape({ step, stages, microbatches: call?.work.microbatches ?? 0 })) this.rollCall?.announce();
        },
        resolveStep: (_, outcome) => {
          const call = this.calls.get(outcome.step);
          call?.pending.resolve({ ...outcome, begunEarly: call.begunEarly });
        },
        rejectStep: (_, { step, failure }) => {
          // A stage's own error was kept as it came; a failure of the scheduler's (timeout, silence, transport) is kept here.
          if (!this.presence.hasError(step, failure.key, failure.code)) this.presence.keepError({ step, ...failure });
          // A stage may have been replaced (a restarted worker makes a new key): asked again before the next step.
          this.keys = null;
          // A failed prediction's outputs will not be taken.
          this.outputs.forget(step);
          const error = errorOf(failure);
          this.failed = { step, error };
          this.calls.get(step)?.pending.reject(error);
        },
        dropStep: (_, { step, failedStep }) => {
          const cause = this.failed?.step === failedStep ? this.failed.error : undefined;
          this.calls.get(step)?.pending.reject(new StateError(`step ${step} was not run: step ${failedStep} failed (${messageOf(cause)})`, { cause }));
        },
        cancelStep: (_, { step, message }) => this.calls.get(step)?.pending.reject(new StateError(`step ${step} was not run: ${message}`)),
        reportSilence: (_, { message }) => o.onSilent?.(message),
      },
    });
    // Named by job, so that the stages in other processes can name it as a sender.
    this.inspector = o.inspect ? new ActorInspector({ bus, scope: job, actor: 'scheduler', sessionId: actorSessionId(job, 'scheduler') }) : undefined;
    this.actor = createActor(machine, {
      input: {
        stages,
        ...(o.livenessTimeoutMs ? { livenessTimeoutMs: o.livenessTimeoutMs } : {}),
        ...(o.heartbeatMs ? { heartbeatMs: o.heartbeatMs } : {}),
        ...(o.stallTimeoutMs ? { stallTimeoutMs: o.stallTimeoutMs } : {}),
      },
      id: 'scheduler',
      ...(this.inspector ? { inspect: this.inspector.inspect } : {}),
    });
    this.sub = bus.subscribe(schedWildcard(job), (m) => {
      try {
        const { rank, event, error, reject } = readSchedEvent(m, job, stages);
        if (error) this.presence.keepError(error);
        if (reject) this.presence.keepReject(reject);
        this.deliver(rank, event);
      } catch {
        this.malformedEvents++;
      }
    });
    this.outputs = new PredictOutputs(
      bus,
      job,
      o.maxFrameBytes ?? 256 * 1024 * 1024,
      () => this.keys?.[stages - 1] ?? null,
      () => this.malformedEvents++,
    );
  }

  /** Starts the actor and subscribes to stage events. */
  static async start(o: SchedulerHostOptions): Promise<SchedulerHost> {
    const h = new SchedulerHost(o);
    h.actor.start();
    h.rollCall = await RollCall.start({ bus: o.bus, scope: o.job, actor: 'scheduler', answer: () => h.presence.answer(h.inspector?.present() ?? []) });
    return h;
  }

  /**
   * Runs one step; resolves with its outcome or rejects with the step's first error. Called
   * while a step runs, the step is queued (see the machine): it begins early, and when a step
   * fails the steps queued behind it reject unrun with a StateError whose cause is that failure.
   */
  async run(work: StepWork): Promise<RunOutcome> {
    const { plan, inputs: _i, ...fields } = work;
    const actions = Array.from({ length: this.o.stages }, (_, r) => plan(r).actions);
    const call: Call = { work, pending: deferred<RunOutcome>(), begunEarly: false };
    this.calls.set(work.step, call);
    this.progress.open(work.step);
    this.actor.send({ type: 'RUN', req: { ...fields, actions, ordered: plan(0).order !== '' } });
    try {
      return await call.pending.promise;
    } finally {
      this.calls.delete(work.step);
      this.progress.close(work.step);
    }
  }

  private work(step: number): StepWork {
    const call = this.calls.get(step);
    if (!call) throw new StateError(`step ${step} is not called`);
    return call.work;
  }

  /** Hands a stage event to the actor; most ACTIONs only count as progress (a transition each costs the driver 0.2-0.3 ms here). */
  private deliver(rank: number, e: SchedulerEvent): void {
    if (e.type === 'ACTION') {
      this.progress.note(e.rank, e.step, e.action);
      const call = this.calls.get(e.step);
      if (!call || !freesForFeed(call.work, e)) return;
    }
    // Sent with the stage (rank -1: the scheduler's own transport) as its sender, for the inspector; a loss comes from the last stage.
    const from = e.type === 'LOSS' ? this.o.stages - 1 : rank;
    if (this.inspector && from >= 0) this.inspector.sendFrom(`stage-${from}`, () => this.actor.send(e));
    else this.actor.send(e);
  }

  /** The stages' seal keys (by rank): as last asked, or asked now (before the first step, after a failed one). */
  async sealKeys(): Promise<readonly Uint8Array[]> {
    this.keys ??= await askSealKeys(this.o.bus, this.o.job, this.o.stages, this.o.requestTimeoutMs ?? 10_000);
    return this.keys;
  }

  /** Forgets the stages' seal keys: the next step asks them again (call it when a stage was replaced). */
  reseal(): void {
    this.keys = null;
  }

  /** The output frames of predict step `step`, in microbatch order (and forgets them). */
  takeOutputs(step: number, microbatches: number): Frame[] {
    return this.outputs.take(step, microbatches);
  }

  /** Whether a step is running. */
  get running(): boolean {
    return this.actor.getSnapshot().matches('active');
  }

  /** The latest frames the stages refused (at most 100), newest last. */
  get lastRejects(): readonly RejectEvent[] {
    return this.presence.lastRejects;
  }

  /** Stages the liveness watch found silent, latest last. */
  get silent(): readonly SilentStage[] {
    return this.actor.getSnapshot().context.watch.silent;
  }

  /** The running step's action grid (see actors/stepGrid.ts). */
  report(): string {
    const s = this.actor.getSnapshot();
    const req = s.context.req;
    if (!s.matches('active') || !req) return 'no step is running';
    return stepGrid({
      step: req.step,
      microbatches: req.microbatches,
      forwardOnly: req.forwardOnly,
      actions: req.actions ?? [],
      ran: this.progress.progress().ran,
      probes: s.context.watch.probes,
    });
  }

  /**
   * Fails the running step as if stage `rank` had reported an error (a worker the driver saw die): aborted on every stage, its
   * promise rejects. No-op when idle.
   */
  failStep(rank: number, code: string, message: string): void {
    const s = this.actor.getSnapshot();
    if (!s.matches('active') || !s.context.req) return;
    this.actor.send({ type: 'STAGE_ERROR', rank, step: s.context.req.step, failure: { key: `rank ${rank}`, code, message } });
  }

  /**
   * Fails step `step` from outside (data-parallel replicas: another replica's step failed, so
   * this one cannot reach its all-reduce) and resolves once every stage has left it. Running,
   * it is aborted on every stage, also while its stages wait in the all-reduce. Queued, it is
   * dropped (aborted on the stages that began it) and rejects unrun. Over, or never called: nothing.
   */
  async cancel(step: number, code: string, message: string): Promise<void> {
    const call = this.calls.get(step);
    if (!call) return;
    this.actor.send({ type: 'CANCEL', step, code, message });
    await call.pending.promise.catch(() => {});
  }

  /** Asks every stage to abort step `step` (a stage past it refuses, one idle in it has nothing to do); refusals are ignored. */
  async abortStages(step: number): Promise<void> {
    await requestAll(this.o.bus, this.o.job, this.o.stages, CtlVerb.ABORT, () => encodeJson({ step }), this.o.requestTimeoutMs ?? 10_000).catch(() => {});
  }

  /** Resolves once no step is running (an aborted step has finished aborting). */
  async idle(): Promise<void> {
    await waitFor(this.actor, (s) => s.matches('idle'), { timeout: Infinity });
    await this.sends.settled();
  }

  /** Stops the actor and drains the subscription. The bus stays open. */
  async close(): Promise<void> {
    const s = this.actor.getSnapshot();
    const running = s.matches('active') ? s.context.req?.step : undefined;
    for (const [step, call] of this.calls)
      call.pending.reject(new StateError(step === running ? 'the scheduler was closed during the step' : `the scheduler was closed before step ${step} ran`));
    this.actor.stop();
    this.inspector?.close();
    await this.rollCall?.close();
    await this.sub.drain();
    await this.outputs.drain();
  }
}
