/** The scheduler's control requests to every stage of a job: one verb to all, acks checked; seal keys asked and told. */
import { TransportError, messageOf } from '../errors.js';
import { decodeAck, decodeReply, encodeJson } from '../protocol/messages.js';
import { parseSealKey, sealKeyText } from '../protocol/seal.js';
import { CtlVerb, ctlSubject } from '../protocol/subjects.js';
import type { Bus } from '../transport/bus.js';

/** Sends `verb` to every stage but those in `skip` and waits for every ack; the first refusal throws, naming the stage. */
export async function requestAll(
  bus: Bus,
  job: string,
  stages: number,
  verb: CtlVerb,
  body: (rank: number) => Uint8Array,
  timeoutMs: number,
  skip: ReadonlySet<number> = new Set(),
): Promise<void> {
  const ranks = Array.from({ length: stages }, (_, r) => r).filter((r) => !skip.has(r));
  const acks = await Promise.all(ranks.map(async (r) => ({ r, ack: decodeAck(await bus.request(ctlSubject(job, r, verb), body(r), timeoutMs)) })));
  const bad = acks.find((a) => !a.ack.ok);
  if (bad && !bad.ack.ok) throw new TransportError(`stage ${bad.r} refused ${verb}: ${bad.ack.code}: ${bad.ack.message}`);
}

/**
 * Every stage's seal key, asked of each (the reply comes to this connection alone), and each
 * stage told its neighbours' keys: before the first step, and again after a failed step (a
 * worker may have been replaced and made a new key).
 */
export async function askSealKeys(bus: Bus, job: string, stages: number, timeoutMs: number): Promise<Uint8Array[]> {
  const keys = await Promise.all(
    Array.from({ length: stages }, async (_, r) => {
      try {
        return parseSealKey(decodeReply('key', await bus.request(ctlSubject(job, r, CtlVerb.KEY), encodeJson({}), timeoutMs)).key);
      } catch (cause) {
        throw new TransportError(`stage ${r} gave no seal key: ${messageOf(cause)}`, { cause });
      }
    }),
  );
  const text = (r: number) => (r >= 0 && r < keys.length ? sealKeyText(keys[r]!) : '');
  await requestAll(bus, job, stages, CtlVerb.PEERS, (r) => encodeJson({ prev: text(r - 1), next: text(r + 1) }), timeoutMs);
  return keys;
}
