/**
 * What the Stately WebSocket relay remembers: each live actor's announcement and latest
 * snapshot, sent first to every viewer that connects, so that one joining at any moment sees
 * every actor in its current state.
 */
import type { Presence } from './rollCall.js';
import type { SnapshotJson, StatelyActorEvent, StatelyEvent } from './statelyEvents.js';

interface Known {
  announcement: StatelyActorEvent;
  snapshot: SnapshotJson;
}

export class StatelyRelay {
  /** By session id, in order of announcement (a parent before its children). */
  private readonly known = new Map<string, Known>();
  /** Set when a frame of an actor not announced yet came: the relay then asks who is there. */
  unknownSeen = false;

  /**
   * Takes a frame; true when viewers should get it. A frame of an actor not announced is
   * held back (its announcement, with a newer snapshot, comes with the answer to `who`).
   */
  take(e: StatelyEvent): boolean {
    if (e.type === '@xstate.actor') {
      this.known.set(e.sessionId, { announcement: e, snapshot: e.snapshot });
      return true;
    }
    const k = this.known.get(e.sessionId);
    if (!k) {
      this.unknownSeen = true;
      return false;
    }
    if (e.type === '@xstate.snapshot') {
      k.snapshot = e.snapshot;
      // A child that ended is not announced to later viewers; a root stays, in its last state.
      if (e.snapshot.status !== 'active' && k.announcement.parentId !== undefined) this.known.delete(e.sessionId);
    }
    return true;
  }

  /** Takes a host's answer to `who`; returns the announcements viewers have not had. */
  takePresence(p: Presence): StatelyActorEvent[] {
    const fresh: StatelyActorEvent[] = [];
    for (const a of p.actors) {
      const k = this.known.get(a.sessionId);
      // The answer is newer than what came before it from the same host.
      if (k) k.snapshot = a.snapshot;
      else {
        this.known.set(a.sessionId, { announcement: a, snapshot: a.snapshot });
        fresh.push(a);
      }
    }
    return fresh;
  }

  /** Every live actor's announcement carrying its latest snapshot: a new viewer's first frames. */
  replay(): StatelyActorEvent[] {
    return [...this.known.values()].map((k) => ({ ...k.announcement, snapshot: k.snapshot }));
  }
}
