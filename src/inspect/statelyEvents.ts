/**
 * xstate inspection events in the @statelyai/inspect format, serialisable and unique across
 * processes: every session id is prefixed with `<host>:<pid>:`.
 */
import { hostname } from 'node:os';
import type { InspectionEvent } from 'xstate';
import { sanitize } from './sanitize.js';

/** The format version @statelyai/inspect stamps on its events. */
export const STATELY_VERSION = '0.7.2';

/** Fields every Stately inspection event has. */
interface Base {
  readonly sessionId: string;
  readonly rootId: string | undefined;
  readonly createdAt: string;
  readonly id: null;
  readonly _version: string;
}

/** A serialisable snapshot: the state value, status, sanitised context. */
export interface SnapshotJson {
  readonly value: unknown;
  readonly status: string;
  readonly context: unknown;
}

export type StatelyEvent =
  | (Base & { readonly type: '@xstate.actor'; readonly name: string; readonly definition: string; readonly parentId: string | undefined; readonly snapshot: SnapshotJson })
  | (Base & { readonly type: '@xstate.event'; readonly event: unknown; readonly sourceId: string | undefined })
  | (Base & { readonly type: '@xstate.snapshot'; readonly event: unknown; readonly snapshot: SnapshotJson });

/** What an inspected actor reference offers (xstate's public type is narrower than the object). */
export interface InspectedRef {
  readonly sessionId: string;
  readonly id: string;
  readonly _parent?: InspectedRef;
  readonly logic?: { readonly config?: unknown };
  getSnapshot(): unknown;
}

/** This process's prefix for session ids. */
export const SESSION_PREFIX = `${hostname()}:${process.pid}:`;

function snapshotOf(s: unknown): SnapshotJson {
  const o = (s ?? {}) as { value?: unknown; status?: string; context?: unknown };
  return { value: sanitize(o.value), status: o.status ?? 'active', context: sanitize(o.context) };
}

/** The actor's snapshot, or nothing while it is still being created (its first snapshot event follows). */
function initialSnapshot(ref: InspectedRef): unknown {
  try {
    return ref.getSnapshot();
  } catch {
    return { value: null, status: 'active', context: null };
  }
}

/** The machine definition as JSON text (functions dropped). */
export function definitionOf(actorRef: InspectedRef): string {
  const config = actorRef.logic?.config;
  return JSON.stringify(sanitizeDefinition(config ?? { id: actorRef.id }));
}

/** Like `sanitize` but without depth or size limits: a machine config is code, not data. */
function sanitizeDefinition(v: unknown): unknown {
  if (v === null || typeof v !== 'object') return typeof v === 'function' ? undefined : v;
  if (Array.isArray(v)) return v.map(sanitizeDefinition).filter((x) => x !== undefined);
  const out: Record<string, unknown> = {};
  for (const [k, x] of Object.entries(v)) {
    const s = sanitizeDefinition(x);
    if (s !== undefined) out[k] = s;
  }
  return out;
}

/** Converts an xstate inspection event; undefined for the kinds Stately does not show. */
export function toStatelyEvent(ev: InspectionEvent, prefix = SESSION_PREFIX): StatelyEvent | undefined {
  const ref = ev.actorRef as unknown as InspectedRef;
  const sid = (r: InspectedRef | undefined) => (r ? prefix + r.sessionId : undefined);
  const base = { sessionId: prefix + ref.sessionId, rootId: ev.rootId ? prefix + ev.rootId : undefined, createdAt: Date.now().toString(), id: null, _version: STATELY_VERSION };
  switch (ev.type) {
    case '@xstate.actor':
      return {
        ...base,
        type: '@xstate.actor',
        name: ref.id,
        definition: definitionOf(ref),
        parentId: sid(ref._parent),
        snapshot: snapshotOf(initialSnapshot(ref)),
      };
    case '@xstate.event':
      return { ...base, type: '@xstate.event', event: sanitize(ev.event), sourceId: sid(ev.sourceRef as unknown as InspectedRef | undefined) };
    case '@xstate.snapshot':
      return { ...base, type: '@xstate.snapshot', event: sanitize(ev.event), snapshot: snapshotOf(ev.snapshot) };
    default:
      return undefined;
  }
}
