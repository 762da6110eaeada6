/**
 * The messages of a task pool. A caller offers a task (its input with it) to the pool's queue
 * group; a worker with a free slot starts it and answers `started`, a full one answers busy.
 * A worker is in the queue group only while it has a free slot, so offers go to workers with
 * room. While a task runs its worker heartbeats to the caller, and answers once at its end.
 *
 * | subject | from -> to | body |
 * | --- | --- | --- |
 * | `troupe.pool.<name>.task` | caller -> a worker with room (queue group `workers`), request | `Offer` + input; reply `OfferReply` |
 * | `troupe.pool.<name>.present` | caller -> any worker (queue group), request | `{}`; reply `{ worker }`: is anyone up |
 * | `troupe.pool.<name>.cancel` | caller -> every worker | `Cancel`: stop that task if you run it |
 * | `troupe.pool.<name>.caller.<cid>` | worker -> that caller | `CallerEvent` (+ output): hb, done, released |
 *
 * A task's messages carry the caller's offer number: a heartbeat or an answer belongs to one
 * offer, so a late one of an earlier offer of the same task is recognised. Bodies that carry
 * a value are a JSON head, a newline, and the value's JSON (JSON text never holds a raw
 * newline): the value is not escaped into a string a second time.
 */
import { FrameError } from '../errors.js';
import { poolSubject } from '../protocol/subjects.js';

/** Tasks of pool `name` are offered on `troupe.pool.<name>.task` (a queue group of workers with room). */
export function poolTaskSubject(name: string): string {
  return poolSubject(name, 'task');
}

/** Every worker of pool `name` answers on `troupe.pool.<name>.present`, full or not. */
export function poolPresenceSubject(name: string): string {
  return poolSubject(name, 'present');
}

/** Cancels of pool `name`'s tasks go to every worker. */
export function poolCancelSubject(name: string): string {
  return poolSubject(name, 'cancel');
}

/** One caller's own subject: what workers report about its tasks. */
export function poolCallerSubject(name: string, cid: string): string {
  return poolSubject(name, 'caller', cid);
}

/** An offered task's head (its input follows). */
export interface Offer {
  readonly caller: string;
  readonly offer: number;
  readonly index: number;
  /** The task is stopped this long after it starts. */
  readonly timeoutMs: number;
  /** How often the worker says the task still runs. */
  readonly heartbeatMs: number;
}

/** A worker's answer to an offer: the task started, or the worker is full. */
export interface OfferReply {
  readonly started: boolean;
  /** The worker's name (host:pid:n), for answers and errors. */
  readonly worker: string;
}

/** The caller gave up on a task (its deadline passed, or its worker was presumed dead): stop it. */
export interface Cancel {
  readonly caller: string;
  readonly offer: number;
}

/** The error a task's answer carries. */
export interface RemoteError {
  readonly name: string;
  readonly message: string;
}

/** What a worker tells a caller about one of its tasks. */
export type CallerEvent =
  | { readonly type: 'hb' | 'released'; readonly offer: number; readonly worker: string }
  | { readonly type: 'done'; readonly offer: number; readonly worker: string; readonly ok: true; readonly output: unknown }
  | { readonly type: 'done'; readonly offer: number; readonly worker: string; readonly ok: false; readonly timedOut: boolean; readonly error: RemoteError };

const enc = new TextEncoder();
const dec = new TextDecoder();

/** A head and a value's JSON text in one body. */
export function encodeWithValue(head: object, json: string): Uint8Array {
  return enc.encode(`${JSON.stringify(head)}\n${json}`);
}

function parse(what: string, text: string): Record<string, unknown> {
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch (cause) {
    throw new FrameError(`pool ${what}: not JSON`, { cause });
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new FrameError(`pool ${what}: not a JSON object`);
  return v as Record<string, unknown>;
}

function split(what: string, data: Uint8Array): { head: Record<string, unknown>; value: string | null } {
  const text = dec.decode(data);
  const nl = text.indexOf('\n');
  return nl < 0 ? { head: parse(what, text), value: null } : { head: parse(what, text.slice(0, nl)), value: text.slice(nl + 1) };
}

function need(what: string, o: Record<string, unknown>, fields: Record<string, 'string' | 'number' | 'boolean'>): void {
  for (const [k, t] of Object.entries(fields)) {
    const x = o[k];
    if (typeof x !== t || (t === 'number' && !Number.isInteger(x)))
      throw new FrameError(`pool ${what}: field "${k}" must be ${t === 'number' ? 'an integer' : `a ${t}`}, got ${JSON.stringify(x)}`);
  }
}

/** Node's longest timer (2^31 - 1 ms); a longer one fires after 1 ms. */
export const MAX_TIMER_MS = 2_147_483_647;

/** An offered task: its head and its input's JSON text (not parsed here). */
export function decodeOffer(data: Uint8Array): { offer: Offer; input: string } {
  const { head, value } = split('offer', data);
  need('offer', head, { caller: 'string', offer: 'number', index: 'number', timeoutMs: 'number', heartbeatMs: 'number' });
  const [timeoutMs, heartbeatMs] = [head['timeoutMs'] as number, head['heartbeatMs'] as number];
  if (timeoutMs < 1 || heartbeatMs < 10 || timeoutMs > MAX_TIMER_MS || heartbeatMs > MAX_TIMER_MS)
    throw new FrameError(
      `pool offer: timeoutMs must be 1 to ${MAX_TIMER_MS} and heartbeatMs 10 to ${MAX_TIMER_MS}, got ${String(timeoutMs)} and ${String(heartbeatMs)}`,
    );
  if (value === null) throw new FrameError('pool offer: no input after the head');
  return { offer: head as unknown as Offer, input: value };
}

export function decodeOfferReply(data: Uint8Array): OfferReply {
  const { head } = split('offer reply', data);
  need('offer reply', head, { started: 'boolean', worker: 'string' });
  return head as unknown as OfferReply;
}

export function decodeCancel(data: Uint8Array): Cancel {
  const { head } = split('cancel', data);
  need('cancel', head, { caller: 'string', offer: 'number' });
  return head as unknown as Cancel;
}

export function decodeCallerEvent(data: Uint8Array): CallerEvent {
  const { head, value } = split('event', data);
  need('event', head, { type: 'string', offer: 'number', worker: 'string' });
  if (head['type'] === 'done') {
    need('done', head, { ok: 'boolean' });
    if (head['ok'] === true) {
      if (value === null) throw new FrameError('pool done: an answer needs its output after the head');
      let output: unknown;
      try {
        output = JSON.parse(value);
      } catch (cause) {
        throw new FrameError('pool done: the output is not JSON', { cause });
      }
      return { ...(head as { offer: number; worker: string }), type: 'done', ok: true, output };
    }
    const e = head['error'] as Record<string, unknown> | undefined;
    if (!e || typeof e['name'] !== 'string' || typeof e['message'] !== 'string') throw new FrameError('pool done: a failure needs error { name, message }');
    return { ...(head as { offer: number; worker: string; error: RemoteError }), type: 'done', ok: false, timedOut: head['timedOut'] === true };
  }
  if (head['type'] !== 'hb' && head['type'] !== 'released') throw new FrameError(`pool event: unknown type ${JSON.stringify(head['type'])}`);
  return head as unknown as CallerEvent;
}
