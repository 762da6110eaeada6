/**
 * xstate inspection events in the @statelyai/inspect format (v0.7.2), converted as its
 * `createInspector` converts them, with Troupe's own fast converter for data (sanitize.ts):
 * a machine's definition names its functions (`{ type: <name> }`), snapshots are what
 * xstate's `toJSON` gives (value, status, context, output, error, tags, children,
 * historyValue), events are the event objects. Session ids are mapped by the caller so that
 * they are unique across processes.
 */
import { hostname } from 'node:os';
import type { InspectionEvent } from 'xstate';
import { sanitize, type FunctionRule } from './sanitize.js';

/** The format version @statelyai/inspect stamps on its events. */
const STATELY_VERSION = '0.7.2';

/** Fields every Stately inspection event has. */
interface Base {
  readonly sessionId: string;
  readonly rootId: string | undefined;
  readonly createdAt: string;
  readonly id: null;
  readonly _version: string;
}

/** A serialisable snapshot: `status` always, and what the actor's logic has (`value`, `context`, `output`, ...). */
export interface SnapshotJson {
  readonly status: string;
  readonly value?: unknown;
  readonly context?: unknown;
  readonly [field: string]: unknown;
}

export type StatelyActorEvent = Base & {
  readonly type: '@xstate.actor';
  readonly name: string;
  readonly definition: string;
  readonly parentId: string | undefined;
  readonly snapshot: SnapshotJson;
};
type StatelyEventEvent = Base & { readonly type: '@xstate.event'; readonly event: unknown; readonly sourceId: string | undefined };
type StatelySnapshotEvent = Base & { readonly type: '@xstate.snapshot'; readonly event: unknown; readonly snapshot: SnapshotJson };
export type StatelyEvent = StatelyActorEvent | StatelyEventEvent | StatelySnapshotEvent;

/** What an inspected actor reference offers (xstate's public type is narrower than the object). */
export interface InspectedRef {
  readonly sessionId: string;
  readonly id: string;
  readonly _parent?: InspectedRef;
  readonly logic?: { readonly config?: unknown };
  getSnapshot(): unknown;
}

/** This process's prefix for session ids of actors with no name of their own. */
export const SESSION_PREFIX = `${hostname()}:${process.pid}:`;

/** Maps an xstate session id (`x:3`, unique within a process) to the one Stately sees. */
export type SessionNames = (xstateSessionId: string) => string;

/** The default mapping: `<host>:<pid>:<xstate session id>`. */
export const prefixed: SessionNames = (sid) => SESSION_PREFIX + sid;

const DEFINITION_DEPTH = 10;

/** JSON of a machine config the way @statelyai/inspect writes it: functions named, 10 levels at most. */
function definitionJson(v: unknown, depth: number, seen: object[]): unknown {
  if (typeof v === 'function') return { type: v.name };
  if (typeof v === 'number') return Number.isFinite(v) ? v : null;
  if (v === null || typeof v !== 'object') return typeof v === 'symbol' ? undefined : v;
  const toJSON = (v as { toJSON?: unknown }).toJSON;
  if (typeof toJSON === 'function') return definitionJson(toJSON.call(v), depth, seen);
  if (seen.includes(v)) return '[Circular]';
  if (depth >= DEFINITION_DEPTH) return Array.isArray(v) ? '[Array]' : '[Object]';
  seen.push(v);
  try {
    if (Array.isArray(v)) return v.map((x) => definitionJson(x, depth + 1, seen) ?? null);
    const out: Record<string, unknown> = {};
    for (const [k, x] of Object.entries(v)) {
      const j = definitionJson(x, depth + 1, seen);
      if (j !== undefined) out[k] = j;
    }
    return out;
  } finally {
    seen.pop();
  }
}

/** The actor's name as the library gives it: its id, or its machine's id when it has none of its own. */
function nameOf(ref: InspectedRef): string {
  const config = ref.logic?.config as { id?: string } | undefined;
  return ref.id === ref.sessionId && config && typeof config === 'object' && config.id ? config.id : ref.id;
}

/** The machine definition as JSON text: its config with functions named; `{ id }` for logic that is no machine. */
function definitionOf(ref: InspectedRef): string {
  const config = ref.logic?.config;
  return JSON.stringify(definitionJson(config !== null && typeof config === 'object' ? config : { id: nameOf(ref) }, 0, []));
}

/** A snapshot as the library writes it (xstate's toJSON), data sanitised; `status` defaults to active. */
function snapshotJson(s: unknown, functions: FunctionRule = 'drop'): SnapshotJson {
  // Depth 1: in a frame the snapshot is one level down, where the library's depth limit counts from.
  const j = sanitize(s ?? {}, functions, 1);
  const o = j !== null && typeof j === 'object' && !Array.isArray(j) ? (j as Record<string, unknown>) : {};
  return { ...o, status: typeof o['status'] === 'string' ? o['status'] : 'active' };
}

/** The actor's snapshot now; while xstate is still creating it there is none yet. */
function currentSnapshot(ref: InspectedRef): unknown {
  try {
    return ref.getSnapshot();
  } catch {
    return undefined;
  }
}

/**
 * Converts an xstate inspection event; undefined for the kinds Stately does not show
 * (`@xstate.action`, `@xstate.microstep`). An `@xstate.actor` event's snapshot is read now:
 * call this once xstate has made it (the library waits a tick; see ActorInspector).
 * `sourceId` names the sender of an event that xstate does not know (one from another process).
 */
export function toStatelyEvent(ev: InspectionEvent, names: SessionNames = prefixed, sourceId?: string): StatelyEvent | undefined {
  const ref = ev.actorRef as unknown as InspectedRef;
  const base = {
    sessionId: names(ref.sessionId),
    rootId: ev.rootId ? names(ev.rootId) : undefined,
    createdAt: Date.now().toString(),
    id: null,
    _version: STATELY_VERSION,
  };
  switch (ev.type) {
    case '@xstate.actor':
      return {
        ...base,
        type: '@xstate.actor',
        name: nameOf(ref),
        definition: definitionOf(ref),
        parentId: ref._parent ? names(ref._parent.sessionId) : undefined,
        snapshot: snapshotJson(currentSnapshot(ref)),
      };
    case '@xstate.event': {
      const source = ev.sourceRef as unknown as InspectedRef | undefined;
      return { ...base, type: '@xstate.event', event: sanitize(ev.event, 'drop', 1), sourceId: source ? names(source.sessionId) : sourceId };
    }
    case '@xstate.snapshot':
      return { ...base, type: '@xstate.snapshot', event: sanitize(ev.event, 'drop', 1), snapshot: snapshotJson(ev.snapshot, 'name') };
    default:
      return undefined;
  }
}
