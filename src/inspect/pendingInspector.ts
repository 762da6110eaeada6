/**
 * The inspector of an actor that starts before its NATS connection exists (the job actor
 * prepares the connection itself): events wait until `attach`, then go out in order, and the
 * actor answers `who` like the others.
 */
import type { InspectionEvent } from 'xstate';
import type { Bus } from '../transport/bus.js';
import { ActorInspector, actorSessionId } from './actorInspector.js';
import { RollCall } from './rollCall.js';

/** Options of a PendingInspector. */
export interface PendingInspectorOptions {
  /** The job (or a replica's scope). */
  readonly scope: string;
  /** The actor's name: its session id is `<scope>:<actor>`, its subjects `inspect.<actor>` and `present.<actor>`. */
  readonly actor: string;
}

export class PendingInspector {
  readonly inspect: (ev: InspectionEvent) => void;
  private waiting: InspectionEvent[] | null = [];
  private inspector: ActorInspector | undefined;
  private rollCall: RollCall | undefined;

  constructor(private readonly o: PendingInspectorOptions) {
    this.inspect = (ev) => {
      if (this.waiting) this.waiting.push(ev);
      else this.inspector?.inspect(ev);
    };
  }

  /** Publishes the events so far and every later one on `bus`, and answers `who`. */
  async attach(bus: Bus): Promise<void> {
    const insp = new ActorInspector({ bus, scope: this.o.scope, actor: this.o.actor, sessionId: actorSessionId(this.o.scope, this.o.actor) });
    this.inspector = insp;
    for (const ev of this.waiting ?? []) insp.inspect(ev);
    this.waiting = null;
    this.rollCall = await RollCall.start({ bus, scope: this.o.scope, actor: this.o.actor, answer: () => ({ actors: insp.present() }) });
  }

  /** Publishes nothing more; stops answering `who`. */
  async close(): Promise<void> {
    this.waiting = null;
    this.inspector?.close();
    await this.rollCall?.close();
  }
}
