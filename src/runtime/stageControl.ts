/**
 * A stage's control verbs (`ctl.<rank>.<verb>`, request/reply): each request decoded, handed
 * to the stage machine or answered from the host's parts, and replied to with an ack, the
 * verb's reply, or the refusal (its code and message). State transfer too: state frames on
 * `state.<rank>` are kept for the next `load`; `dump` publishes the stage's state.
 */
import { waitFor, type Actor } from 'xstate';
import { missing, type StageEvent, type stageMachine } from '../../actors/stageMachine.js';
import { FrameError, StateError, TroupeError, UnexpectedFrameError, messageOf } from '../errors.js';
import type { StagePartition } from '../compute/partition.js';
import type { StageCompute } from '../compute/stageCompute.js';
import { exportStageState, importStageState } from '../compute/stageState.js';
import type { Frame } from '../protocol/frame.js';
import { decodeMessage, encodeJson, type Ack, type Hello, type ProbeReply, type StateInfo, type StatsMessage } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { CtlVerb, ctlWildcard, lastToken, snapshotSubject, stateSubject } from '../protocol/subjects.js';
import type { Bus, BusMessage } from '../transport/bus.js';
import type { StageSeals } from './stageSeals.js';
import { STATE_SENDER } from './stageStates.js';

/** What the stage machine decided about a control request: a refusal, or an abort of its own step begun. */
export interface Decision {
  refused: TroupeError | null;
  aborting: boolean;
}

/** The stage the verbs act on. */
export interface ControlledStage {
  readonly bus: Bus;
  readonly job: string;
  readonly partition: StagePartition;
  readonly compute: StageCompute;
  readonly maxFrameBytes: number;
  readonly abortTimeoutMs: number;
  readonly actor: Actor<typeof stageMachine>;
  readonly seals: StageSeals;
  /** Hands the machine an event from the scheduler (timed, named for the inspector). */
  send(event: StageEvent): void;
  /** After an abort of the stage's own step: partial frames dropped, held events sent. */
  aborted(): void;
  /** A state frame refused on arrival. */
  refuse(subject: string, err: TroupeError, key?: Frame['key']): void;
  hello(): Hello;
  stats(): StatsMessage;
  probe(): ProbeReply;
}

export class StageControl {
  /** A state frame received on the state subject, applied by the next `load`. */
  private pendingState: Frame | undefined;
  /** While a request's event is with the machine: what it decided (its `refuseControl` and `abortStarts` actions say). */
  private decision: Decision | null = null;
  private readonly subs: { drain(): Promise<void> }[];

  constructor(private readonly s: ControlledStage) {
    const { bus, job, partition } = s;
    const states = bus.subscribeFrames(stateSubject(job, partition.rank), {
      maxBytes: s.maxFrameBytes,
      phase: Phase.STATE,
      admit: (h) => {
        if (h.key.job !== job) return new UnexpectedFrameError(`state for job ${h.key.job}, not ${job}`);
        if (h.from !== STATE_SENDER) return new UnexpectedFrameError(`state frame from "${h.from}": only the ${STATE_SENDER} sends states`);
        return null;
      },
      onFrame: (frame) => (this.pendingState = frame),
      onRefuse: (subject, err, key) => s.refuse(subject, err, key),
    });
    this.subs = [states, bus.subscribe(ctlWildcard(job, partition.rank), (m) => void this.answer(m))];
  }

  /** The machine refused the request being decided (its `refuseControl` action). */
  refused(error: TroupeError): void {
    if (this.decision) this.decision.refused = error;
  }

  /** The machine began aborting its own step for the request being decided (its `abortStarts` action). */
  aborting(): void {
    if (this.decision) this.decision.aborting = true;
  }

  /** Hands the machine a request's event and returns what it decided (the machine handles it within the call). */
  private decide(event: StageEvent): Decision {
    const d: Decision = (this.decision = { refused: null, aborting: false });
    try {
      this.s.send(event);
    } finally {
      this.decision = null;
    }
    return d;
  }

  drain(): Promise<void[]> {
    return Promise.all(this.subs.map((x) => x.drain()));
  }

  private async answer(m: BusMessage): Promise<void> {
    const { s } = this;
    let reply: object = { ok: true } satisfies Ack;
    try {
      const verb = lastToken(m.subject);
      if (verb === CtlVerb.STEP) refuse(this.decide({ type: 'STEP', plan: decodeMessage('plan', m.data) }));
      else if (verb === CtlVerb.ABORT) await this.abort(decodeMessage('abort', m.data).step);
      else if (verb === CtlVerb.STOP) this.stop(decodeMessage('stop', m.data).job);
      else if (verb === CtlVerb.PING) reply = s.hello();
      else if (verb === CtlVerb.STATS) reply = s.stats();
      else if (verb === CtlVerb.PROBE) reply = s.probe();
      else if (verb === CtlVerb.LOAD) await this.load(decodeMessage('state', m.data));
      else if (verb === CtlVerb.DUMP) reply = await this.dump();
      else if (verb === CtlVerb.KEY) reply = s.seals.keyReply();
      else if (verb === CtlVerb.PEERS) s.seals.takePeers(decodeMessage('peers', m.data));
      else throw new FrameError(`unknown control verb "${verb}"`);
    } catch (err) {
      // The requester reads the refusal in the reply; frames refused are counted apart.
      const e = err instanceof TroupeError ? err : new StateError(messageOf(err));
      reply = { ok: false, code: e.code, message: e.message } satisfies Ack;
    }
    m.respond(encodeJson(reply));
  }

  /** The machine judges the abort; an abort of its own step is answered once the stage is idle again. */
  private async abort(step: number): Promise<void> {
    const d = this.decide({ type: 'ABORT_STEP', step });
    refuse(d);
    if (!d.aborting) return; // a later step's, or the queued one's: nothing runs to wait for
    await waitFor(this.s.actor, (x) => x.matches('idle') || x.status === 'done', { timeout: this.s.abortTimeoutMs });
    this.s.aborted();
  }

  private stop(job: string): void {
    if (job !== this.s.job) throw new UnexpectedFrameError(`stop for job ${job}, not ${this.s.job}`);
    this.s.actor.send({ type: 'STOP' });
  }

  /** Applies the state frame received last; its step becomes the stage's step. */
  private async load(info: StateInfo): Promise<void> {
    const { actor, partition, compute } = this.s;
    requireIdle(partition.rank, actor, 'load state');
    const f = this.pendingState;
    if (!f || f.key.step !== info.step)
      throw new StateError(`stage ${partition.rank} has no state frame of step ${info.step}${f ? ` (it has step ${f.key.step})` : ''}`);
    this.pendingState = undefined;
    await importStageState(partition, compute.optimizer, { ...info, tensors: f.tensors });
    actor.send({ type: 'LOADED', step: info.step });
  }

  /** Publishes the stage's state on its snapshot subject, sealed, and answers with the names. */
  private async dump(): Promise<StateInfo> {
    const { actor, partition, compute, bus, job, seals } = this.s;
    requireIdle(partition.rank, actor, 'dump state');
    const step = actor.getSnapshot().context.step;
    const state = await exportStageState(partition, compute.optimizer);
    const subject = snapshotSubject(job, partition.rank);
    await bus.publishFrame(
      subject,
      seals.seal({ key: { job, step, microbatch: 0, phase: Phase.STATE }, from: `stage.${partition.rank}`, tensors: state.tensors }, subject),
    );
    return { step, weightNames: state.weightNames, optimizerNames: state.optimizerNames };
  }
}

function refuse(d: Decision): void {
  if (d.refused) throw d.refused;
}

/** State moves only between steps. */
function requireIdle(rank: number, actor: Actor<typeof stageMachine>, what: string): void {
  const s = actor.getSnapshot();
  if (!s.matches('idle')) throw new StateError(`stage ${rank} cannot ${what}: it is ${JSON.stringify(s.value)}`);
}

/** A machine state value as a dotted path: `running.waiting`. */
function stateName(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object')
    return Object.entries(v)
      .map(([k, sub]) => `${k}.${stateName(sub)}`)
      .join(',');
  return String(v);
}

/** Where the stage is: its state, its action (`executing`, within a run) and the slots that action waits for. */
export function probeOf(rank: number, actor: Actor<typeof stageMachine>, executing: number): ProbeReply {
  const s = actor.getSnapshot();
  const c = s.context;
  // Within a run the machine's cursor stays at the run's first action.
  const inRun = s.matches({ running: 'computing' }) && executing >= c.cursor && executing < c.cursor + c.run;
  const a = s.matches('running') ? c.actions[inRun ? executing : c.cursor] : undefined;
  return { rank, step: c.step, state: stateName(s.value), action: a ? `${a.kind}${a.microbatch}` : '', awaiting: a ? missing(c) : [] };
}
