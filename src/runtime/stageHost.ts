/** Binds a stage actor to NATS: frames and control requests in, activations, gradients and events out. */
import { hostname } from 'node:os';
import * as tf from '@tensorflow/tfjs';
import { createActor, waitFor, type Actor } from 'xstate';
import { admitStep, splitInput } from '../../actors/admitFrame.js';
import { actionRunner, missing, stageMachine, updateRunner, type ExecuteInput, type StageEvent } from '../../actors/stageMachine.js';
import { FrameError, StaleStepError, StateError, TroupeError, UnexpectedFrameError, messageOf } from '../errors.js';
import type { StageCompute, ActionResult } from '../compute/stageCompute.js';
import type { StagePartition } from '../compute/partition.js';
import { exportStageState, importStageState } from '../compute/stageState.js';
import { busInspector } from '../inspect/busInspector.js';
import { parseHeader, type Frame, type WireTensor } from '../protocol/frame.js';
import { formatKey } from '../protocol/key.js';
import { appliesUpdate, decodeMessage, encodeJson, type Ack, type Hello, type ProbeReply, type StateInfo, type StatsMessage, type StepPlan } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { Reassembler } from '../protocol/reassembler.js';
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
import { STATE_SENDER } from './stageStates.js';
import { microbatchSizes } from '../schedule/microbatch.js';
import type { Bus, BusMessage } from '../transport/bus.js';

/** Longest a finished action's event is held back (see `StageHost.hold`). */
const HOLD_MS = 50;

/** Options of a stage host. */
export interface StageHostOptions {
  readonly bus: Bus;
  readonly job: string;
  readonly partition: StagePartition;
  readonly compute: StageCompute;
  /** Largest frame accepted, in bytes (default 256 MiB). */
  readonly maxFrameBytes?: number;
  /** Milliseconds an abort may take before its ack reports failure (default 30 s). */
  readonly abortTimeoutMs?: number;
  /** Publish the actor's inspection events on troupe.<job>.inspect.stage-<rank> (default off). */
  readonly inspect?: boolean;
  /** What `ping` answers about the process: backend and device (default the current backend, cpu). */
  readonly identity?: { readonly backend: string; readonly device: string };
  /** Shared by the stages of one device, so that they run their actions in the device's order. */
  readonly turn?: DeviceTurn;
  /** Data-parallel replicas of this stage: gradients are summed over them before each update. */
  readonly allReduce?: AllReduce;
}

/** Counters of one stage, as the runtime reports them (and publishes after every step). */
export type StageStats = StatsMessage;

type StageActor = Actor<typeof stageMachine>;

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
  private readonly reassembler = new Reassembler();
  private readonly subs: { drain(): Promise<void> }[] = [];
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
  /** Frames refused before they reached the actor (bad headers, chunks). */
  private refusedOnArrival = 0;
  private readonly from: string;
  private readonly offStatus: () => void;

  private constructor(private readonly o: StageHostOptions) {
    const { partition: part, job, bus, compute } = o;
    this.from = `stage.${part.rank}`;
    const machine = stageMachine.provide({
      actions: {
        startUpdate: updateRunner((step) => this.applyUpdate(step)),
        reportReject: (_, { error, frame }) => this.reject(`frame ${formatKey(frame.key)}`, error),
        reportDone: (_, { step, peakHeld }) => {
          this.peakHeld = Math.max(this.peakHeld, peakHeld);
          this.idleMs += performance.now() - this.stepStartedAt - (this.busyMs - this.busyAtStepStart);
          this.emit(SchedEvent.DONE, { rank: part.rank, step, peakHeld });
          void this.o.bus.publish(statsSubject(job, part.rank), encodeJson(this.stats())).catch(() => {});
        },
        reportUpdated: (_, { step }) => this.emit(SchedEvent.UPDATED, { rank: part.rank, step }),
        reportError: (_, { step, failure }) => this.emit(SchedEvent.ERROR, { rank: part.rank, step, ...failure }),
        resetCompute: () => compute.reset(),
        stepBegins: (_, { plan, actions }) => this.stepBegins(plan, actions),
        sendHeld: () => this.sendHeld(),
        startRun: actionRunner(
          (input) => this.execute(input),
          (send) => this.timed(send),
        ),
      },
    });
    this.actor = createActor(machine, {
      input: { job, rank: part.rank, stages: part.stages, inputs: part.inputs, outputs: part.outputs },
      id: `stage-${part.rank}`,
      ...(o.inspect ? { inspect: busInspector(bus, job, `stage-${part.rank}`) } : {}),
    });
    // Frames in flight while the connection was down are lost: the step cannot finish, so say so now.
    this.offStatus = bus.onStatus((st) => {
      if (st.type !== 'reconnect') return;
      const snap = this.actor.getSnapshot();
      if (snap.matches('idle') || snap.status !== 'active') return;
      this.emit(SchedEvent.ERROR, { rank: part.rank, step: snap.context.step, key: `${job}/${snap.context.step}/reconnect`, code: 'NATS_RECONNECT', message: `stage ${part.rank} lost its NATS connection during step ${snap.context.step}; frames in flight may be lost` });
    });
    this.subs.push(bus.subscribe(stageWildcard(job, part.rank), (m) => this.onFrame(m)));
    this.subs.push(bus.subscribe(ctlWildcard(job, part.rank), (m) => void this.onCtl(m)));
    this.subs.push(bus.subscribe(stateSubject(job, part.rank), (m) => this.onState(m)));
  }

  /** Starts the actor and its subscriptions; resolves once the stage is idle and subscribed. */
  static async start(o: StageHostOptions): Promise<StageHost> {
    const host = new StageHost(o);
    host.actor.start();
    await waitFor(host.actor, (s) => s.matches('idle') || s.matches('failed'));
    await o.bus.flush(); // the server knows the subscriptions before anyone is told the stage is up
    await o.bus.publish(helloSubject(o.job), encodeJson(host.hello()));
    return host;
  }

  get rank(): number {
    return this.o.partition.rank;
  }

  /** The stage's counters. */
  stats(): StageStats {
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
      tensors: tf.memory().numTensors,
      machineMs: this.machineMs,
      framesMs: this.framesMs,
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
    this.o.bus.publish(schedSubject(this.o.job, event), data).catch((err: unknown) => {
      process.stderr.write(`troupe: stage ${this.rank} could not publish ${event}: ${messageOf(err)}\n`);
    });
  }

  private reject(what: string, err: unknown): void {
    const e = err instanceof TroupeError ? err : new FrameError(messageOf(err), { cause: err });
    this.emit(SchedEvent.REJECT, { rank: this.rank, subject: what, code: e.code, message: e.message });
  }

  private onFrame(m: BusMessage): void {
    const t0 = performance.now();
    const before = this.machineMs + this.busyMs;
    const phase = lastToken(m.subject);
    try {
      const h = parseHeader(m.header, phase, this.o.maxFrameBytes ?? 256 * 1024 * 1024);
      if (h.key.phase === Phase.UPDATE) return this.onUpdate(h.key.job, h.key.step);
      // Judge the key before assembling: a chunk of another step or job allocates nothing.
      const wrongStep = admitStep(this.actor.getSnapshot().context, h.key, h.from);
      if (wrongStep) throw wrongStep;
      const frame = this.reassembler.accept(h, m.data);
      if (frame) this.send({ type: 'FRAME', frame });
    } catch (err) {
      this.refusedOnArrival++;
      this.reject(m.subject, err);
    } finally {
      // The machine's part (and an update an UPDATE frame ran at once) are counted apart.
      this.framesMs += performance.now() - t0 - (this.machineMs + this.busyMs - before);
    }
  }

  /** Hands the stage machine an event, counting the time it takes (stats: machineMs). */
  private send(event: StageEvent): void {
    this.timed(() => this.actor.send(event));
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
    this.send({ type: 'UPDATE', step });
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

  private onState(m: BusMessage): void {
    try {
      const h = parseHeader(m.header, Phase.UPDATE, this.o.maxFrameBytes ?? 256 * 1024 * 1024);
      if (h.key.job !== this.o.job) throw new UnexpectedFrameError(`state for job ${h.key.job}, not ${this.o.job}`);
      if (h.from !== STATE_SENDER) throw new UnexpectedFrameError(`state frame from "${h.from}": only the ${STATE_SENDER} sends states`);
      const frame = this.reassembler.accept(h, m.data);
      if (frame) this.pendingState = frame;
    } catch (err) {
      this.refusedOnArrival++;
      this.reject(m.subject, err);
    }
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
    const key = { job: this.o.job, step, microbatch: 0, phase: Phase.UPDATE };
    await this.o.bus.publishFrame(snapshotSubject(this.o.job, this.rank), { key, from: this.from, tensors: state.tensors });
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
    this.send({ type: 'STEP', plan });
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
    return allReduce.reduce(step, compute.gradientsWire()).then((reduced) => {
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
    this.reassembler.keepOnly(plan.step);
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
      if (c.next?.step === step) this.actor.send({ type: 'DROP_NEXT' });
      return;
    }
    await this.abort();
  }

  private async abort(): Promise<void> {
    const step = this.actor.getSnapshot().context.step;
    this.o.turn?.abort(step);
    this.actor.send({ type: 'ABORT' });
    // An update waiting for the other replicas' gradients would wait for its timeout: it ends now, as a failed update of an aborted step.
    this.o.allReduce?.cancel(step);
    await waitFor(this.actor, (s) => s.matches('idle') || s.status === 'done', { timeout: this.o.abortTimeoutMs ?? 30_000 });
    this.reassembler.clear();
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
        const outputs = compute.predict(inputs, size);
        this.sendHeld();
        await bus.publishFrame(outputSubject(job), { key: key(Phase.FORWARD), from: this.from, tensors: outputs });
        res = { tensors: [], loss: 0, metric: null };
      } else res = compute.forward(mb, inputs, labels, size, plan.totalBatch, !plan.forwardOnly);
      if (!last) {
        this.sendHeld();
        await bus.publishFrame(stageSubject(job, rank + 1, Phase.FORWARD), { key: key(Phase.FORWARD), from: this.from, tensors: res.tensors });
      }
      this.forwards++;
    } else if (action.kind === 'B') {
      const dy = last ? [] : frames[0]!.tensors;
      // A list with W actions splits the backward: B sends the input gradients, W adds the weight gradients later.
      res = this.splitBackward ? compute.backwardInputs(mb, dy, plan.totalBatch) : compute.backward(mb, dy, plan.totalBatch);
      if (rank > 0) {
        this.sendHeld();
        await bus.publishFrame(stageSubject(job, rank - 1, Phase.BACKWARD), { key: key(Phase.BACKWARD), from: this.from, tensors: res.tensors });
      }
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
    const done = { rank, step: plan.step, action: `${action.kind}${mb}`, t0: performance.timeOrigin + t0, ms };
    // Stage 0's releases let the scheduler feed more inputs: while some are still to come they
    // go at once (with what was held); once every input of the step is here, they wait too.
    if (rank === 0 && action.kind === this.release && this.inputsToCome(plan)) this.emit(SchedEvent.ACTION, done);
    else this.hold(SchedEvent.ACTION, done);
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
    this.actor.send({ type: 'STOP' });
    this.actor.stop();
    await Promise.all(this.subs.map((s) => s.drain()));
    this.o.compute.reset();
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
