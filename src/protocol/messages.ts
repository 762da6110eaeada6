/** Small JSON messages between the scheduler and the stages: step plans, acks and events. */
import { FrameError, TroupeError } from '../errors.js';

/** Body of a `ctl.<rank>.step` request: what a stage must do in one step. */
export interface StepPlan {
  readonly step: number;
  readonly microbatches: number;
  /** Examples in this pipeline's batch (split into the microbatches). */
  readonly batchSize: number;
  /**
   * Examples the loss is averaged over: the last stage scales each microbatch's loss by
   * 1/totalBatch. The batch size, or with data-parallel replicas the whole batch of all.
   */
  readonly totalBatch: number;
  readonly forwardOnly: boolean;
  /** Forward only, no labels: the last stage sends its outputs to the driver (troupe.<job>.output). */
  readonly predict: boolean;
  /** Apply the update at the end (false: keep the gradients for the next step, gradient accumulation). */
  readonly update: boolean;
  /**
   * The plan grants the stage its UPDATE: it applies the update as its list ends, and no
   * UPDATE message comes. The scheduler grants it so to a lone stage (no other stage's list to
   * wait for); only a training step that updates may carry it.
   */
  readonly granted: boolean;
  /** This stage's actions in order, as `F0 F1 B0 ...`. */
  readonly actions: string;
  /**
   * Where the stage shares its device with others: the position of each of its actions in
   * the device's order (`0 2 5 ...`); empty when the stage has the device to itself.
   */
  readonly order: string;
}

/** Whether a step (its plan, or the scheduler's request) ends with an update: training, not accumulating. */
export function appliesUpdate(s: { readonly forwardOnly: boolean; readonly update: boolean }): boolean {
  return !s.forwardOnly && s.update;
}

/** Answer to a liveness probe: where the stage is and what it waits for. */
export interface ProbeReply {
  readonly rank: number;
  readonly step: number;
  /** The machine's state, as `running.waiting`. */
  readonly state: string;
  /** The action it is at (`B2`), empty when none. */
  readonly action: string;
  /** Slots (`PHASE:mb`) that action still waits for. */
  readonly awaiting: string[];
}

/** Answer to every control request. */
export type Ack = { readonly ok: true } | { readonly ok: false; readonly code: string; readonly message: string };

/** Events the stages publish on `troupe.<job>.sched.<event>`. */
/**
 * An action a stage finished: `t0` is its start in Unix milliseconds (fractional), `ms` its
 * duration. Where the time went, when the stage knows: `sendAt` (ms after `t0`) is when it
 * handed its output frame to the bus and `sendMs` how long that took (part of `ms`); `inAt`
 * (Unix ms) is when the frame the action consumed (INPUT on stage 0's F, else the neighbour's
 * FORWARD or BACKWARD) was whole at the stage; `hostMs` is the time the stage spent reading
 * other frames and handling events while the action awaited (part of `ms`, not of `sendMs`).
 * The scaling bench's breakdown and hop latencies come from them.
 */
export interface ActionEvent {
  readonly rank: number;
  readonly step: number;
  readonly action: string;
  readonly t0: number;
  readonly ms: number;
  readonly sendAt?: number;
  readonly sendMs?: number;
  readonly inAt?: number;
  readonly hostMs?: number;
}
export interface LossEvent {
  readonly step: number;
  readonly microbatch: number;
  readonly loss: number;
  readonly metric: number | null;
}
export interface DoneEvent {
  readonly rank: number;
  readonly step: number;
  readonly peakHeld: number;
}
export interface UpdatedEvent {
  readonly rank: number;
  readonly step: number;
}
export interface ErrorEvent {
  readonly rank: number;
  readonly step: number;
  readonly key: string;
  readonly code: string;
  readonly message: string;
}
/**
 * A frame a stage refused. `step`, `microbatch` and `phase` are the frame's key when its
 * headers could be read (null otherwise): a refused INPUT of the running step fails it.
 */
export interface RejectEvent {
  readonly rank: number;
  readonly subject: string;
  readonly code: string;
  readonly message: string;
  readonly step: number | null;
  readonly microbatch: number | null;
  readonly phase: string | null;
}

/**
 * Whether a refusal fails the frame's step, whose slot will then never be filled: a stage
 * found one of the step's INPUT frames the wrong tensors for it (SHAPE; only the driver sends
 * INPUT), or a chunk of one of its frames came twice with different bytes (CONFLICTING_FRAME:
 * the frame is dropped and its further chunks refused). A duplicate (its slot is filled) or a
 * frame whose key could not be read does not.
 */
export function refusalFailsStep(r: Pick<RejectEvent, 'step' | 'phase' | 'code'>): boolean {
  return r.step !== null && ((r.phase === 'INPUT' && r.code === 'SHAPE') || r.code === 'CONFLICTING_FRAME');
}

/** Names that go with a state frame (`w<i>`, `o<i>`), in a load request or a dump reply. */
export interface StateInfo {
  readonly step: number;
  readonly weightNames: readonly string[];
  readonly optimizerNames: readonly string[];
}

/** A stage's answer to `key`: its seal key (base64), which it made itself (seal.ts). */
export interface KeyReply {
  readonly key: string;
}

/** Body of `ctl.<rank>.peers`: the seal keys (base64) of the stages before and after it, '' where there is none. */
interface PeerKeys {
  readonly prev: string;
  readonly next: string;
}

/** A stage's answer to `ping`. */
export interface Hello {
  readonly rank: number;
  readonly stages: number;
  readonly pid: number;
  readonly host: string;
  readonly backend: string;
  readonly device: string;
}

/** A stage's counters (answer to `stats`, and published after every step). */
export interface StatsMessage {
  readonly rank: number;
  /** Last step the stage started. */
  readonly step: number;
  /** Milliseconds spent in compute, publishing results and updates. */
  readonly busyMs: number;
  /** Milliseconds inside steps not busy: waiting for messages (the bubble), and most of machineMs and framesMs. */
  readonly idleMs: number;
  readonly forwards: number;
  readonly backwards: number;
  /** W actions (weight gradients of a split backward). */
  readonly weightGrads: number;
  /** Bytes received and sent, headers excluded. */
  readonly bytesIn: number;
  readonly bytesOut: number;
  /** Highest number of microbatches held for a backward in any step. */
  readonly peakHeld: number;
  /** Frames refused on arrival: dropped, harmless (a step's frames are taken once, from their sender only). */
  readonly rejected: number;
  /** Frames that came with other bytes for a slot whose frame the stage held: neither was used, and the step failed. */
  readonly conflicts: number;
  /** Tensors alive in the stage's process (tf.memory().numTensors). */
  readonly tensors: number;
  /** Milliseconds the stage machine took to handle the host's events: frames, action ends, plans, updates. */
  readonly machineMs: number;
  /** Milliseconds judging and assembling received frames outside the machine (headers, chunks; not the NATS client's parsing). */
  readonly framesMs: number;
  /** Of bytesIn and bytesOut, those that went over direct links between stages rather than NATS (absent when the path is off). */
  readonly directBytesIn?: number;
  readonly directBytesOut?: number;
}

const enc = new TextEncoder();
const dec = new TextDecoder();

/** JSON-encodes a control message. */
export function encodeJson(v: unknown): Uint8Array {
  return enc.encode(JSON.stringify(v));
}

/** Field types; `number?` may also be absent. */
type Shape = Record<string, 'number' | 'number?' | 'string' | 'boolean' | 'number|null' | 'string|null' | 'string[]'>;

function check<T>(what: string, v: unknown, shape: Shape): T {
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new FrameError(`${what}: not a JSON object`);
  const o = v as Record<string, unknown>;
  for (const [k, t] of Object.entries(shape)) {
    const x = o[k];
    if (t === 'number?' && x === undefined) continue;
    const ok =
      t === 'string[]'
        ? Array.isArray(x) && x.every((e) => typeof e === 'string')
        : t === 'number|null'
          ? x === null || (typeof x === 'number' && Number.isFinite(x))
          : t === 'string|null'
            ? x === null || typeof x === 'string'
            : t === 'number?'
              ? typeof x === 'number' && Number.isFinite(x)
              : typeof x === t && (t !== 'number' || Number.isFinite(x));
    if (!ok) throw new FrameError(`${what}: field "${k}" must be ${t}, got ${JSON.stringify(x)}`);
  }
  // Object.hasOwn, not `in`: `in` also finds "toString", "constructor", "__proto__" on the prototype.
  for (const k of Object.keys(o)) if (!Object.hasOwn(shape, k)) throw new FrameError(`${what}: unknown field "${k}"`);
  return o as T;
}

function parse(what: string, data: Uint8Array): unknown {
  try {
    return JSON.parse(dec.decode(data));
  } catch (cause) {
    throw new FrameError(`${what}: body is not JSON`, { cause });
  }
}

const SHAPES = {
  plan: {
    step: 'number',
    microbatches: 'number',
    batchSize: 'number',
    totalBatch: 'number',
    forwardOnly: 'boolean',
    predict: 'boolean',
    update: 'boolean',
    granted: 'boolean',
    actions: 'string',
    order: 'string',
  },
  action: {
    rank: 'number',
    step: 'number',
    action: 'string',
    t0: 'number',
    ms: 'number',
    sendAt: 'number?',
    sendMs: 'number?',
    inAt: 'number?',
    hostMs: 'number?',
  },
  loss: { step: 'number', microbatch: 'number', loss: 'number', metric: 'number|null' },
  done: { rank: 'number', step: 'number', peakHeld: 'number' },
  updated: { rank: 'number', step: 'number' },
  error: { rank: 'number', step: 'number', key: 'string', code: 'string', message: 'string' },
  reject: { rank: 'number', subject: 'string', code: 'string', message: 'string', step: 'number|null', microbatch: 'number|null', phase: 'string|null' },
  state: { step: 'number', weightNames: 'string[]', optimizerNames: 'string[]' },
  hello: { rank: 'number', stages: 'number', pid: 'number', host: 'string', backend: 'string', device: 'string' },
  probe: { rank: 'number', step: 'number', state: 'string', action: 'string', awaiting: 'string[]' },
  abort: { step: 'number' },
  stop: { job: 'string' },
  key: { key: 'string' },
  peers: { prev: 'string', next: 'string' },
  stats: {
    rank: 'number',
    step: 'number',
    busyMs: 'number',
    idleMs: 'number',
    forwards: 'number',
    backwards: 'number',
    weightGrads: 'number',
    bytesIn: 'number',
    bytesOut: 'number',
    peakHeld: 'number',
    rejected: 'number',
    conflicts: 'number',
    tensors: 'number',
    machineMs: 'number',
    framesMs: 'number',
    directBytesIn: 'number?',
    directBytesOut: 'number?',
  },
} as const satisfies Record<string, Shape>;

/** Message kinds and their TypeScript types. */
export interface MessageTypes {
  plan: StepPlan;
  action: ActionEvent;
  loss: LossEvent;
  done: DoneEvent;
  updated: UpdatedEvent;
  error: ErrorEvent;
  reject: RejectEvent;
  state: StateInfo;
  hello: Hello;
  stats: StatsMessage;
  probe: ProbeReply;
  /** Body of `ctl.<rank>.abort`: the step to abort. */
  abort: { readonly step: number };
  /** Body of `ctl.<rank>.stop`: the job, so that a stray message stops nothing. */
  stop: { readonly job: string };
  key: KeyReply;
  peers: PeerKeys;
}

/** Parses and validates a JSON message of kind `kind`, throwing a FrameError naming the bad field. */
export function decodeMessage<K extends keyof MessageTypes>(kind: K, data: Uint8Array): MessageTypes[K] {
  return check<MessageTypes[K]>(kind, parse(kind, data), SHAPES[kind]);
}

/**
 * Parses the reply to a control request that answers with a message of kind `kind`
 * (`{ ok: false, code, message }` on failure), throwing the failure as a TroupeError.
 */
export function decodeReply<K extends keyof MessageTypes>(kind: K, data: Uint8Array): MessageTypes[K] {
  const v = parse(kind, data) as Record<string, unknown> | null;
  if (v && v['ok'] === false) {
    const a = check<{ code: string; message: string }>('reply', v, { ok: 'boolean', code: 'string', message: 'string' });
    throw new TroupeError(a.code, a.message);
  }
  return check<MessageTypes[K]>(kind, v, SHAPES[kind]);
}

/** Parses an ack; anything else is a FrameError. */
export function decodeAck(data: Uint8Array): Ack {
  const v = parse('ack', data) as Record<string, unknown>;
  if (v && v['ok'] === true) return { ok: true };
  return check<Ack>('ack', v, { ok: 'boolean', code: 'string', message: 'string' });
}
