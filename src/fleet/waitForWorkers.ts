/** Waits until every rank of a job has a stage up, or says which ranks are missing. */
import { TransportError } from '../errors.js';
import { decodeMessage, decodeReply, encodeJson, type Hello } from '../protocol/messages.js';
import { CtlVerb, ctlSubject, helloSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';

/**
 * Resolves with every rank's hello. Stages announce themselves on `troupe.<job>.hello` when
 * they start; the ones that were up before this call answer a ping. Rejects after
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
  try {
    await bus.flush();
    await Promise.all(
      Array.from({ length: stages }, async (_, r) => {
        try {
          take(decodeReply('hello', await bus.request(ctlSubject(job, r, CtlVerb.PING), encodeJson({}), 2_000)));
        } catch {
          // not up yet: it will announce itself
        }
      }),
    );
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(() => {
        const missing = hellos.flatMap((h, r) => (h ? [] : [r]));
        reject(new TransportError(`job ${job}: no worker for rank ${missing.join(', ')} after ${timeoutMs} ms (start one with: troupe worker --nats <url> --job ${job} --rank <r> --config <job config>)`));
      }, timeoutMs);
    });
    await Promise.race([all, timeout, failed]);
    return hellos as Hello[];
  } finally {
    clearTimeout(timer);
    await sub.drain();
  }
}
