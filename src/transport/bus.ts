/** The NATS connection of one actor host: publish with bounded in-flight bytes, subscribe, request, drain. */
import { connect } from '@nats-io/transport-node';
import { headers as natsHeaders, type Msg, type NatsConnection, type Subscription } from '@nats-io/transport-node';
import { TransportError, messageOf } from '../errors.js';
import { credentialsFor } from './credentials.js';
import { DIRECT_HEADER, DirectPath, RESENT_HEADER, type DirectCounters, type DirectOptions } from './directPath.js';
import { subjectMatches } from './directRoute.js';
import { inboxPrefix } from '../protocol/subjects.js';
import { subscribeFrames, type FrameSubscription, type SubscribeFramesOptions } from './subscribeFrames.js';
import { encodeFrame, type Frame, type WireMessage } from '../protocol/frame.js';

/** Options of a bus connection. */
export interface BusOptions {
  /** One or more `nats://host:port` URLs. */
  readonly servers: string | readonly string[];
  /** Connection name shown by the server (`troupe-stage-1`). */
  readonly name?: string;
  /** Bytes published without a server round trip before `publish` waits (default 32 MiB). */
  readonly maxInFlightBytes?: number;
  /** Reconnect attempts after a lost connection; -1 forever (default). */
  readonly maxReconnectAttempts?: number;
  /** Milliseconds between reconnect attempts (default 250). */
  readonly reconnectTimeWait?: number;
  /** User and password, when the server asks for them. */
  readonly user?: string;
  readonly pass?: string;
  /**
   * The role to log in as (`driver`, `stage<r>`, `inspector`, `admin`), its password read
   * from the environment or the credentials file (credentials.ts). Ignored when `user` is
   * given; without a password for it, the connection has no user.
   */
  readonly role?: string;
  /** TLS: the CA certificate file that signed the server's (also TROUPE_NATS_CA). */
  readonly caFile?: string;
  /**
   * Large frames between neighbouring stages over a direct TCP link, negotiated over NATS
   * (directPath.ts): true, options, or false. Default: the TROUPE_DIRECT variable (`1` on,
   * `0` off), else on without TLS and off with it (a link is not encrypted). Only a stage's
   * bus (role `stage<r>`) uses it.
   */
  readonly direct?: boolean | DirectOptions;
}

/** A received message, as the rest of Troupe sees it. */
export interface BusMessage {
  readonly subject: string;
  readonly data: Uint8Array;
  /** A header's value; a plain function, which a reader may pass on detached. */
  readonly header: (name: string) => string | undefined;
  /** Answers a request (with headers: a frame's); false when the message was not one, or the connection has closed. */
  respond(data: Uint8Array, headers?: Record<string, string>): boolean;
  /** The data are a buffer of their own, which a handler may keep without copying (a frame from a direct link). */
  readonly owned?: boolean;
}

/** Connection events: `disconnect`, `reconnect`, `reconnecting`, `error`, `close` and others from nats.js. */
export interface BusStatus {
  readonly type: string;
  readonly detail: string;
}

/** Headers room left below max_payload when frames are chunked. */
const HEADER_ROOM = 4096;

/**
 * A NATS connection. Core NATS has no flow control, so `publish` counts the bytes sent
 * since the last server round trip and waits for a flush once `maxInFlightBytes` are out.
 *
 * @example
 * const bus = await Bus.connect({ servers: 'nats://127.0.0.1:4222', name: 'troupe-sched' });
 * await bus.publishFrame(stageSubject(job, 0, Phase.INPUT), frame);
 * await bus.close();
 */
export class Bus {
  private inFlight = 0;
  private flushing: Promise<void> | undefined;
  private readonly statusListeners = new Set<(s: BusStatus) => void>();
  private readonly subs = new Set<Subscription>();
  /** Subscriptions frames from a direct link are handed to (those without a queue group). */
  private readonly handlers = new Set<{ readonly subject: string; readonly handler: (m: BusMessage) => void }>();
  private direct: DirectPath | undefined;
  /** Bytes published and received, headers excluded. */
  bytesOut = 0;
  bytesIn = 0;
  /** Times, and milliseconds in all, `publish` waited for the server because `maxInFlightBytes` were out. */
  inFlightWaits = 0;
  inFlightWaitMs = 0;

  private constructor(
    private readonly nc: NatsConnection,
    private readonly maxInFlight: number,
    direct: DirectOptions | null,
    servers: readonly string[],
    role: string | undefined,
  ) {
    void this.watchStatus();
    if (direct) {
      this.direct = new DirectPath(
        {
          publish: (subject, data, headers) => this.publish(subject, data, headers),
          publishFrame: (subject, frame, extra) => this.publishFrameOverNats(subject, frame, extra),
          deliver: (subject, headers, data) => this.deliverDirect(subject, headers, data),
          status: (type, detail) => this.emit({ type, detail }),
        },
        servers,
        role,
        direct,
      );
    }
  }

  /** Connects, or throws a TransportError naming the servers. */
  static async connect(opts: BusOptions): Promise<Bus> {
    const servers = typeof opts.servers === 'string' ? [opts.servers] : [...opts.servers];
    const rolePass = opts.user === undefined && opts.role !== undefined ? credentialsFor(opts.role) : undefined;
    const auth = opts.user !== undefined ? { user: opts.user, pass: opts.pass ?? '' } : rolePass !== undefined ? { user: opts.role!, pass: rolePass } : {};
    const caFile = opts.caFile ?? process.env['TROUPE_NATS_CA'];
    // Replies come under the user's own prefix, the only one its permissions let it read.
    const user = opts.user ?? (rolePass !== undefined ? opts.role : undefined);
    const inbox = user !== undefined ? inboxPrefix(user) : undefined;
    try {
      const nc = await connect({
        servers,
        name: opts.name ?? 'troupe',
        maxReconnectAttempts: opts.maxReconnectAttempts ?? -1,
        reconnectTimeWait: opts.reconnectTimeWait ?? 250,
        ...auth,
        ...(inbox ? { inboxPrefix: inbox } : {}),
        ...(caFile ? { tls: { caFile } } : {}),
      });
      const tls = (caFile !== undefined && caFile !== '') || servers.some((s) => s.startsWith('tls://'));
      return new Bus(nc, opts.maxInFlightBytes ?? 32 * 1024 * 1024, directOptions(opts.direct, tls), servers, opts.user ?? opts.role);
    } catch (cause) {
      throw new TransportError(`cannot connect to NATS at ${servers.join(', ')}: ${messageOf(cause)}`, { cause });
    }
  }

  /** The server this connection is on now (`host:port`), one of a cluster's. */
  get server(): string {
    return this.nc.getServer();
  }

  /** The server's max_payload (headers included). */
  get maxPayload(): number {
    return this.nc.info?.max_payload ?? 1024 * 1024;
  }

  /** Largest frame chunk body this connection sends. */
  get maxChunkBytes(): number {
    return Math.max(4, this.maxPayload - HEADER_ROOM);
  }

  /** Publishes one message; waits first when too many bytes are unacknowledged. */
  async publish(subject: string, data: Uint8Array, headers?: Record<string, string>): Promise<void> {
    if (this.inFlight >= this.maxInFlight) {
      this.inFlightWaits++;
      const t0 = performance.now();
      await this.flushInFlight();
      this.inFlightWaitMs += performance.now() - t0;
    }
    try {
      this.nc.publish(subject, data, headers ? { headers: toNatsHeaders(headers) } : undefined);
    } catch (cause) {
      throw new TransportError(`publish to ${subject} failed: ${messageOf(cause)}`, { cause });
    }
    this.inFlight += data.byteLength;
    this.bytesOut += data.byteLength;
  }

  /**
   * Publishes a frame: over the direct link to the subject's stage when there is one and the
   * frame is large, else over NATS, chunked below max_payload. Resolves to the body bytes sent.
   * The frame's arrays must not change afterwards (they are sent as they are).
   */
  async publishFrame(subject: string, frame: Frame): Promise<number> {
    const direct = this.direct?.publish(subject, frame);
    if (direct) {
      const n = await direct;
      this.bytesOut += n;
      return n;
    }
    return this.publishFrameOverNats(subject, frame, {});
  }

  private async publishFrameOverNats(subject: string, frame: Frame, extra: Record<string, string>): Promise<number> {
    const msgs = encodeFrame(frame, this.maxChunkBytes);
    return this.publishMessages(subject, Object.keys(extra).length ? msgs.map((m) => ({ headers: { ...m.headers, ...extra }, data: m.data })) : msgs);
  }

  /** The direct path's counters (frames, bytes, links, refusals); null when it is off. */
  get directCounters(): Readonly<DirectCounters> | null {
    return this.direct?.counters ?? null;
  }

  /** Direct links up now, out (as a sender) and in; null when the path is off. */
  get directLinks(): { out: number; in: number } | null {
    return this.direct?.links ?? null;
  }

  /** Takes the direct links down (see DirectPath.dropLinks); no-op when the path is off. */
  dropDirectLinks(why = 'dropped'): void {
    this.direct?.dropLinks(why);
  }

  /** A frame that came over a direct link, handed to every subscription covering its subject. */
  private deliverDirect(subject: string, headers: Record<string, string>, data: Buffer): void {
    this.bytesIn += data.byteLength;
    // One handler may keep the buffer; with more than one, each gets it to copy.
    const targets = [...this.handlers].filter((h) => subjectMatches(h.subject, subject));
    const m: BusMessage = {
      subject,
      data,
      header: (name) => (headers[name] === '' ? undefined : headers[name]),
      respond: () => false,
      owned: targets.length === 1,
    };
    for (const h of targets) {
      try {
        h.handler(m);
      } catch (err) {
        this.emit({ type: 'error', detail: `subscription ${h.subject}: ${messageOf(err)}` });
      }
    }
  }

  /** Publishes already-encoded frame messages in order; resolves to the body bytes sent. */
  async publishMessages(subject: string, msgs: readonly WireMessage[]): Promise<number> {
    let n = 0;
    for (const m of msgs) {
      await this.publish(subject, m.data, m.headers);
      n += m.data.byteLength;
    }
    return n;
  }

  private async flushInFlight(): Promise<void> {
    if (!this.flushing) {
      this.inFlight = 0;
      this.flushing = this.nc.flush().finally(() => {
        this.flushing = undefined;
      });
    }
    try {
      await this.flushing;
    } catch (cause) {
      throw new TransportError(`flush failed: ${messageOf(cause)}`, { cause });
    }
  }

  /** Waits until the server has every message published so far. */
  async flush(): Promise<void> {
    this.inFlight = 0;
    await this.nc.flush();
  }

  /** Calls `handler` for every message on `subject` (wildcards allowed); errors in the handler are the handler's. */
  subscribe(subject: string, handler: (m: BusMessage) => void, queue?: string): { drain(): Promise<void> } {
    const sub = this.nc.subscribe(subject, {
      // A queue group: each message goes to one member (load balancing across workers).
      ...(queue ? { queue } : {}),
      callback: (err, msg) => {
        if (err) {
          this.emit({ type: 'error', detail: `subscription ${subject}: ${messageOf(err)}` });
          return;
        }
        if (msg.headers) {
          // The direct path's offers and answers are not frames (with the path off, they are dropped).
          const control = msg.headers.get(DIRECT_HEADER);
          if (control) return this.direct?.onControl(msg.subject, control, msg.data);
          // A frame sent again after its link failed, which the link had handed on already.
          const resent = msg.headers.get(RESENT_HEADER);
          if (resent && this.direct?.alreadyDelivered(resent)) return;
        }
        this.bytesIn += msg.data.byteLength;
        handler(wrap(msg));
      },
    });
    this.subs.add(sub);
    const entry = { subject, handler };
    if (!queue) this.handlers.add(entry);
    return {
      drain: async () => {
        this.subs.delete(sub);
        this.handlers.delete(entry);
        if (!sub.isClosed()) await sub.drain();
      },
    };
  }

  /** Subscribes to the frames on `subject`: parsed, judged, reassembled under a size limit, refusals counted (subscribeFrames.ts). */
  subscribeFrames(subject: string, o: SubscribeFramesOptions): FrameSubscription {
    return subscribeFrames(this, subject, o);
  }

  /** Sends a request and resolves to the reply's body, or throws a TransportError naming the subject. */
  async request(subject: string, data: Uint8Array, timeoutMs: number): Promise<Uint8Array> {
    return (await this.requestMessage(subject, data, timeoutMs)).data;
  }

  /** Sends a request (with headers: a frame's) and resolves to the reply, headers and all, or throws a TransportError naming the subject. */
  async requestMessage(subject: string, data: Uint8Array, timeoutMs: number, headers?: Record<string, string>): Promise<Pick<BusMessage, 'data' | 'header'>> {
    try {
      return wrap(await this.nc.request(subject, data, { timeout: timeoutMs, ...(headers ? { headers: toNatsHeaders(headers) } : {}) }));
    } catch (cause) {
      throw new TransportError(`request to ${subject} failed: ${messageOf(cause)}`, { cause });
    }
  }

  /** Registers a listener of connection events; returns its remover. */
  onStatus(listener: (s: BusStatus) => void): () => void {
    this.statusListeners.add(listener);
    return () => this.statusListeners.delete(listener);
  }

  private emit(s: BusStatus): void {
    for (const l of this.statusListeners) l(s);
  }

  private async watchStatus(): Promise<void> {
    for await (const s of this.nc.status()) {
      const detail = 'server' in s ? String(s.server) : 'error' in s ? messageOf(s.error) : '';
      this.emit({ type: s.type, detail });
    }
  }

  /** True once the connection is closed. */
  get isClosed(): boolean {
    return this.nc.isClosed();
  }

  /** Drains every subscription and the connection, then closes it (and the direct links). */
  async close(): Promise<void> {
    await this.direct?.close();
    this.handlers.clear();
    if (this.nc.isClosed()) return;
    try {
      await this.nc.drain();
    } catch {
      // Draining needs the server; when it is gone, close outright (or reconnects would keep the process alive).
      if (!this.nc.isClosed()) await this.nc.close();
    }
    this.subs.clear();
  }
}

/** The direct path's options from BusOptions.direct, TROUPE_DIRECT and whether the connection uses TLS; null: off. */
export function directOptions(given: boolean | DirectOptions | undefined, tls: boolean, env: NodeJS.ProcessEnv = process.env): DirectOptions | null {
  if (given === false) return null;
  if (given !== undefined && given !== true) return given;
  if (given === true) return {};
  const v = env['TROUPE_DIRECT'];
  if (v === '1' || v === 'true') return {};
  if (v === '0' || v === 'false') return null;
  // A link is plain TCP: where NATS is encrypted, frames stay on NATS unless asked otherwise.
  return tls ? null : {};
}

function toNatsHeaders(h: Record<string, string>) {
  const out = natsHeaders();
  for (const [k, v] of Object.entries(h)) out.set(k, v);
  return out;
}

function wrap(msg: Msg): BusMessage {
  return {
    subject: msg.subject,
    data: msg.data,
    header: (name) => {
      const v = msg.headers?.get(name);
      return v === undefined || v === '' ? undefined : v;
    },
    respond: (data, headers) => {
      try {
        return msg.respond(data, headers ? { headers: toNatsHeaders(headers) } : undefined);
      } catch {
        return false; // the connection closed while the request was handled: the requester times out
      }
    },
  };
}
