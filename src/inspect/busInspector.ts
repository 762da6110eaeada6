/** The inspection callback of an actor that answers no `who` (pool workers, module runtimes). */
import type { InspectionEvent } from 'xstate';
import type { Bus } from '../transport/bus.js';
import { ActorInspector } from './actorInspector.js';

/**
 * An `inspect` callback for `createActor` that publishes the actor's inspection events, and
 * its children's, on `troupe.<job>.inspect.<actor>` in the @statelyai/inspect format (see
 * ActorInspector). Off unless passed to `createActor`.
 */
export function busInspector(bus: Bus, job: string, actor: string): (ev: InspectionEvent) => void {
  return new ActorInspector({ bus, scope: job, actor }).inspect;
}
