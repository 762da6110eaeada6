/**
 * Large frames between neighbouring stages over a direct TCP link, NATS staying the control
 * plane and the fallback. The first large frame to a neighbour goes over NATS and starts an
 * offer; once the link is up, frames at least `minBytes` large go over it; if it fails, the
 * frames it had not acknowledged are sent again over NATS (the receiver drops any it already
 * handed on) and the next large frame offers a new link.
 *
 * ```
 * sender (stage r)                         NATS                          receiver (stage r+1)
 *  offer {link, host, port, key} --- troupe.<job>.stage.<r+1>.FORWARD ---> (only stage r may publish there)
 *                               <--- troupe.<job>.stage.<r>.BACKWARD ---- answer {link, key} (only stage r+1)
 *  listener <====================== TCP: HELLO, proofs of the key (directHandshake.ts) =====  connect
 *  frames ======================================================================>  the same subscriptions,
 *          <======================================================== acks          parseHeader, Reassembler, admitFrame
 * ```
 */
import net from 'node:net';
import { networkInterfaces } from 'node:os';
import { TransportError, messageOf } from '../errors.js';
import { encodeFrame, frameByteLength, type Frame } from '../protocol/frame.js';
import { deferred, type Deferred } from '../runtime/deferred.js';
import { linkEnds } from './directRoute.js';
import { HELLO_BYTES, MAC_BYTES, keyPair, linkId, linkKey, nonce, parseHello, proof, sameProof, type KeyPair } from './directHandshake.js';
import { LinkReceiver, LinkSender, SocketReader, type Unacked } from './directLink.js';

/** The header naming a direct-path control message (`offer`, `answer`); such messages are never frames. */
export const DIRECT_HEADER = 'Troupe-Direct';
/** The header of a frame sent again over NATS after its link failed: `<link>/<sequence>`. */
export const RESENT_HEADER = 'Troupe-Resent';

/** Options of the direct path. */
export interface DirectOptions {
  /** Frames with at least this many body bytes go direct (default 64 KiB, or TROUPE_DIRECT_MIN_BYTES); smaller ones keep NATS's latency. */
  readonly minBytes?: number;
  /**
   * The address to listen on and give neighbours (default: 127.0.0.1 when every NATS server
   * is on this host, else this host's first non-internal IPv4 address).
   */
  readonly host?: string;
  /** The address neighbours connect to, when it differs from `host` (a listener on 0.0.0.0, NAT; also TROUPE_DIRECT_ADVERTISE). */
  readonly advertise?: string;
  /** Milliseconds an offer may take to become a link (default 5 s). */
  readonly handshakeMs?: number;
  /** Largest frame body a link takes (default 256 MiB, as a stage takes from NATS). */
  readonly maxFrameBytes?: number;
}

/** What the path needs from its bus. */
export interface DirectHooks {
  /** Publishes a control message on NATS. */
  publish(subject: string, data: Uint8Array, headers: Record<string, string>): Promise<void>;
  /** Publishes a frame on NATS, with `extra` headers on each of its messages. */
  publishFrame(subject: string, frame: Frame, extra: Record<string, string>): Promise<number>;
  /** Hands a frame that came over a link to the bus's subscriptions on `subject`. */
  deliver(subject: string, headers: Record<string, string>, data: Buffer): void;
  /** Reports what the path did (`direct-up`, `direct-down`, `direct-refused`, `direct-error`). */
  status(type: string, detail: string): void;
}

/** Counters of the path (the bus adds its bytes to `bytesIn`/`bytesOut` too). */
export interface DirectCounters {
  framesOut: number;
  bytesOut: number;
  framesIn: number;
  bytesIn: number;
  /** Links that came up, as sender and as receiver. */
  linksOut: number;
  linksIn: number;
  /** Connections refused by the listener (not a HELLO, unknown or expired link, wrong proof). */
  refused: number;
  /** Frames sent again over NATS after their link failed, and resent ones dropped as already handed on. */
  resent: number;
  duplicatesDropped: number;
  /** Control messages ignored (malformed, unexpected). */
  ignored: number;
}

interface Offer {
  readonly subject: string;
  readonly answerOn: string;
  readonly id: Buffer;
  readonly keys: KeyPair;
  readonly answer: Deferred<string>;
  readonly timer: NodeJS.Timeout;
  /** The offer's message once the listener is up, and when it last went out (performance.now()). */
  body?: Uint8Array;
  sentAt: number;
}

type Route = { state: 'idle'; retryAt: number; failures: number } | { state: 'offering'; offer: Offer; failures: number } | { state: 'up'; link: LinkSender };

const HEX_ID = /^[0-9a-f]{32}$/;
const BACKOFF_MS = [1_000, 2_000, 5_000, 10_000, 30_000];
/** Least time between two sendings of one open offer. */
const REOFFER_MS = 100;

/** The direct path of one bus: its links out (as a sender) and in (as a receiver). */
export class DirectPath {
  readonly counters: DirectCounters = {
    framesOut: 0,
    bytesOut: 0,
    framesIn: 0,
    bytesIn: 0,
    linksOut: 0,
    linksIn: 0,
    refused: 0,
    resent: 0,
    duplicatesDropped: 0,
    ignored: 0,
  };
  private readonly routes = new Map<string, Route>();
  private readonly offers = new Map<string, Offer>();
  private readonly inbound = new Map<string, { readonly id: string; readonly link: LinkReceiver }>();
  /** Offers answered (by link id): one sent again is not answered twice. */
  private readonly answered = new Set<string>();
  /** Per link id (in and recently gone), the last sequence handed on: resent frames at or below it are dropped. */
  private readonly delivered = new Map<string, number>();
  private server: net.Server | undefined;
  private listening: Promise<number> | undefined;
  private readonly accepted = new Set<net.Socket>();
  private closed = false;
  private readonly minBytes: number;
  private readonly handshakeMs: number;
  private readonly maxFrameBytes: number;
  private readonly host: string;
  private readonly advertise: string;

  /**
   * @param role the bus's NATS role: only `stage<r>` takes part, offering links for the frames
   *   stage r sends and answering offers of frames for stage r (a driver's, inspector's or
   *   admin's bus that reads stage subjects never answers, so it cannot take a link)
   */
  constructor(
    private readonly hooks: DirectHooks,
    servers: readonly string[],
    private readonly role: string | undefined,
    o: DirectOptions = {},
  ) {
    this.minBytes = o.minBytes ?? (Number(process.env['TROUPE_DIRECT_MIN_BYTES'] ?? '') || 64 * 1024);
    this.handshakeMs = o.handshakeMs ?? 5_000;
    this.maxFrameBytes = o.maxFrameBytes ?? 256 * 1024 * 1024;
    this.host = o.host ?? process.env['TROUPE_DIRECT_HOST'] ?? defaultHost(servers);
    this.advertise = o.advertise ?? process.env['TROUPE_DIRECT_ADVERTISE'] ?? this.host;
  }

  /** Links up now, as sender and as receiver. */
  get links(): { out: number; in: number } {
    let out = 0;
    for (const r of this.routes.values()) if (r.state === 'up') out++;
    let inn = 0;
    for (const l of this.inbound.values()) if (l.link.isUp) inn++;
    return { out, in: inn };
  }

  /**
   * Sends `frame` over the link to the subject's receiver when it is large enough and the link
   * is up: resolves to the body bytes sent (over the link, or over NATS again if the link failed
   * under it). Returns null at once when the frame takes NATS (small, not a neighbour's
   * subject, no link yet: then an offer starts).
   */
  publish(subject: string, frame: Frame): Promise<number> | null {
    // Decided without a turn of the event loop: a frame that takes NATS loses no time here.
    if (this.closed) return null;
    const bytes = frameByteLength(frame.tensors);
    if (bytes < this.minBytes) return null;
    const ends = linkEnds(subject);
    if (!ends || this.role !== `stage${ends.sender}`) return null;
    const answerOn = ends.answerOn;
    const route = this.routes.get(subject) ?? { state: 'idle', retryAt: 0, failures: 0 };
    if (route.state === 'up' && !route.link.isDown) {
      const msg = encodeFrame(frame, Math.max(4, bytes))[0]!;
      return route.link.send(subject, msg, frame).then((ok) => {
        if (ok) {
          this.counters.framesOut++;
          this.counters.bytesOut += msg.data.byteLength;
        }
        // Not ok: the link failed under the frame, which went over NATS with the others unacknowledged.
        return msg.data.byteLength;
      });
    }
    if (route.state === 'idle' && performance.now() >= route.retryAt) this.offer(subject, answerOn, route.failures);
    // An open offer goes out again with the frames (at most every REOFFER_MS): a receiver that
    // subscribed after it was sent (a restarted stage) hears it and answers.
    if (route.state === 'offering') this.reoffer(route.offer);
    return null;
  }

  private reoffer(offer: Offer): void {
    if (!offer.body || performance.now() - offer.sentAt < REOFFER_MS) return;
    offer.sentAt = performance.now();
    this.hooks.publish(offer.subject, offer.body, { [DIRECT_HEADER]: 'offer' }).catch(() => {});
  }

  /** Starts an offer of a link for frames on `subject`; its answer comes on `answerOn`. */
  private offer(subject: string, answerOn: string, failures: number): void {
    const id = linkId();
    const offer: Offer = {
      subject,
      answerOn,
      id,
      keys: keyPair(),
      answer: deferred<string>(),
      sentAt: performance.now(),
      timer: setTimeout(() => this.offerFailed(subject, offer, 'no receiver came within the handshake time'), this.handshakeMs),
    };
    offer.answer.promise.catch(() => {});
    this.offers.set(id.toString('hex'), offer);
    this.routes.set(subject, { state: 'offering', offer, failures });
    void (async () => {
      try {
        const port = await this.listen();
        offer.body = Buffer.from(JSON.stringify({ v: 1, link: id.toString('hex'), host: this.advertise, port, key: offer.keys.publicKey }));
        offer.sentAt = performance.now();
        await this.hooks.publish(subject, offer.body, { [DIRECT_HEADER]: 'offer' });
      } catch (err) {
        this.offerFailed(subject, offer, messageOf(err));
      }
    })();
  }

  private offerFailed(subject: string, offer: Offer, why: string): void {
    clearTimeout(offer.timer);
    this.offers.delete(offer.id.toString('hex'));
    offer.answer.reject(new TransportError(why));
    const r = this.routes.get(subject);
    if (r?.state !== 'offering' || r.offer !== offer) return;
    const failures = r.failures + 1;
    this.routes.set(subject, { state: 'idle', retryAt: performance.now() + BACKOFF_MS[Math.min(failures, BACKOFF_MS.length) - 1]!, failures });
    this.hooks.status('direct-error', `no direct link for ${subject} (${why}); its frames go over NATS`);
  }

  private listen(): Promise<number> {
    this.listening ??= new Promise<number>((resolve, reject) => {
      const server = net.createServer((socket) => void this.accept(socket));
      server.once('error', (err) => reject(new TransportError(`direct path: cannot listen on ${this.host}: ${err.message}`, { cause: err })));
      server.listen(0, this.host, () => resolve((server.address() as net.AddressInfo).port));
      this.server = server;
    });
    return this.listening;
  }

  /** A receiver connecting to the listener: its HELLO must name an open offer, and both sides must prove the key. */
  private async accept(socket: net.Socket): Promise<void> {
    if (this.closed) return void socket.destroy();
    this.accepted.add(socket);
    socket.once('close', () => this.accepted.delete(socket));
    socket.setNoDelay(true);
    socket.setTimeout(this.handshakeMs, () => socket.destroy());
    socket.on('error', () => {}); // a refused peer's reset; handled by 'close'
    const reader = new SocketReader(socket);
    const refuse = (why: string) => {
      this.counters.refused++;
      this.hooks.status('direct-refused', `a connection from ${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'} refused: ${why}`);
      socket.destroy();
    };
    try {
      const hello = parseHello(await reader.read(HELLO_BYTES));
      if (!hello) return refuse('not a HELLO');
      const id = hello.id.toString('hex');
      const offer = this.offers.get(id);
      if (!offer) return refuse(`no open offer of link ${id}`);
      let key: Buffer;
      try {
        key = linkKey(offer.keys.privateKey, await offer.answer.promise, offer.id, offer.subject);
      } catch (err) {
        return refuse(messageOf(err));
      }
      const nonceS = nonce();
      socket.write(Buffer.concat([nonceS, proof(key, 'sender', offer.id, hello.nonce, nonceS)]));
      if (!sameProof(await reader.read(MAC_BYTES), proof(key, 'receiver', offer.id, nonceS, hello.nonce))) return refuse('wrong proof of the link key');
      // Another connection may have completed this offer meanwhile.
      if (this.offers.get(id) !== offer || this.closed) return refuse(`link ${id} is taken`);
      clearTimeout(offer.timer);
      this.offers.delete(id);
      const link = new LinkSender(socket, id, reader.detach(), (unacked, why) => this.linkDown(offer.subject, link, unacked, why));
      this.routes.set(offer.subject, { state: 'up', link });
      this.counters.linksOut++;
      this.hooks.status('direct-up', `frames on ${offer.subject} go over a direct link to ${socket.remoteAddress ?? '?'}:${socket.remotePort ?? '?'}`);
    } catch (err) {
      refuse(messageOf(err));
    }
  }

  /** A link out failed: the route offers anew with the next large frame, and the unacknowledged frames go over NATS. */
  private linkDown(subject: string, link: LinkSender, unacked: readonly Unacked[], why: string): void {
    const r = this.routes.get(subject);
    if (r?.state === 'up' && r.link === link) this.routes.set(subject, { state: 'idle', retryAt: 0, failures: 0 });
    if (this.closed) return;
    this.hooks.status('direct-down', `the direct link for ${subject} is down (${why}); ${unacked.length} unacknowledged frames go over NATS`);
    for (const u of unacked) {
      this.counters.resent++;
      this.hooks.publishFrame(u.subject, u.frame, { [RESENT_HEADER]: `${link.id}/${u.seq}` }).catch((err: unknown) => {
        this.hooks.status('direct-error', `resending a frame on ${u.subject} over NATS failed: ${messageOf(err)}`);
      });
    }
  }

  /** An offer or an answer received on `subject` (a subscription's message with the DIRECT_HEADER). */
  onControl(subject: string, kind: string | undefined, data: Uint8Array): void {
    if (this.closed) return;
    try {
      const body = JSON.parse(Buffer.from(data).toString('utf8')) as Record<string, unknown>;
      if (body['v'] !== 1 || typeof body['link'] !== 'string' || !HEX_ID.test(body['link']) || typeof body['key'] !== 'string' || body['key'].length > 200)
        throw new Error('malformed');
      if (kind === 'offer') return this.onOffer(subject, body['link'], body['key'], body['host'], body['port']);
      if (kind === 'answer') {
        const offer = this.offers.get(body['link']);
        // An answer counts only on the subject the offer's receiver may publish to.
        if (!offer || offer.answerOn !== subject) throw new Error('unexpected answer');
        return offer.answer.resolve(body['key']);
      }
      throw new Error(`unknown kind ${String(kind)}`);
    } catch {
      this.counters.ignored++;
    }
  }

  /** An offer of frames on `subject`: answer with our key, connect, and hand the frames to the subscriptions. */
  private onOffer(subject: string, id: string, peerKey: string, host: unknown, port: unknown): void {
    const ends = linkEnds(subject);
    if (!ends || this.role !== `stage${ends.receiver}`)
      throw new Error(`an offer for stage ${ends?.receiver ?? '?'} heard by ${this.role ?? 'a bus without a role'}`);
    const answerOn = ends.answerOn;
    if (typeof host !== 'string' || host.length === 0 || host.length > 255 || typeof port !== 'number' || !Number.isInteger(port) || port < 1 || port > 65535)
      throw new Error('malformed offer');
    if (this.answered.has(id)) return;
    this.answered.add(id);
    if (this.answered.size > 256) this.answered.delete(this.answered.values().next().value!);
    const keys = keyPair();
    const idBytes = Buffer.from(id, 'hex');
    const key = linkKey(keys.privateKey, peerKey, idBytes, subject);
    // The sender offers anew only when its link is gone: the link in for this subject is done.
    this.inbound.get(subject)?.link.close('the sender offered a new link');
    void this.hooks
      .publish(answerOn, Buffer.from(JSON.stringify({ v: 1, link: id, key: keys.publicKey })), { [DIRECT_HEADER]: 'answer' })
      .then(() => {
        if (this.closed) return;
        const entry = {
          id,
          link: new LinkReceiver({
            host,
            port,
            id: idBytes,
            key,
            maxBytes: this.maxFrameBytes,
            handshakeMs: this.handshakeMs,
            deliver: (headers, data) => {
              this.counters.framesIn++;
              this.counters.bytesIn += data.byteLength;
              this.delivered.set(id, (this.delivered.get(id) ?? 0) + 1);
              this.hooks.deliver(subject, headers, data);
            },
            onUp: () => {
              this.counters.linksIn++;
              this.hooks.status('direct-up', `frames on ${subject} come over a direct link from ${host}:${port}`);
            },
            onDown: (why) => {
              if (this.inbound.get(subject) === entry) this.inbound.delete(subject);
              if (!this.closed) this.hooks.status('direct-down', `the direct link in for ${subject} is down (${why})`);
            },
          }),
        };
        this.inbound.set(subject, entry);
        this.keepDelivered(id);
      })
      .catch((err: unknown) => this.hooks.status('direct-error', `answering an offer on ${subject} failed: ${messageOf(err)}`));
  }

  /** Remembers link `id`'s count of frames handed on (the last 256 links'). */
  private keepDelivered(id: string): void {
    this.delivered.set(id, this.delivered.get(id) ?? 0);
    while (this.delivered.size > 256) this.delivered.delete(this.delivered.keys().next().value!);
  }

  /** Whether a frame message resent over NATS (`<link>/<seq>`) was already handed on by its link: then it is dropped. */
  alreadyDelivered(resent: string): boolean {
    const [id, seq] = resent.split('/');
    const done = id === undefined ? undefined : this.delivered.get(id);
    const dup = done !== undefined && Number(seq) <= done;
    if (dup) this.counters.duplicatesDropped++;
    return dup;
  }

  /**
   * Takes every link down, in and out: frames sent and not yet acknowledged go over NATS again,
   * and the next large frame offers a new link (after a network change, say).
   */
  dropLinks(why: string): void {
    for (const r of this.routes.values()) if (r.state === 'up') r.link.fail(why);
    for (const l of [...this.inbound.values()]) l.link.close(why);
  }

  /** Closes the listener and every link. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    for (const o of this.offers.values()) {
      clearTimeout(o.timer);
      o.answer.reject(new TransportError('the direct path closed'));
    }
    this.offers.clear();
    for (const r of this.routes.values()) if (r.state === 'up') r.link.fail('the bus closed');
    for (const l of this.inbound.values()) l.link.close('the bus closed');
    for (const s of this.accepted) s.destroy();
    const server = this.server;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}

/** 127.0.0.1 when every server is on this host, else this host's first non-internal IPv4 address. */
function defaultHost(servers: readonly string[]): string {
  const local = servers.every((s) => /^(nats:\/\/|tls:\/\/)?(127\.\d+\.\d+\.\d+|localhost|\[::1\])(:\d+)?\/?$/.test(s.trim()));
  if (local) return '127.0.0.1';
  for (const addrs of Object.values(networkInterfaces())) {
    for (const a of addrs ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  }
  return '127.0.0.1';
}
