/**
 * A stage's control verbs (`ctl.<rank>.<verb>`, request/reply): each request decoded, handed
 * to the stage, and answered with an ack, the verb's reply, or the refusal (its code and
 * message). Also what `probe` answers, and state transfer (`load`, `dump`).
 */
import type * as tf from '@tensorflow/tfjs';
import { FrameError, TroupeError, StateError, messageOf } from '../errors.js';
import type { StageContext } from '../../actors/stageMachine.js';
import { missing } from '../../actors/stageMachine.js';
import { exportStageState } from '../compute/stageState.js';
import type { StagePartition } from '../compute/partition.js';
import type { Frame } from '../protocol/frame.js';
import { decodeMessage, encodeJson, type Ack, type Hello, type KeyReply, type ProbeReply, type StateInfo, type StatsMessage, type StepPlan } from '../protocol/messages.js';
import { Phase } from '../protocol/phase.js';
import { CtlVerb, lastToken, snapshotSubject } from '../protocol/subjects.js';
import type { Bus, BusMessage } from '../transport/bus.js';

/** What a stage does for each verb; a refusal is thrown (a TroupeError, or anything else as a StateError). */
export interface StageVerbs {
  step(plan: StepPlan): void;
  abort(step: number): Promise<void>;
  stop(job: string): void;
  ping(): Hello;
  stats(): StatsMessage;
  probe(): ProbeReply;
  load(info: StateInfo): Promise<void>;
  dump(): Promise<StateInfo>;
  key(): KeyReply;
  peers(p: { prev: string; next: string }): void;
}

/** Answers one control request. */
export async function answerControl(m: BusMessage, v: StageVerbs): Promise<void> {
  let reply: object = { ok: true } satisfies Ack;
  try {
    const verb = lastToken(m.subject);
    if (verb === CtlVerb.STEP) v.step(decodeMessage('plan', m.data));
    else if (verb === CtlVerb.ABORT) await v.abort(decodeMessage('abort', m.data).step);
    else if (verb === CtlVerb.STOP) v.stop(decodeMessage('stop', m.data).job);
    else if (verb === CtlVerb.PING) reply = v.ping();
    else if (verb === CtlVerb.STATS) reply = v.stats();
    else if (verb === CtlVerb.PROBE) reply = v.probe();
    else if (verb === CtlVerb.LOAD) await v.load(decodeMessage('state', m.data));
    else if (verb === CtlVerb.DUMP) reply = await v.dump();
    else if (verb === CtlVerb.KEY) reply = v.key();
    else if (verb === CtlVerb.PEERS) v.peers(decodeMessage('peers', m.data));
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

/** A machine state value as a dotted path: `running.waiting`. */
export function stateName(v: unknown): string {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object') return Object.entries(v).map(([k, sub]) => `${k}.${stateName(sub)}`).join(',');
  return String(v);
}

/** Where the stage is: its state, its action (`executing`, within a run) and the slots that action waits for. */
export function probeOf(rank: number, s: { value: unknown; context: StageContext; matches(v: 'running' | { running: 'computing' }): boolean }, executing: number): ProbeReply {
  const c = s.context;
  // Within a run the machine's cursor stays at the run's first action.
  const inRun = s.matches({ running: 'computing' }) && executing >= c.cursor && executing < c.cursor + c.run;
  const a = s.matches('running') ? c.actions[inRun ? executing : c.cursor] : undefined;
  return { rank, step: c.step, state: stateName(s.value), action: a ? `${a.kind}${a.microbatch}` : '', awaiting: a ? missing(c) : [] };
}

/** Throws unless the stage is idle (state moves only between steps). */
export function requireIdle(rank: number, s: { value: unknown; matches(v: 'idle'): boolean }, what: string): void {
  if (!s.matches('idle')) throw new StateError(`stage ${rank} cannot ${what}: it is ${JSON.stringify(s.value)}`);
}

/** `frame`, the state frame received last, when it is of the step `load` names. */
export function stateFrameFor(rank: number, frame: Frame | undefined, info: StateInfo): Frame {
  if (!frame || frame.key.step !== info.step) {
    throw new StateError(`stage ${rank} has no state frame of step ${info.step}${frame ? ` (it has step ${frame.key.step})` : ''}`);
  }
  return frame;
}

/** Publishes the stage's state of step `step` on its snapshot subject, sealed by `seal`, and returns the names. */
export async function dumpState(bus: Bus, job: string, partition: StagePartition, optimizer: tf.Optimizer, step: number, seal: (f: Frame, subject: string) => Frame): Promise<StateInfo> {
  const state = await exportStageState(partition, optimizer);
  const subject = snapshotSubject(job, partition.rank);
  await bus.publishFrame(subject, seal({ key: { job, step, microbatch: 0, phase: Phase.STATE }, from: `stage.${partition.rank}`, tensors: state.tensors }, subject));
  return { step, weightNames: state.weightNames, optimizerNames: state.optimizerNames };
}
