/** Waits until every rank of a job has a stage up, or says which ranks are missing. */
import { TransportError } from '../errors.js';
import { decodeMessage, decodeReply, encodeJson, type Hello } from '../protocol/messages.js';
import { CtlVerb, ctlSubject, helloSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';

/**
 * Resolves with every rank's hello. Stages announce themselves on `troupe.<job>.hello` when
 * they start; the ones that were up before this call answer a ping, repeated for the ranks
 * not heard from (a stage still reconnecting to NATS has no responder yet). Rejects after
 * `timeoutMs` naming the missing ranks, or as soon as `failed` rejects (a worker died).
 */
export async function waitForWorkers(bus: Bus, job: string, stages: number, timeoutMs: number, failed: Promise<never>): Promise<Hello[]> {
  const hellos: (Hello | undefined)[] = Array.from({ length: stages }, () => undefined);
  let resolveAll!: () => void;
  const all = new Promise<void>((r) => (resolveAll = r));
  const take = (h: Hello) => {
    if (h.rank < 0 || h.rank >= stages || h.stages !== stages) return;
    hellos[h.rank] = h;
    if (hellos.filter(Boolean).length === stages) resolveAll();
  };
  const sub = bus.subscribe(helloSubject(job), (m) => {
    try {
      take(decodeMessage('hello', m.data));
    } catch {
      // not a hello: ignored
    }
  });
  let timer: NodeJS.Timeout | undefined;
  let retry: NodeJS.Timeout | undefined;
  let over = false;
  const ping = async () => {
    await Promise.all(
      hellos
        .flatMap((h, r) => (h ? [] : [r]))
        .map(async (r) => {
          try {
            take(decodeReply('hello', await bus.request(ctlSubject(job, r, CtlVerb.PING), encodeJson({}), 1_000)));
          } catch {
            // not up (or not reconnected) yet: asked again, or it announces itself
          }
        }),
    );
    if (!over && hellos.some((h) => !h)) retry = setTimeout(() => void ping(), 250);
  };
  try {
    await bus.flush();
    void ping();
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const missing = hellos.flatMap((h, r) => (h ? [] : [r]));
        reject(
          new TransportError(
            `job ${job}: no worker for rank ${missing.join(', ')} after ${timeoutMs} ms ` +
              `(start one with: troupe worker --nats <url> --job ${job} --rank <r> --config <job config>)`,
          ),
        );
      }, timeoutMs);
    });
    await Promise.race([all, timeout, failed]);
    return hellos as Hello[];
  } finally {
    over = true;
    clearTimeout(timer);
    clearTimeout(retry);
    await sub.drain();
  }
}
