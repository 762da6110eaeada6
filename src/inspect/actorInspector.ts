/**
 * The inspector an actor is created with when inspection is on: its events, and its child
 * actors' events, go to NATS in the @statelyai/inspect format, and it keeps each live actor's
 * announcement and latest snapshot for an inspector that joins later (`present`).
 */
import type { InspectionEvent } from 'xstate';
import { encodeJson } from '../protocol/messages.js';
import { inspectSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import {
  prefixed,
  toStatelyEvent,
  type InspectedRef,
  type SessionNames,
  type SnapshotJson,
  type StatelyActorEvent,
  type StatelyEvent,
} from './statelyEvents.js';

/** Options of an ActorInspector. */
export interface ActorInspectorOptions {
  readonly bus: Bus;
  /** The job, or a replica's scope (`<job>.r<i>`): events go to `troupe.<scope>.inspect.<actor>`. */
  readonly scope: string;
  /** The actor's name in subjects. */
  readonly actor: string;
  /**
   * The Stately session id of the root actor (its children get `<id>/<xstate id>`). Give
   * `actorSessionId(scope, actor)` to an actor that is the only one of its name in its scope
   * (a pipeline's stages and scheduler): actors in other processes can then name it as the
   * sender of what they receive. Default `<host>:<pid>:<xstate id>`.
   */
  readonly sessionId?: string;
}

/** The session id of the only actor named `actor` in `scope`: `<scope>:<actor>`. */
export function actorSessionId(scope: string, actor: string): string {
  return `${scope}:${actor}`;
}

/** The actor that sent a frame, by the frame's `from` (`stage.2` -> `stage-2`, `sched` -> `scheduler`); undefined for others. */
export function senderActor(from: string): string | undefined {
  if (from === 'sched') return 'scheduler';
  const m = /^stage\.(\d+)$/.exec(from);
  return m ? `stage-${m[1]}` : undefined;
}

interface Live {
  announcement: StatelyActorEvent;
  snapshot: SnapshotJson;
}

/**
 * Pass `inspect` to `createActor`. Events are converted as they come, except that an
 * `@xstate.actor` event waits a tick (as the library's does) so that its snapshot is the
 * actor's real first one; the events after it wait with it, so the order is kept.
 *
 * @example
 * const insp = new ActorInspector({ bus, scope: 'mnist', actor: 'stage-0', sessionId: actorSessionId('mnist', 'stage-0') });
 * const actor = createActor(machine, { inspect: insp.inspect });
 * insp.sendFrom('stage-1', () => actor.send(event)); // an event from another process's actor
 */
export class ActorInspector {
  readonly inspect: (ev: InspectionEvent) => void;
  private readonly subject: string;
  private readonly names: SessionNames;
  private rootSid: string | undefined;
  /** Events waiting behind an announcement, with the sender given by `sendFrom`. */
  private waiting: { ev: InspectionEvent; source: string | undefined }[] | null = null;
  private source: string | undefined;
  /** Live actors (the root, and children until they end) by Stately session id, in order of announcement. */
  private readonly live = new Map<string, Live>();
  private closed = false;

  constructor(private readonly o: ActorInspectorOptions) {
    this.subject = inspectSubject(o.scope, o.actor);
    const fixed = o.sessionId;
    this.names = fixed === undefined ? prefixed : (sid) => (sid === this.rootSid ? fixed : `${fixed}/${sid}`);
    this.inspect = (ev) => this.onEvent(ev);
  }

  /**
   * Runs `send` (which sends the root actor one event) with `actor` (a name in the same scope)
   * as the event's sender: xstate knows no sender of an event from another process.
   */
  sendFrom(actor: string, send: () => void): void {
    this.source = actorSessionId(this.o.scope, actor);
    try {
      send();
    } finally {
      this.source = undefined;
    }
  }

  /** Each live actor's announcement, carrying its latest snapshot: what a viewer that joins now needs. */
  present(): StatelyActorEvent[] {
    return [...this.live.values()].map((l) => ({ ...l.announcement, snapshot: l.snapshot }));
  }

  /** Publishes nothing more after the events already in (call once the actor is stopped). */
  close(): void {
    this.closed = true;
  }

  private onEvent(ev: InspectionEvent): void {
    if (this.closed) return;
    this.rootSid ??= ev.rootId;
    let source: string | undefined;
    // The sender given by sendFrom belongs to the first event the root receives, not to what it sends itself meanwhile.
    if (this.source !== undefined && ev.type === '@xstate.event' && !ev.sourceRef && !(ev.actorRef as unknown as InspectedRef)._parent) {
      source = this.source;
      this.source = undefined;
    }
    if (this.waiting) {
      this.waiting.push({ ev, source });
      return;
    }
    if (ev.type === '@xstate.actor') {
      this.waiting = [{ ev, source }];
      setTimeout(() => this.flush(), 0);
      return;
    }
    this.publish(ev, source);
  }

  private flush(): void {
    const list = this.waiting ?? [];
    this.waiting = null;
    for (const { ev, source } of list) this.publish(ev, source);
  }

  private publish(ev: InspectionEvent, source: string | undefined): void {
    const out = toStatelyEvent(ev, this.names, source);
    if (!out) return;
    this.keep(out);
    this.o.bus.publish(this.subject, encodeJson(out)).catch(() => {
      // A closed connection: the inspector misses the event; the actor goes on.
    });
  }

  private keep(e: StatelyEvent): void {
    if (e.type === '@xstate.actor') this.live.set(e.sessionId, { announcement: e, snapshot: e.snapshot });
    else if (e.type === '@xstate.snapshot') {
      const l = this.live.get(e.sessionId);
      if (!l) return;
      l.snapshot = e.snapshot;
      // A child that ended is not announced to later viewers; the root stays, with its last state.
      if (e.snapshot.status !== 'active' && l.announcement.parentId !== undefined) this.live.delete(e.sessionId);
    }
  }
}
