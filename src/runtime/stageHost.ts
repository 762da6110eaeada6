/**
 * Binds a stage actor to NATS: frames and control requests in as the machine's events, its
 * actions out as activations, gradients and events. The machine decides (refusals too); the
 * parts live beside this file: counters, control verbs, held events, seals, the handoff, and
 * what actions do.
 */
import { hostname } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { createActor, waitFor, type Actor } from 'xstate';
import { admitStep } from '../../actors/admitFrame.js';
import { actionRunner, stageMachine, updateRunner, type StageEvent } from '../../actors/stageMachine.js';
import type { TroupeError } from '../errors.js';
import type { StageCompute } from '../compute/stageCompute.js';
import type { StagePartition } from '../compute/partition.js';
import { releaseDevice } from '../compute/wire.js';
import { ActorInspector, actorSessionId, senderActor } from '../inspect/actorInspector.js';
import { RollCall } from '../inspect/rollCall.js';
import type { Frame } from '../protocol/frame.js';
import { formatKey } from '../protocol/key.js';
import { encodeJson, type Hello, type ProbeReply, type StatsMessage } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { SchedEvent, helloSubject, stageSubject, stageWildcard, statsSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import type { FrameSubscription } from '../transport/subscribeFrames.js';
import type { AllReduce } from './allReduce.js';
import type { DeviceTurn } from './deviceTurn.js';
import { HandedFrames } from './localStages.js';
import { StageActions } from './stageActions.js';
import { StageControl, probeOf } from './stageControl.js';
import { StageCounters } from './stageCounters.js';
import { StageEvents } from './stageEvents.js';
import { StageSeals } from './stageSeals.js';

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
   * Publish the actor's inspection events on troupe.<job>.inspect.stage-<rank>, and answer an inspector's `who` with its
   * announcement and latest snapshot (default off).
   */
  readonly inspect?: boolean;
  /** What `ping` answers about the process: backend and device (default the current backend, cpu). */
  readonly identity?: { readonly backend: string; readonly device: string };
  /** Shared by the stages of one device, so that they run their actions in the device's order. */
  readonly turn?: DeviceTurn;
  /** Data-parallel replicas of this stage: gradients are summed over them before each update. */
  readonly allReduce?: AllReduce;
  /**
   * Take frames by hand from stages and the driver of this process, and hand them frames the same way: tensors between neighbours
   * in one process stay on their device (default off: every frame on the bus).
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
  private readonly counters = new StageCounters();
  private readonly events: StageEvents;
  private readonly seals: StageSeals;
  private readonly actions: StageActions;
  private readonly handed = new HandedFrames();
  /** The frames of steps (and UPDATE) as they come off the bus. */
  private readonly frames: FrameSubscription;
  private readonly control: StageControl;
  private readonly arrivedAt = new WeakMap<Frame, number>();
  private readonly offStatus: () => void;
  private readonly inspector: ActorInspector | undefined;
  private rollCall: RollCall | undefined;

  private constructor(private readonly o: StageHostOptions) {
    const { partition: part, job, bus, compute } = o;
    const rank = part.rank;
    this.events = new StageEvents(bus, job, rank);
    this.seals = new StageSeals(rank, part.stages);
    this.actions = new StageActions({
      ...o,
      counters: this.counters,
      events: this.events,
      seals: this.seals,
      arrivedAt: this.arrivedAt,
      context: () => this.actor.getSnapshot().context,
    });
    const machine = stageMachine.provide({
      actions: {
        startUpdate: updateRunner((step) => this.actions.applyUpdate(step)),
        startRun: actionRunner(
          (input) => this.actions.execute(input),
          (send) => this.counters.timed(send),
        ),
        stepBegins: (_, { plan, actions }) => {
          this.actions.stepBegins(plan, actions);
          this.frames.keepOnly(plan.step);
          this.handed.release(plan.step);
          this.counters.stepBegins();
        },
        sendHeld: () => this.events.sendHeld(),
        resetCompute: () => {
          compute.reset();
          this.handed.release(Infinity);
        },
        reportReject: (_, { error, frame }) => {
          releaseDevice(frame.tensors);
          this.events.reject(`frame ${formatKey(frame.key)}`, error, frame.key);
        },
        rejectUpdate: (_, { step, job: of, error }) =>
          this.events.reject(stageSubject(job, rank, Phase.UPDATE), error, { job: of, step, microbatch: 0, phase: Phase.UPDATE }),
        refuseControl: (_, { error }) => this.control.refused(error),
        abortStarts: (_, { step }) => {
          o.turn?.abort(step);
          // An update waiting for the other replicas' gradients would wait for its timeout: it ends now, as a failed update of an aborted step.
          o.allReduce?.cancel(step);
          this.control.aborting();
        },
        reportConflict: (_, { step, error, frames }) => {
          for (const f of frames) releaseDevice(f.tensors);
          this.counters.conflicts++;
          this.events.emit(SchedEvent.ERROR, { rank, step, key: formatKey(frames[1].key), code: error.code, message: error.message });
        },
        reportDone: (_, { step, peakHeld }) => {
          this.counters.stepDone(peakHeld);
          this.events.emit(SchedEvent.DONE, { rank, step, peakHeld });
          void bus.publish(statsSubject(job, rank), encodeJson(this.stats())).catch(() => {});
        },
        reportUpdated: (_, { step }) => this.events.emit(SchedEvent.UPDATED, { rank, step }),
        reportError: (_, { step, failure }) => this.events.emit(SchedEvent.ERROR, { rank, step, ...failure }),
      },
    });
    const name = `stage-${rank}`;
    // Named by job and rank, so that the stages and the scheduler in other processes can name it as a sender.
    this.inspector = o.inspect ? new ActorInspector({ bus, scope: job, actor: name, sessionId: actorSessionId(job, name) }) : undefined;
    this.actor = createActor(machine, {
      // (sharesDevice only where it does: the context keeps the key count it had, see the scheduler machine's context.)
      input: { job, rank, stages: part.stages, inputs: part.inputs, outputs: part.outputs, ...(o.turn ? { sharesDevice: true } : {}) },
      id: name,
      ...(this.inspector ? { inspect: this.inspector.inspect } : {}),
    });
    // Frames in flight while the connection was down are lost: the step cannot finish, so say so now.
    this.offStatus = bus.onStatus((st) => {
      const snap = this.actor.getSnapshot();
      if (st.type !== 'reconnect' || snap.matches('idle') || snap.status !== 'active') return;
      const step = snap.context.step;
      this.events.emit(SchedEvent.ERROR, {
        rank,
        step,
        key: `${job}/${step}/reconnect`,
        code: 'NATS_RECONNECT',
        message: `stage ${rank} lost its NATS connection during step ${step}; frames in flight may be lost`,
      });
    });
    const maxBytes = o.maxFrameBytes ?? 256 * 1024 * 1024;
    const refuse = (subject: string, err: TroupeError, key?: Frame['key']) => {
      this.counters.refusedOnArrival++;
      this.events.reject(subject, err, key);
    };
    // A chunk is judged by its headers before its bytes are assembled (one of another step or job
    // allocates nothing; a neighbour's must carry its seal); the machine judges the whole frame.
    this.frames = bus.subscribeFrames(stageWildcard(job, rank), {
      maxBytes,
      admit: (h, m) => (h.key.phase === Phase.UPDATE ? null : (admitStep(this.actor.getSnapshot().context, h.key, h.from) ?? this.seals.refusal(h, m.subject))),
      onFrame: (frame) => {
        this.arrivedAt.set(frame, performance.timeOrigin + performance.now());
        this.take(frame);
      },
      onRefuse: refuse,
      around: (handle) => this.counters.timedFrames(handle),
    });
    this.control = new StageControl({
      ...o,
      maxFrameBytes: maxBytes,
      abortTimeoutMs: o.abortTimeoutMs ?? 30_000,
      actor: this.actor,
      seals: this.seals,
      refuse,
      send: (event) => this.send(event, 'scheduler'),
      aborted: () => {
        this.frames.clear();
        // The events of the action that ended during the abort (the scheduler ignores them; traces keep them).
        this.events.sendHeld();
      },
      hello: () => this.hello(),
      stats: () => this.stats(),
      probe: () => this.probe(),
    });
  }

  /** Starts the actor and its subscriptions; resolves once the stage is idle and subscribed. */
  static async start(o: StageHostOptions): Promise<StageHost> {
    const host = new StageHost(o);
    try {
      host.actor.start();
      await waitFor(host.actor, (s) => s.matches('idle') || s.matches('failed'));
      const inspector = host.inspector;
      if (inspector)
        host.rollCall = await RollCall.start({ bus: o.bus, scope: o.job, actor: `stage-${host.rank}`, answer: () => ({ actors: inspector.present() }) });
      await o.bus.flush(); // the server knows the subscriptions before anyone is told the stage is up
      if (o.handoff) host.handed.register(o.job, host.rank, (f) => host.counters.timedFrames(() => host.take(f)));
      await o.bus.publish(helloSubject(o.job), encodeJson(host.hello()));
      return host;
    } catch (err) {
      // Its caller never gets the host to close: a failed start leaves no stage answering on the bus.
      await host.close().catch(() => {});
      throw err;
    }
  }

  get rank(): number {
    return this.o.partition.rank;
  }

  /** The stage's counters. */
  stats(): StageStats {
    const c = this.actor.getSnapshot().context;
    return this.counters.stats(this.rank, c.step, c.rejected, this.o.bus);
  }

  /** Where the stage is: its state, its action and the slots that action waits for. */
  probe(): ProbeReply {
    return probeOf(this.rank, this.actor, this.actions.executing);
  }

  private hello(): Hello {
    const part = this.o.partition;
    return { rank: part.rank, stages: part.stages, pid: process.pid, host: hostname(), ...(this.o.identity ?? { backend: tf.getBackend(), device: 'cpu' }) };
  }

  /** A whole frame, from the bus or handed over in this process: an UPDATE, or a frame of a step. */
  private take(frame: Frame): void {
    if (frame.key.phase === Phase.UPDATE) this.send({ type: 'UPDATE', step: frame.key.step, job: frame.key.job }, 'scheduler');
    else this.send({ type: 'FRAME', frame }, senderActor(frame.from));
  }

  /** Hands the machine an event, timed (stats: machineMs); `from` names its sender (of another process, maybe) for the inspector. */
  private send(event: StageEvent, from?: string): void {
    this.counters.timed(() => (this.inspector && from ? this.inspector.sendFrom(from, () => this.actor.send(event)) : this.actor.send(event)));
  }

  /** Stops the actor, drains the subscriptions and drops the step's tensors. The bus stays open. */
  async close(): Promise<void> {
    this.events.sendHeld();
    this.offStatus();
    this.handed.close();
    this.actor.send({ type: 'STOP' });
    this.actor.stop();
    this.inspector?.close();
    await this.rollCall?.close();
    await Promise.all([this.frames.drain(), this.control.drain()]);
    this.o.compute.reset();
    this.handed.release(Infinity);
  }
}
