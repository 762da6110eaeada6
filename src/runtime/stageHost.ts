/** Binds a stage actor to NATS: frames and control requests in, activations, gradients and events out. */
import { hostname } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { createActor, waitFor, type Actor } from 'xstate';
import { admitStep, splitInput } from '../../actors/admitFrame.js';
import { actionRunner, missing, stageMachine, updateRunner, type ExecuteInput, type StageEvent } from '../../actors/stageMachine.js';
import { ForgedFrameError, FrameError, StaleStepError, StateError, TroupeError, UnexpectedFrameError, messageOf } from '../errors.js';
import type { StageCompute, ActionResult } from '../compute/stageCompute.js';
import type { StagePartition } from '../compute/partition.js';
import { exportStageState, importStageState } from '../compute/stageState.js';
import { releaseDevice } from '../compute/wire.js';
import { ActorInspector, actorSessionId, senderActor } from '../inspect/actorInspector.js';
import { RollCall } from '../inspect/rollCall.js';
import type { Frame, FrameHeader, WireTensor } from '../protocol/frame.js';
import { formatKey, type Key } from '../protocol/key.js';
import { appliesUpdate, decodeMessage, encodeJson, type Ack, type Hello, type KeyReply, type ProbeReply, type RejectEvent, type StateInfo, type StatsMessage, type StepPlan } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { checkSeal, newSealKey, parseSealKey, sealFrame, sealKeyText } from '../protocol/seal.js';
import {
  CtlVerb,
  SchedEvent,
  ctlWildcard,
  helloSubject,
  lastToken,
  outputSubject,
  schedSubject,
  snapshotSubject,
  stageSubject,
  stageWildcard,
  stateSubject,
  statsSubject,
} from '../protocol/subjects.js';
import { parseStageActions, splitsBackward, type Action, type ActionKind } from '../schedule/action.js';
import { releasedBy } from '../schedule/constraint.js';
import type { AllReduce } from './allReduce.js';
import type { DeviceTurn } from './deviceTurn.js';
import { isLocalStage, registerLocalStage, sendFrame } from './localStages.js';
import { STATE_SENDER } from './stageStates.js';
import { microbatchSizes } from '../schedule/microbatch.js';
import type { Bus, BusMessage } from '../transport/bus.js';
import type { FrameSubscription } from '../transport/subscribeFrames.js';

/** Longest a finished action's event is held back (see `StageHost.hold`). */
const HOLD_MS = 50;

/** Options of a stage host. */
export interface StageHostOptions {
  readonly bus: Bus;
  readonly job: string;
  readonly partition: StagePartition;
  readonly compute: StageCompute;
  /** Largest frame accepted, in bytes (default 256 MiB), state frames included. */
  readonly maxFrameBytes?: number;
  /** Milliseconds an abort may take before its ack reports failure (default 30 s). */
  readonly abortTimeoutMs?: number;
  /**
   * Publish the actor's inspection events on troupe.<job>.inspect.stage-<rank>, and answer an
   * inspector's `who` with its announcement and latest snapshot (default off).
   */
  readonly inspect?: boolean;
  /** What `ping` answers about the process: backend and device (default the current backend, cpu). */
  readonly identity?: { readonly backend: string; readonly device: string };
  /** Shared by the stages of one device, so that they run their actions in the device's order. */
  readonly turn?: DeviceTurn;
  /** Data-parallel replicas of this stage: gradients are summed over them before each update. */
  readonly allReduce?: AllReduce;
  /**
   * Take frames by hand from stages and the driver of this process, and hand them frames the
   * same way: tensors between neighbours in one process stay on their device, and never cross
   * nats-server (default off: every frame on the bus).
   */
  readonly handoff?: boolean;
}

/** Counters of one stage, as the runtime reports them (and publishes after every step). */
export type StageStats = StatsMessage;

/** A running stage actor (xstate): subscribe to follow its state; its host sends it its events. */
export type StageActor = Actor<typeof stageMachine>;

/**
 * One stage actor and its NATS subscriptions.
 *
 * @example
 * const host = await StageHost.start({ bus, job: 'mnist', partition, compute });
 * ...
 * await host.close();
 */
export class StageHost {
  readonly actor: StageActor;
  /** The frames of steps (and UPDATE), and the state frames, as they come off the bus. */
  private readonly frames: FrameSubscription;
  private readonly states: FrameSubscription;
  private readonly subs: { drain(): Promise<void> }[] = [];
  /**
   * The key this stage seals its frames with: made here, told only to the driver (in the
   * reply to `key`), which tells the neighbours. Another connection of this stage's user
   * cannot seal.
   */
  private readonly sealKey = newSealKey();
  /** The seal keys of the stages before and after this one (from `peers`); their frames are taken only with them. */
  private peerKeys: { prev: Uint8Array | null; next: Uint8Array | null } = { prev: null, next: null };
  private busyMs = 0;
  private idleMs = 0;
  /** Time in the stage machine's handling of events, and in reading frames outside it (stats). */
  private machineMs = 0;
  private framesMs = 0;
  private stepStartedAt = 0;
  private busyAtStepStart = 0;
  /** A state frame received on the state subject, applied by the next `load`. */
  private pendingState: Frame | undefined;
  private forwards = 0;
  private backwards = 0;
  private weightGrads = 0;
  /** Whether the current step's list has W actions (its B computes input gradients only). */
  private splitBackward = false;
  /** The action that frees a microbatch in the current step (B, W, or F when forward only). */
  private release: ActionKind = 'B';
  /** The current step's device positions, one per action (empty: no turn-taking). */
  private positions: number[] = [];
  private peakHeld = 0;
  /** Index of the action `execute` was last given in this step (the one computing, within a run); -1: none yet. */
  private executing = -1;
  /** Frames refused before they reached the actor (bad headers, chunks, seals). */
  private refusedOnArrival = 0;
  /** When each frame was whole at this stage (Unix ms), for its action's event (`inAt`). */
  private readonly arrivedAt = new WeakMap<Frame, number>();
  /** Frames that conflicted with the one held for their slot (each failed its step). */
  private conflicts = 0;
  private readonly from: string;
  private readonly offStatus: () => void;
  /** Frames handed over in this process whose device tensors may still be unclaimed (freed when dropped). */
  private handed: Frame[] = [];
  private offLocal: () => void = () => {};
  /** With `inspect`: publishes the actor's inspection events and keeps its latest snapshot. */
  private readonly inspector: ActorInspector | undefined;
  private rollCall: RollCall | undefined;

  private constructor(private readonly o: StageHostOptions) {
    const { partition: part, job, bus, compute } = o;
    this.from = `stage.${part.rank}`;
    const machine = stageMachine.provide({
      actions: {
        startUpdate: updateRunner((step) => this.applyUpdate(step)),
        reportReject: (_, { error, frame }) => {
          releaseDevice(frame.tensors);
          this.reject(`frame ${formatKey(frame.key)}`, error, frame.key);
        },
        reportConflict: (_, { step, error, frames }) => {
          for (const f of frames) releaseDevice(f.tensors);
          this.conflicts++;
          this.emit(SchedEvent.ERROR, { rank: part.rank, step, key: formatKey(frames[1].key), code: error.code, message: error.message });
        },
        reportDone: (_, { step, peakHeld }) => {
          this.peakHeld = Math.max(this.peakHeld, peakHeld);
          this.idleMs += performance.now() - this.stepStartedAt - (this.busyMs - this.busyAtStepStart);
          this.emit(SchedEvent.DONE, { rank: part.rank, step, peakHeld });
          void this.o.bus.publish(statsSubject(job, part.rank), encodeJson(this.stats())).catch(() => {});
        },
        reportUpdated: (_, { step }) => this.emit(SchedEvent.UPDATED, { rank: part.rank, step }),
        reportError: (_, { step, failure }) => this.emit(SchedEvent.ERROR, { rank: part.rank, step, ...failure }),
        resetCompute: () => {
          compute.reset();
          this.releaseHanded(Infinity);
        },
        stepBegins: (_, { plan, actions }) => this.stepBegins(plan, actions),
        sendHeld: () => this.sendHeld(),
        startRun: actionRunner(
          (input) => this.execute(input),
          (send) => this.timed(send),
        ),
      },
    });
    const name = `stage-${part.rank}`;
    // Named by job and rank, so that the stages and the scheduler in other processes can name it as a sender.
    this.inspector = o.inspect ? new ActorInspector({ bus, scope: job, actor: name, sessionId: actorSessionId(job, name) }) : undefined;
    this.actor = createActor(machine, {
      input: { job, rank: part.rank, stages: part.stages, inputs: part.inputs, outputs: part.outputs },
      id: name,
      ...(this.inspector ? { inspect: this.inspector.inspect } : {}),
    });
    // Frames in flight while the connection was down are lost: the step cannot finish, so say so now.
    this.offStatus = bus.onStatus((st) => {
      if (st.type !== 'reconnect') return;
      const snap = this.actor.getSnapshot();
      if (snap.matches('idle') || snap.status !== 'active') return;
      this.emit(SchedEvent.ERROR, { rank: part.rank, step: snap.context.step, key: `${job}/${snap.context.step}/reconnect`, code: 'NATS_RECONNECT', message: `stage ${part.rank} lost its NATS connection during step ${snap.context.step}; frames in flight may be lost` });
    });
    const maxBytes = o.maxFrameBytes ?? 256 * 1024 * 1024;
    const refuse = (subject: string, err: TroupeError, key?: Key) => {
      this.refusedOnArrival++;
      this.reject(subject, err, key);
    };
    this.frames = bus.subscribeFrames(stageWildcard(job, part.rank), {
      maxBytes,
      admit: (h, m) => this.admitChunk(h, m),
      onFrame: (frame) => {
        if (frame.key.phase === Phase.UPDATE) return this.onUpdate(frame.key.job, frame.key.step);
        this.arrivedAt.set(frame, performance.timeOrigin + performance.now());
        this.send({ type: 'FRAME', frame }, senderActor(frame.from));
      },
      onRefuse: refuse,
      around: (handle) => this.timedFrames(handle),
    });
    this.states = bus.subscribeFrames(stateSubject(job, part.rank), {
      maxBytes,
      phase: Phase.STATE,
      admit: (h) => {
        if (h.key.job !== job) return new UnexpectedFrameError(`state for job ${h.key.job}, not ${job}`);
        if (h.from !== STATE_SENDER) return new UnexpectedFrameError(`state frame from "${h.from}": only the ${STATE_SENDER} sends states`);
        return null;
      },
      onFrame: (frame) => (this.pendingState = frame),
      onRefuse: refuse,
    });
    this.subs.push(this.frames, this.states);
    this.subs.push(bus.subscribe(ctlWildcard(job, part.rank), (m) => void this.onCtl(m)));
  }

  /** Starts the actor and its subscriptions; resolves once the stage is idle and subscribed. */
  static async start(o: StageHostOptions): Promise<StageHost> {
    const host = new StageHost(o);
    host.actor.start();
    await waitFor(host.actor, (s) => s.matches('idle') || s.matches('failed'));
    const inspector = host.inspector;
    if (inspector) host.rollCall = await RollCall.start({ bus: o.bus, scope: o.job, actor: `stage-${host.rank}`, answer: () => ({ actors: inspector.present() }) });
    await o.bus.flush(); // the server knows the subscriptions before anyone is told the stage is up
    if (o.handoff) host.offLocal = registerLocalStage(o.job, o.partition.rank, (f) => host.onLocal(f));
    await o.bus.publish(helloSubject(o.job), encodeJson(host.hello()));
    return host;
  }

  get rank(): number {
    return this.o.partition.rank;
  }

  /** The stage's counters. */
  stats(): StageStats {
    const direct = this.o.bus.directCounters;
    return {
      rank: this.rank,
      step: this.actor.getSnapshot().context.step,
      busyMs: this.busyMs,
      idleMs: this.idleMs,
      forwards: this.forwards,
      backwards: this.backwards,
      weightGrads: this.weightGrads,
      bytesIn: this.o.bus.bytesIn,
      bytesOut: this.o.bus.bytesOut,
      peakHeld: this.peakHeld,
      rejected: this.actor.getSnapshot().context.rejected + this.refusedOnArrival,
      conflicts: this.conflicts,
      tensors: tf.memory().numTensors,
      machineMs: this.machineMs,
      framesMs: this.framesMs,
      ...(direct ? { directBytesIn: direct.bytesIn, directBytesOut: direct.bytesOut } : {}),
    };
  }

  /** Events sent at once (after the ones held back, so their order is kept). */
  private emit(event: SchedEvent, body: object): void {
    this.sendHeld();
    this.publishEvent(event, encodeJson(body));
  }

  /**
   * Events of finished actions (ACTION, LOSS), held back until the stage publishes a frame
   * or is about to wait: they then share one socket write with it or with each other,
   * instead of one each (a write that wakes the server costs about 0.15 ms here). A stage
   * that neither publishes nor waits for a while (stage 0 of one stage, with its step's
   * inputs all in) still sends them once the oldest is HOLD_MS old, so that the scheduler
   * sees progress.
   */
  private readonly held: { event: SchedEvent; data: Uint8Array }[] = [];
  private heldSince = 0;

  private hold(event: SchedEvent, body: object): void {
    if (this.held.length === 0) this.heldSince = performance.now();
    this.held.push({ event, data: encodeJson(body) });
    if (performance.now() - this.heldSince >= HOLD_MS) this.sendHeld();
  }

  private sendHeld(): void {
    for (const h of this.held.splice(0)) this.publishEvent(h.event, h.data);
  }

  private publishEvent(event: SchedEvent, data: Uint8Array): void {
    this.o.bus.publish(schedSubject(this.o.job, this.rank, event), data).catch((err: unknown) => {
      process.stderr.write(`troupe: stage ${this.rank} could not publish ${event}: ${messageOf(err)}\n`);
    });
  }

  /** Tells the scheduler of a refused frame; `key` when its headers were read (a refused INPUT of the running step fails it). */
  private reject(what: string, err: unknown, key?: Key): void {
    const e = err instanceof TroupeError ? err : new FrameError(messageOf(err), { cause: err });
    const body: RejectEvent = { rank: this.rank, subject: what, code: e.code, message: e.message, step: key?.step ?? null, microbatch: key?.microbatch ?? null, phase: key?.phase ?? null };
    this.emit(SchedEvent.REJECT, body);
  }

  /**
   * Judges a chunk by its headers, before its bytes are assembled: a chunk of another step or
   * job allocates nothing, and a neighbour's frame must carry that neighbour's seal (the
   * subject says which neighbour: FORWARD comes from the stage before, BACKWARD from the one
   * after; the header's sender is not trusted). UPDATE is judged once whole (onUpdate).
   */
  private admitChunk(h: FrameHeader, m: BusMessage): TroupeError | null {
    if (h.key.phase === Phase.UPDATE) return null;
    const wrongStep = admitStep(this.actor.getSnapshot().context, h.key, h.from);
    if (wrongStep) return wrongStep;
    if (h.key.phase !== Phase.FORWARD && h.key.phase !== Phase.BACKWARD) return null;
    const peer = h.key.phase === Phase.FORWARD ? this.rank - 1 : this.rank + 1;
    const key = h.key.phase === Phase.FORWARD ? this.peerKeys.prev : this.peerKeys.next;
    if (!key) return new ForgedFrameError(`${formatKey(h.key)} from ${h.from}: stage ${this.rank} holds no seal key of stage ${peer}, so takes no frame from it`);
    if (!checkSeal(h, m.subject, key)) return new ForgedFrameError(`${formatKey(h.key)} from ${h.from}: ${h.seal === undefined ? 'no seal' : 'its seal is not'} stage ${peer}'s`);
    return null;
  }

  /** Runs the handling of one received frame message, counting its time outside the machine (stats: framesMs). */
  private timedFrames(handle: () => void): void {
    const t0 = performance.now();
    const before = this.machineMs + this.busyMs;
    handle();
    // The machine's part (and an update an UPDATE frame ran at once) are counted apart.
    this.framesMs += performance.now() - t0 - (this.machineMs + this.busyMs - before);
  }

  /** `frame` sealed for `subject` with this stage's key. */
  private sealed(frame: Frame, subject: string): Frame {
    return sealFrame(frame, subject, this.sealKey);
  }

  /** A frame handed over by a stage or the driver of this process: judged like one from the bus. */
  private onLocal(frame: Frame): void {
    const t0 = performance.now();
    const before = this.machineMs + this.busyMs;
    try {
      const wrongStep = admitStep(this.actor.getSnapshot().context, frame.key, frame.from);
      if (wrongStep) throw wrongStep;
      this.handed.push(frame);
      this.send({ type: 'FRAME', frame }, senderActor(frame.from));
    } catch (err) {
      releaseDevice(frame.tensors);
      this.refusedOnArrival++;
      this.reject(`frame ${formatKey(frame.key)}`, err, frame.key);
    } finally {
      this.framesMs += performance.now() - t0 - (this.machineMs + this.busyMs - before);
    }
  }

  /** Frees the unclaimed device tensors of frames handed over for steps before `step` (all: Infinity). */
  private releaseHanded(step: number): void {
    const keep: Frame[] = [];
    for (const f of this.handed) {
      if (f.key.step < step) releaseDevice(f.tensors);
      else keep.push(f);
    }
    this.handed = keep;
  }

  /**
   * Hands the stage machine an event, counting the time it takes (stats: machineMs). `from`
   * names the actor (of another process, maybe) that sent it, for the inspector.
   */
  private send(event: StageEvent, from?: string): void {
    this.timed(() => this.fromPeer(from, () => this.actor.send(event)));
  }

  private fromPeer(from: string | undefined, send: () => void): void {
    if (this.inspector && from) this.inspector.sendFrom(from, send);
    else send();
  }

  /**
   * Runs `send` (an event to the stage machine) and adds its time to machineMs, less what
   * it counted as busy: an update invoked by the event runs at once, inside it.
   */
  private timed(send: () => void): void {
    const t0 = performance.now();
    const busy = this.busyMs;
    send();
    this.machineMs += performance.now() - t0 - (this.busyMs - busy);
  }

  private onUpdate(job: string, step: number): void {
    const s = this.actor.getSnapshot();
    if (job !== this.o.job) throw new UnexpectedFrameError(`UPDATE for job ${job}, not ${this.o.job}`);
    if (step < s.context.step) throw new StaleStepError(`UPDATE for step ${step}, which is over (now ${s.context.step})`);
    // Running: the scheduler grants the last stage still running its update early; it applies it as its list ends.
    const running = s.matches('running') && step === s.context.step;
    if (running && s.context.updateGranted) throw new UnexpectedFrameError(s.context.plan!.granted ? `UPDATE for step ${step}, whose plan granted it already` : `UPDATE for step ${step} came twice`);
    if (running && !appliesUpdate(s.context.plan!)) throw new UnexpectedFrameError(`UPDATE for step ${step}, which applies no update (evaluation, prediction or accumulation)`);
    if (!running && (!s.matches('awaitingUpdate') || step !== s.context.step)) {
      throw new UnexpectedFrameError(`UPDATE for step ${step} while stage ${this.rank} is ${JSON.stringify(s.value)}`);
    }
    this.send({ type: 'UPDATE', step }, 'scheduler');
  }

  private async onCtl(m: BusMessage): Promise<void> {
    let reply: object = { ok: true } satisfies Ack;
    try {
      const verb = lastToken(m.subject);
      if (verb === CtlVerb.STEP) this.beginStep(decodeMessage('plan', m.data));
      else if (verb === CtlVerb.ABORT) await this.abortRequested(decodeMessage('abort', m.data).step);
      else if (verb === CtlVerb.STOP) {
        const { job: stopJob } = decodeMessage('stop', m.data);
        if (stopJob !== this.o.job) throw new UnexpectedFrameError(`stop for job ${stopJob}, not ${this.o.job}`);
        this.actor.send({ type: 'STOP' });
      }
      else if (verb === CtlVerb.PING) reply = this.hello();
      else if (verb === CtlVerb.STATS) reply = this.stats();
      else if (verb === CtlVerb.PROBE) reply = this.probe();
      else if (verb === CtlVerb.LOAD) await this.load(decodeMessage('state', m.data));
      else if (verb === CtlVerb.DUMP) reply = await this.dump();
      else if (verb === CtlVerb.KEY) reply = { key: sealKeyText(this.sealKey) } satisfies KeyReply;
      else if (verb === CtlVerb.PEERS) this.takePeers(decodeMessage('peers', m.data));
      else throw new FrameError(`unknown control verb "${verb}"`);
    } catch (err) {
      // The requester reads the refusal in the reply; frames refused are counted apart.
      const e = err instanceof TroupeError ? err : new StateError(messageOf(err));
      reply = { ok: false, code: e.code, message: e.message } satisfies Ack;
    }
    try {
      m.respond(encodeJson(reply));
    } catch {
      // The connection closed while the request was handled: the requester times out.
    }
  }

  /** Where the stage is: its state, its action and the slots that action waits for. */
  probe(): ProbeReply {
    const s = this.actor.getSnapshot();
    const c = s.context;
    // Within a run the machine's cursor stays at the run's first action.
    const inRun = s.matches({ running: 'computing' }) && this.executing >= c.cursor && this.executing < c.cursor + c.run;
    const a = s.matches('running') ? c.actions[inRun ? this.executing : c.cursor] : undefined;
    return { rank: this.rank, step: c.step, state: stateName(s.value), action: a ? `${a.kind}${a.microbatch}` : '', awaiting: a ? missing(c) : [] };
  }

  private hello(): Hello {
    const part = this.o.partition;
    const id = this.o.identity ?? { backend: tf.getBackend(), device: 'cpu' };
    return { rank: part.rank, stages: part.stages, pid: process.pid, host: hostname(), ...id };
  }

  private requireIdle(what: string): void {
    const s = this.actor.getSnapshot();
    if (!s.matches('idle')) throw new StateError(`stage ${this.rank} cannot ${what}: it is ${JSON.stringify(s.value)}`);
  }

  /** Applies the state frame received last; its step becomes the stage's step. */
  private async load(info: StateInfo): Promise<void> {
    this.requireIdle('load state');
    const f = this.pendingState;
    if (!f || f.key.step !== info.step) {
      throw new StateError(`stage ${this.rank} has no state frame of step ${info.step}${f ? ` (it has step ${f.key.step})` : ''}`);
    }
    this.pendingState = undefined;
    await importStageState(this.o.partition, this.o.compute.optimizer, { ...info, tensors: f.tensors });
    this.actor.send({ type: 'LOADED', step: info.step });
  }

  /** Publishes the stage's state on its snapshot subject and answers with the names. */
  private async dump(): Promise<StateInfo> {
    this.requireIdle('dump state');
    const step = this.actor.getSnapshot().context.step;
    const state = await exportStageState(this.o.partition, this.o.compute.optimizer);
    const key = { job: this.o.job, step, microbatch: 0, phase: Phase.STATE };
    const subject = snapshotSubject(this.o.job, this.rank);
    await this.o.bus.publishFrame(subject, this.sealed({ key, from: this.from, tensors: state.tensors }, subject));
    return { step, weightNames: state.weightNames, optimizerNames: state.optimizerNames };
  }

  /**
   * A step's plan. An idle stage starts it; one in a step (running, awaiting or applying its
   * update) queues it and starts it once that step is over, so the driver can send the next
   * step's plan and first inputs ahead and the stage goes on from its update without a wait.
   */
  private beginStep(plan: StepPlan): void {
    const s = this.actor.getSnapshot();
    const queues = s.matches('running') || s.matches('awaitingUpdate') || s.matches('updating');
    if (!s.matches('idle') && !queues) throw new StateError(`stage ${this.rank} cannot start step ${plan.step}: it is ${JSON.stringify(s.value)}`);
    if (plan.step <= s.context.step) throw new StaleStepError(`step ${plan.step} is not after step ${s.context.step}`);
    if (queues && s.context.next) throw new StateError(`stage ${this.rank} cannot queue step ${plan.step}: step ${s.context.next.step} already waits behind step ${s.context.step}`);
    microbatchSizes(plan.batchSize, plan.microbatches);
    if (!Number.isInteger(plan.totalBatch) || plan.totalBatch < plan.batchSize) throw new FrameError(`plan totalBatch ${plan.totalBatch} must be an integer of at least batchSize ${plan.batchSize}`);
    if (plan.granted && !appliesUpdate(plan)) throw new FrameError(`plan of step ${plan.step} grants an UPDATE, but the step applies none (evaluation, prediction or accumulation)`);
    const actions = parseStageActions(plan.actions, this.rank);
    const positions = parseOrder(plan.order, actions.length, this.rank);
    if (positions.length > 0 && !this.o.turn) throw new StateError(`stage ${this.rank} got a device order but shares no device`);
    this.send({ type: 'STEP', plan }, 'scheduler');
  }

  /**
   * The optimizer's step (after the replicas' all-reduce, if any), counted as busy. Without
   * replicas it is synchronous: the stage goes on to its next step within the same event.
   */
  private applyUpdate(step: number): Promise<void> | void {
    const { compute, allReduce } = this.o;
    const t0 = performance.now();
    const apply = () => {
      compute.update();
      this.busyMs += performance.now() - t0;
    };
    if (!allReduce) return apply();
    return compute.gradientsWire().then((grads) => allReduce.reduce(step, grads)).then((reduced) => {
      compute.setGradients(reduced);
      apply();
    });
  }

  /** Per-step state, set as the step begins (at once, or after the update it was queued behind). */
  private stepBegins(plan: StepPlan, actions: readonly Action[]): void {
    this.splitBackward = splitsBackward(actions);
    this.executing = -1;
    this.release = releasedBy(actions);
    this.positions = parseOrder(plan.order, actions.length, this.rank);
    this.frames.keepOnly(plan.step);
    this.releaseHanded(plan.step);
    this.stepStartedAt = performance.now();
    this.busyAtStepStart = this.busyMs;
  }

  /** An abort of step `step`: an older step's is refused; a newer one (whose plan never came) has nothing to abort. */
  private async abortRequested(step: number): Promise<void> {
    const c = this.actor.getSnapshot().context;
    const now = c.step;
    if (step < now) throw new StaleStepError(`abort of step ${step}, which is over (now ${now})`);
    if (step > now) {
      // A step queued behind this one is forgotten; one whose plan never came has nothing to abort.
      if (c.next?.step === step) this.fromPeer('scheduler', () => this.actor.send({ type: 'DROP_NEXT' }));
      return;
    }
    await this.abort();
  }

  private async abort(): Promise<void> {
    const step = this.actor.getSnapshot().context.step;
    this.o.turn?.abort(step);
    this.fromPeer('scheduler', () => this.actor.send({ type: 'ABORT' }));
    // An update waiting for the other replicas' gradients would wait for its timeout: it ends now, as a failed update of an aborted step.
    this.o.allReduce?.cancel(step);
    await waitFor(this.actor, (s) => s.matches('idle') || s.status === 'done', { timeout: this.o.abortTimeoutMs ?? 30_000 });
    this.frames.clear();
    // The events of the action that ended during the abort (the scheduler ignores them; traces keep them).
    this.sendHeld();
  }

  private async execute(input: ExecuteInput): Promise<void> {
    this.executing = input.index;
    const pos = this.positions[input.index];
    if (pos === undefined || !this.o.turn) return this.run(input);
    await this.o.turn.take(input.plan.step, pos);
    try {
      await this.run(input);
    } finally {
      this.o.turn.done(input.plan.step, pos);
    }
  }

  private async run({ action, frames, plan }: ExecuteInput): Promise<void> {
    const { job, bus, compute, partition } = this.o;
    const t0 = performance.now();
    const waitedBefore = bus.inFlightWaitMs;
    const rank = partition.rank;
    const last = rank === partition.stages - 1;
    const mb = action.microbatch;
    const key = (phase: Phase) => ({ job, step: plan.step, microbatch: mb, phase });
    // When the action handed its output to the bus, and how long publishing took (its event says so).
    let sendAt: number | undefined;
    let sendMs = 0;
    const hostBefore = this.machineMs + this.framesMs;
    /** Sends to a neighbour stage (by hand in this process, else on the bus) or the driver's outputs. */
    const publish = async (to: number | 'output', phase: Phase, tensors: readonly WireTensor[]) => {
      this.sendHeld();
      const s0 = performance.now();
      const host0 = this.machineMs + this.framesMs;
      sendAt ??= s0 - t0;
      const frame = { key: key(phase), from: this.from, tensors };
      // Sealed for the subject it is for (a seal covers headers only: a device wire seals as its bytes would).
      if (to === 'output') await bus.publishFrame(outputSubject(job), this.sealed(frame, outputSubject(job)));
      else await sendFrame(bus, job, to, phase, this.sealed(frame, stageSubject(job, to, phase)));
      // Frames read and events handled while the publish awaited are the host's, not sending.
      sendMs += performance.now() - s0 - (this.machineMs + this.framesMs - host0);
    };
    let res: ActionResult;
    if (action.kind === 'F') {
      const first = frames[0]!;
      let inputs: readonly WireTensor[] = first.tensors;
      let labels: readonly WireTensor[] = [];
      if (rank === 0) ({ xs: inputs, ys: labels } = splitInput(first));
      else if (last && !plan.predict) labels = splitInput(frames[1]!).ys;
      const size = microbatchSizes(plan.batchSize, plan.microbatches)[mb]!;
      if (plan.predict && last) {
        // A prediction: the outputs go to the driver; a zero loss tells the scheduler this microbatch is done.
        await publish('output', Phase.FORWARD, await compute.predict(inputs, size));
        res = { tensors: [], loss: 0, metric: null };
      } else res = await compute.forward(mb, inputs, labels, size, plan.totalBatch, !plan.forwardOnly, this.byHand(rank + 1));
      if (!last) await publish(rank + 1, Phase.FORWARD, res.tensors);
      this.forwards++;
    } else if (action.kind === 'B') {
      const dy = last ? [] : frames[0]!.tensors;
      // The input gradients go upstream as soon as they exist: the previous stage's backward
      // waits for them, not for this stage's weight gradients. A list with W actions adds
      // those later (W); an unsplit backward adds them right after sending.
      res = await compute.backwardInputs(mb, dy, plan.totalBatch, this.byHand(rank - 1));
      if (rank > 0) await publish(rank - 1, Phase.BACKWARD, res.tensors);
      if (!this.splitBackward) compute.backwardWeights(mb);
      this.backwards++;
    } else {
      compute.backwardWeights(mb);
      res = { tensors: [] };
      this.weightGrads++;
    }
    if (res.loss !== undefined) this.hold(SchedEvent.LOSS, { step: plan.step, microbatch: mb, loss: res.loss, metric: res.metric ?? null });
    const ms = performance.now() - t0;
    // Busy is compute and sending; time spent waiting for the server to take bytes is not.
    this.busyMs += ms - (bus.inFlightWaitMs - waitedBefore);
    const inAt = frames[0] ? this.arrivedAt.get(frames[0]) : undefined;
    const hostMs = this.machineMs + this.framesMs - hostBefore;
    const done = { rank, step: plan.step, action: `${action.kind}${mb}`, t0: performance.timeOrigin + t0, ms, hostMs, ...(sendAt !== undefined ? { sendAt, sendMs } : {}), ...(inAt !== undefined ? { inAt } : {}) };
    // Stage 0's releases let the scheduler feed more inputs: while some are still to come they
    // go at once (with what was held); once every input of the step is here, they wait too.
    if (rank === 0 && action.kind === this.release && this.inputsToCome(plan)) this.emit(SchedEvent.ACTION, done);
    else this.hold(SchedEvent.ACTION, done);
  }

  /** Whether frames to stage `rank` are handed over in this process (their tensors may stay on the device). */
  private byHand(rank: number): boolean {
    return (this.o.handoff ?? false) && rank >= 0 && rank < this.o.partition.stages && isLocalStage(this.o.job, rank);
  }

  /** The seal keys of the neighbours ('' where there is none); a key for a stage that does not exist is refused. */
  private takePeers(p: { prev: string; next: string }): void {
    const last = this.o.partition.stages - 1;
    if (this.rank === 0 && p.prev !== '') throw new FrameError('stage 0 has no stage before it to take a seal key of');
    if (this.rank === last && p.next !== '') throw new FrameError(`stage ${this.rank} is the last; it takes no seal key of a stage after it`);
    this.peerKeys = { prev: p.prev === '' ? null : parseSealKey(p.prev), next: p.next === '' ? null : parseSealKey(p.next) };
  }

  /** Whether some INPUT microbatch of the running step has not arrived yet. */
  private inputsToCome(plan: StepPlan): boolean {
    const { inbox, consumed } = this.actor.getSnapshot().context;
    const input = `${Phase.INPUT}:`;
    let n = 0;
    for (const k of Object.keys(inbox)) if (k.startsWith(input)) n++;
    for (const k of consumed) if (k.startsWith(input)) n++;
    return n < plan.microbatches;
  }

  /** Stops the actor, drains the subscriptions and drops the step's tensors. The bus stays open. */
  async close(): Promise<void> {
    this.sendHeld();
    this.offStatus();
    this.offLocal();
    this.actor.send({ type: 'STOP' });
    this.actor.stop();
    this.inspector?.close();
    await this.rollCall?.close();
    await Promise.all(this.subs.map((s) => s.drain()));
    this.o.compute.reset();
    this.releaseHanded(Infinity);
  }
}

/** The device positions of a plan's `order` field: empty, or one non-negative integer per action. */
function parseOrder(order: string, actions: number, rank: number): number[] {
  if (order.trim() === '') return [];
  const pos = order.trim().split(/\s+/).map(Number);
  if (pos.length !== actions || pos.some((n) => !Number.isInteger(n) || n < 0)) {
    throw new FrameError(`stage ${rank}: plan order "${order}" must give one device position per action (${actions})`);
  }
  return pos;
}

/** A machine state value as a dotted path: `running.waiting`. */
export function stateName(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object') return Object.entries(v).map(([k, sub]) => `${k}.${stateName(sub)}`).join(',');
  return String(v);
}
