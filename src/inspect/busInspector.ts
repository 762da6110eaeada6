/** The inspector an actor is created with when inspection is on: its events go to NATS. */
import type { InspectionEvent } from 'xstate';
import { encodeJson } from '../protocol/messages.js';
import { inspectSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';
import { toStatelyEvent, type InspectedRef } from './statelyEvents.js';

/**
 * An `inspect` callback for `createActor` that publishes the root actor's inspection events
 * (created, events received, snapshots) on `troupe.<job>.inspect.<actor>` in the
 * @statelyai/inspect format. Child actors (one promise actor per compute action) are left
 * out: their results show as events of the root. Off unless passed to `createActor`.
 */
export function busInspector(bus: Bus, job: string, actor: string): (ev: InspectionEvent) => void {
  const subject = inspectSubject(job, actor);
  return (ev) => {
    if ((ev.actorRef as unknown as InspectedRef)._parent) return;
    const out = toStatelyEvent(ev);
    if (out) void bus.publish(subject, encodeJson(out)).catch(() => {});
  };
}
