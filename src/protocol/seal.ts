/**
 * Seals: a keyed hash (HMAC-SHA-256) over a frame's subject and headers, by which a receiver
 * knows the frame comes from the one stage that holds the key. NATS does not tell a subscriber
 * who published, and every connection of a user shares its permissions; a seal binds a frame
 * to the process that made the key (a stage makes its own and tells only the driver, in a
 * reply; the driver tells its neighbours, on their own control subjects).
 *
 * ```
 * Troupe-Seal: base64url(HMAC-SHA-256(key, subject \n job \n step \n mb \n phase \n from \n tensors \n bytes))
 * ```
 *
 * The body is not hashed (a frame costs one hash of about 200 bytes, whatever its size): the
 * key makes the headers unforgeable, and a second frame of the same key with other bytes is a
 * conflict the stage fails its step on (admitFrame).
 */
import { createHmac, createSecretKey, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { FrameError } from '../errors.js';
import { frameByteLength, specString, type Frame, type FrameHeader } from './frame.js';
import type { Key } from './key.js';

/** Bytes of a seal key. */
const SEAL_KEY_BYTES = 32;

/** A new random seal key. */
export function newSealKey(): Uint8Array {
  return new Uint8Array(randomBytes(SEAL_KEY_BYTES));
}

/** A key as it travels in JSON (base64). */
export function sealKeyText(key: Uint8Array): string {
  return Buffer.from(key).toString('base64');
}

/** A key from its text; FrameError unless it is SEAL_KEY_BYTES bytes of base64. */
export function parseSealKey(text: string): Uint8Array {
  const key = Buffer.from(text, 'base64');
  if (key.byteLength !== SEAL_KEY_BYTES || key.toString('base64') !== text) throw new FrameError(`a seal key must be ${SEAL_KEY_BYTES} bytes in base64`);
  return new Uint8Array(key);
}

/** Each key as a KeyObject, made once: an HMAC from one is about a fifth cheaper. */
const keyObjects = new WeakMap<Uint8Array, KeyObject>();

function digest(key: Uint8Array, subject: string, k: Key, from: string, tensors: string, bytes: number): Buffer {
  let ko = keyObjects.get(key);
  if (!ko) keyObjects.set(key, (ko = createSecretKey(key)));
  return createHmac('sha256', ko).update(`${subject}\n${k.job}\n${k.step}\n${k.microbatch}\n${k.phase}\n${from}\n${tensors}\n${bytes}`).digest();
}

/** `frame` with its seal for `subject` under `key`. */
export function sealFrame(frame: Frame, subject: string, key: Uint8Array): Frame {
  return { ...frame, seal: digest(key, subject, frame.key, frame.from, specString(frame.tensors), frameByteLength(frame.tensors)).toString('base64url') };
}

/** Whether the chunk whose headers are `h`, received on `subject`, carries the seal of `key`. */
export function checkSeal(h: FrameHeader, subject: string, key: Uint8Array): boolean {
  if (h.seal === undefined) return false;
  const got = Buffer.from(h.seal, 'base64url');
  const want = digest(key, subject, h.key, h.from, h.tensorsSpec, h.totalBytes);
  return got.byteLength === want.byteLength && timingSafeEqual(got, want);
}
