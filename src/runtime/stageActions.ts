/**
 * What a stage's actions do: the compute of each F, B and W (in the device's order when it
 * shares one), the frames it sends on (by hand in this process, else on the bus, sealed), the
 * events it reports with their timings, and the update (after the replicas' all-reduce).
 */
import type { ExecuteInput, StageContext } from '../../actors/stageMachine.js';
import { splitInput } from '../../actors/admitFrame.js';
import { parseOrder } from '../../actors/stageRefusals.js';
import type { ActionResult, StageCompute } from '../compute/stageCompute.js';
import type { StagePartition } from '../compute/partition.js';
import type { Frame, WireTensor } from '../protocol/frame.js';
import type { StepPlan } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { SchedEvent, outputSubject, stageSubject } from '../protocol/subjects.js';
import { splitsBackward, type Action, type ActionKind } from '../schedule/action.js';
import { releasedBy } from '../schedule/constraint.js';
import { microbatchSizes } from '../schedule/microbatch.js';
import type { Bus } from '../transport/bus.js';
import type { AllReduce } from './allReduce.js';
import type { DeviceTurn } from './deviceTurn.js';
import { isLocalStage, sendFrame } from './localStages.js';
import type { StageCounters } from './stageCounters.js';
import type { StageEvents } from './stageEvents.js';
import type { StageSeals } from './stageSeals.js';

/** What the actions of one stage work with. */
export interface StageActionsOptions {
  readonly bus: Bus;
  readonly job: string;
  readonly partition: StagePartition;
  readonly compute: StageCompute;
  readonly turn?: DeviceTurn;
  readonly allReduce?: AllReduce;
  readonly handoff?: boolean;
  readonly counters: StageCounters;
  readonly events: StageEvents;
  readonly seals: StageSeals;
  /** When each received frame was whole at this stage (Unix ms), for its action's event (`inAt`). */
  readonly arrivedAt: WeakMap<Frame, number>;
  /** The stage machine's context now. */
  readonly context: () => StageContext;
}

export class StageActions {
  /** Whether the current step's list has W actions (its B computes input gradients only). */
  private splitBackward = false;
  /** The action that frees a microbatch in the current step (B, W, or F when forward only). */
  private release: ActionKind = 'B';
  /** The current step's device positions, one per action (empty: no turn-taking). */
  private positions: number[] = [];
  /** Index of the action `execute` was last given in this step (the one computing, within a run); -1: none yet. */
  executing = -1;

  constructor(private readonly o: StageActionsOptions) {}

  /** Per-step state, set as the step begins (at once, or after the update it was queued behind). */
  stepBegins(plan: StepPlan, actions: readonly Action[]): void {
    this.splitBackward = splitsBackward(actions);
    this.executing = -1;
    this.release = releasedBy(actions);
    this.positions = parseOrder(plan.order, actions.length, this.o.partition.rank);
  }

  /** One action of a run, in its turn on a shared device. */
  async execute(input: ExecuteInput): Promise<void> {
    this.executing = input.index;
    const pos = this.positions[input.index];
    const turn = this.o.turn;
    if (pos === undefined || !turn) return this.run(input);
    await turn.take(input.plan.step, pos);
    try {
      await this.run(input);
    } finally {
      turn.done(input.plan.step, pos);
    }
  }

  /**
   * The optimizer's step (after the replicas' all-reduce, if any), counted as busy. Without
   * replicas it is synchronous: the stage goes on to its next step within the same event.
   */
  applyUpdate(step: number): Promise<void> | void {
    const { compute, allReduce, counters } = this.o;
    const t0 = performance.now();
    const apply = () => {
      compute.update();
      counters.busyMs += performance.now() - t0;
    };
    if (!allReduce) return apply();
    return compute
      .gradientsWire()
      .then((grads) => allReduce.reduce(step, grads))
      .then((reduced) => {
        compute.setGradients(reduced);
        apply();
      });
  }

  private async run({ action, frames, plan }: ExecuteInput): Promise<void> {
    const { job, bus, compute, partition, counters, events, seals } = this.o;
    const t0 = performance.now();
    const waitedBefore = bus.inFlightWaitMs;
    const rank = partition.rank;
    const last = rank === partition.stages - 1;
    const mb = action.microbatch;
    const key = (phase: Phase) => ({ job, step: plan.step, microbatch: mb, phase });
    // When the action handed its output to the bus, and how long publishing took (its event says so).
    let sendAt: number | undefined;
    let sendMs = 0;
    const hostBefore = counters.hostMs;
    /** Sends to a neighbour stage (by hand in this process, else on the bus) or the driver's outputs. */
    const publish = async (to: number | 'output', phase: Phase, tensors: readonly WireTensor[]) => {
      events.sendHeld();
      const s0 = performance.now();
      const host0 = counters.hostMs;
      sendAt ??= s0 - t0;
      const frame = { key: key(phase), from: `stage.${rank}`, tensors };
      if (to === 'output') await bus.publishFrame(outputSubject(job), seals.seal(frame, outputSubject(job)));
      else await sendFrame(bus, job, to, phase, seals.seal(frame, stageSubject(job, to, phase)));
      // Frames read and events handled while the publish awaited are the host's, not sending.
      sendMs += performance.now() - s0 - (counters.hostMs - host0);
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
      counters.forwards++;
    } else if (action.kind === 'B') {
      const dy = last ? [] : frames[0]!.tensors;
      // The input gradients go upstream as soon as they exist: the previous stage's backward
      // waits for them, not for this stage's weight gradients. A list with W actions adds
      // those later (W); an unsplit backward adds them right after sending.
      res = await compute.backwardInputs(mb, dy, plan.totalBatch, this.byHand(rank - 1));
      if (rank > 0) await publish(rank - 1, Phase.BACKWARD, res.tensors);
      if (!this.splitBackward) compute.backwardWeights(mb);
      counters.backwards++;
    } else {
      compute.backwardWeights(mb);
      res = { tensors: [] };
      counters.weightGrads++;
    }
    if (res.loss !== undefined) events.hold(SchedEvent.LOSS, { step: plan.step, microbatch: mb, loss: res.loss, metric: res.metric ?? null });
    const ms = performance.now() - t0;
    // Busy is compute and sending; time spent waiting for the server to take bytes is not.
    counters.busyMs += ms - (bus.inFlightWaitMs - waitedBefore);
    const inAt = frames[0] ? this.o.arrivedAt.get(frames[0]) : undefined;
    const hostMs = counters.hostMs - hostBefore;
    const done = {
      rank,
      step: plan.step,
      action: `${action.kind}${mb}`,
      t0: performance.timeOrigin + t0,
      ms,
      hostMs,
      ...(sendAt !== undefined ? { sendAt, sendMs } : {}),
      ...(inAt !== undefined ? { inAt } : {}),
    };
    // Stage 0's releases let the scheduler feed more inputs: while some are still to come they
    // go at once (with what was held); once every input of the step is here, they wait too.
    if (rank === 0 && action.kind === this.release && this.inputsToCome(plan)) events.emit(SchedEvent.ACTION, done);
    else events.hold(SchedEvent.ACTION, done);
  }

  /** Whether frames to stage `rank` are handed over in this process (their tensors may stay on the device). */
  private byHand(rank: number): boolean {
    return (this.o.handoff ?? false) && rank >= 0 && rank < this.o.partition.stages && isLocalStage(this.o.job, rank);
  }

  /** Whether some INPUT microbatch of the running step has not arrived yet. */
  private inputsToCome(plan: StepPlan): boolean {
    const { inbox, consumed } = this.o.context();
    const input = `${Phase.INPUT}:`;
    let n = 0;
    for (const k of Object.keys(inbox)) if (k.startsWith(input)) n++;
    for (const k of consumed) if (k.startsWith(input)) n++;
    return n < plan.microbatches;
  }
}
