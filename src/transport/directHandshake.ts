/**
 * The direct path's keys and handshake. An offer (over NATS, on a subject only the sending
 * neighbour may publish to) carries the sender's ephemeral X25519 key; the answer (on a
 * subject only the receiving neighbour may publish to) carries the receiver's. Each derives
 * the link's key from the pair; anyone else who reads both (an inspector) cannot. The
 * receiver connects and both prove the key with an HMAC over fresh nonces:
 *
 * ```
 * receiver -> sender   HELLO  "TRPD" 0x01 link-id(16) nonceR(32)
 * sender -> receiver   nonceS(32) HMAC(k, "sender" id nonceR nonceS)(32)
 * receiver -> sender   HMAC(k, "receiver" id nonceS nonceR)(32)
 * ```
 */
import { createHmac, createPublicKey, diffieHellman, generateKeyPairSync, hkdfSync, randomBytes, timingSafeEqual, type KeyObject } from 'node:crypto';
import { TransportError, messageOf } from '../errors.js';

const ID_BYTES = 16;
export const NONCE_BYTES = 32;
export const MAC_BYTES = 32;
const MAGIC = Buffer.from('TRPD');
const VERSION = 1;
/** Bytes of a receiver's HELLO. */
export const HELLO_BYTES = MAGIC.length + 1 + ID_BYTES + NONCE_BYTES;

/** An ephemeral key pair; the public half as base64 of its DER (SPKI) form, as offers and answers carry it. */
export interface KeyPair {
  readonly privateKey: KeyObject;
  readonly publicKey: string;
}

export function keyPair(): KeyPair {
  const { privateKey, publicKey } = generateKeyPairSync('x25519');
  return { privateKey, publicKey: publicKey.export({ format: 'der', type: 'spki' }).toString('base64') };
}

/** The link's key: X25519 of our private and the peer's public key, through HKDF bound to the link id and subject. */
export function linkKey(own: KeyObject, peerPublic: string, id: Uint8Array, subject: string): Buffer {
  let peer: KeyObject;
  try {
    peer = createPublicKey({ key: Buffer.from(peerPublic, 'base64'), format: 'der', type: 'spki' });
    if (peer.asymmetricKeyType !== 'x25519') throw new Error(`a ${String(peer.asymmetricKeyType)} key, not x25519`);
  } catch (cause) {
    throw new TransportError(`direct link: the peer's key is not an X25519 public key: ${messageOf(cause)}`, { cause });
  }
  const shared = diffieHellman({ privateKey: own, publicKey: peer });
  return Buffer.from(hkdfSync('sha256', shared, id, `troupe-direct ${subject}`, 32));
}

export function nonce(): Buffer {
  return randomBytes(NONCE_BYTES);
}

export function linkId(): Buffer {
  return randomBytes(ID_BYTES);
}

/** A side's proof that it holds the link's key, over both nonces (its peer's first). */
export function proof(key: Buffer, side: 'sender' | 'receiver', id: Uint8Array, theirs: Uint8Array, mine: Uint8Array): Buffer {
  return createHmac('sha256', key).update(side).update(id).update(theirs).update(mine).digest();
}

export function sameProof(a: Uint8Array, b: Uint8Array): boolean {
  return a.byteLength === b.byteLength && timingSafeEqual(a, b);
}

export function encodeHello(id: Uint8Array, nonceR: Uint8Array): Buffer {
  return Buffer.concat([MAGIC, Buffer.of(VERSION), id, nonceR]);
}

/** The link id and nonce of a HELLO, or null for anything else. */
export function parseHello(b: Uint8Array): { id: Buffer; nonce: Buffer } | null {
  if (b.byteLength !== HELLO_BYTES || !Buffer.from(b.subarray(0, 4)).equals(MAGIC) || b[4] !== VERSION) return null;
  return { id: Buffer.from(b.subarray(5, 5 + ID_BYTES)), nonce: Buffer.from(b.subarray(5 + ID_BYTES)) };
}
