/**
 * One direct link between neighbouring stages: a TCP connection on which the sender writes
 * whole frames and the receiver acknowledges each one it has handed on. After the handshake
 * (directHandshake.ts) every frame is one message:
 *
 * ```
 * sender -> receiver   header length u32 | data length u32 | sequence u32 (little-endian)
 *                      header (the frame's Troupe-* headers as JSON) | data (the frame's body)
 * receiver -> sender   sequence u32, once the frame was handed to the subscriptions
 * ```
 *
 * The receiver connects, so it reads with `onread`: the kernel copies a frame's bytes straight
 * into the buffer that becomes its data, with no copy in between.
 */
import net from 'node:net';
import { TransportError, messageOf } from '../errors.js';
import type { Frame, WireMessage } from '../protocol/frame.js';
import { MAC_BYTES, NONCE_BYTES, encodeHello, nonce, proof, sameProof } from './directHandshake.js';

const PREFIX = 12;
/** Largest header block a link takes (a frame's headers are far smaller). */
const MAX_HEADER = 64 * 1024;

/** A frame sent on a link and not yet acknowledged: what is resent over NATS if the link fails. */
export interface Unacked {
  readonly seq: number;
  readonly subject: string;
  readonly frame: Frame;
}

/** Buffers a socket's data for a handshake: read exactly n bytes, then hand over what is left. */
export class SocketReader {
  private buf: Buffer = Buffer.alloc(0);
  private want: { n: number; resolve: (b: Buffer) => void; reject: (e: Error) => void } | null = null;
  private ended: Error | null = null;
  private readonly onData = (b: Buffer) => {
    this.buf = this.buf.length ? Buffer.concat([this.buf, b]) : b;
    this.serve();
  };
  private readonly onEnd = () => this.end(new TransportError('direct link: the connection closed during the handshake'));

  constructor(private readonly socket: net.Socket) {
    socket.on('data', this.onData);
    socket.on('close', this.onEnd);
  }

  read(n: number): Promise<Buffer> {
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => {
      this.want = { n, resolve, reject };
      this.serve();
    });
  }

  private serve(): void {
    if (!this.want || this.buf.length < this.want.n) return;
    const { n, resolve } = this.want;
    this.want = null;
    const out = this.buf.subarray(0, n);
    this.buf = this.buf.subarray(n);
    resolve(out);
  }

  private end(e: Error): void {
    this.ended = e;
    this.want?.reject(e);
    this.want = null;
  }

  /** Stops reading for the handshake; returns the bytes read past it. */
  detach(): Buffer {
    this.socket.off('data', this.onData);
    this.socket.off('close', this.onEnd);
    return this.buf;
  }
}

/** Bytes a link may queue in the process (a receiver busy computing reads nothing) before `send` waits, as NATS's max_pending. */
const MAX_QUEUED = 128 * 1024 * 1024;

/**
 * The sending end, on the connection the sender accepted. `send` queues a frame and resolves
 * true at once, as a NATS publish does: the bytes leave while the event loop is free, and a
 * receiver busy computing does not hold the sender up. Past MAX_QUEUED bytes it resolves once
 * this frame is written. It resolves false when the link failed first. A frame's arrays are
 * kept until the receiver acknowledges it: a failed link hands its unacknowledged frames to
 * `onDown` once, to go over NATS.
 */
export class LinkSender {
  private nextSeq = 1;
  private readonly unacked = new Map<number, Unacked>();
  private readonly waiting = new Set<(ok: boolean) => void>();
  private acks: Buffer = Buffer.alloc(0);
  private down = false;
  /** When the link came up (performance.now()). */
  readonly since = performance.now();

  constructor(
    private readonly socket: net.Socket,
    readonly id: string,
    leftover: Buffer,
    private readonly onDown: (unacked: Unacked[], why: string) => void,
  ) {
    socket.on('data', (b: Buffer) => this.onAcks(b));
    socket.on('error', (e) => this.fail(`socket error: ${e.message}`));
    socket.on('close', () => this.fail('the connection closed'));
    socket.setTimeout(0);
    if (leftover.length) this.onAcks(leftover);
  }

  get isDown(): boolean {
    return this.down;
  }

  /** Frames written but not yet acknowledged by the receiver. */
  get pending(): number {
    return this.unacked.size;
  }

  send(subject: string, msg: WireMessage, frame: Frame): Promise<boolean> {
    if (this.down) return Promise.resolve(false);
    const seq = this.nextSeq++;
    const header = Buffer.from(JSON.stringify(msg.headers));
    const prefix = Buffer.allocUnsafe(PREFIX);
    prefix.writeUInt32LE(header.length, 0);
    prefix.writeUInt32LE(msg.data.byteLength, 4);
    prefix.writeUInt32LE(seq, 8);
    this.unacked.set(seq, { seq, subject, frame });
    return new Promise<boolean>((resolve) => {
      const settle = (ok: boolean) => {
        if (!this.waiting.delete(settle)) return;
        resolve(ok);
      };
      this.waiting.add(settle);
      this.socket.cork();
      this.socket.write(prefix);
      this.socket.write(header);
      this.socket.write(msg.data, (err) => {
        if (err) this.fail(`write failed: ${err.message}`);
        else settle(true);
      });
      this.socket.uncork();
      if (this.socket.writableLength <= MAX_QUEUED) settle(true);
    });
  }

  private onAcks(b: Buffer): void {
    this.acks = this.acks.length ? Buffer.concat([this.acks, b]) : b;
    let off = 0;
    for (; off + 4 <= this.acks.length; off += 4) this.unacked.delete(this.acks.readUInt32LE(off));
    this.acks = this.acks.subarray(off);
  }

  /** Takes the link down (once): the unacknowledged frames go to `onDown`, then every pending send resolves false. */
  fail(why: string): void {
    if (this.down) return;
    this.down = true;
    this.socket.destroy();
    const left = [...this.unacked.values()].sort((a, b) => a.seq - b.seq);
    this.unacked.clear();
    this.onDown(left, why);
    for (const settle of [...this.waiting]) settle(false);
  }
}

/** What a receiving link needs. */
export interface ReceiverOptions {
  readonly host: string;
  readonly port: number;
  readonly id: Buffer;
  readonly key: Buffer;
  /** Largest frame body taken; a larger one takes the link down. */
  readonly maxBytes: number;
  readonly handshakeMs: number;
  /** A whole frame message arrived: its headers and its data (a buffer of its own). */
  readonly deliver: (headers: Record<string, string>, data: Buffer) => void;
  /** The link came up (the sender proved the key). */
  readonly onUp: () => void;
  /** The link is down, with why (once). */
  readonly onDown: (why: string) => void;
}

/**
 * The receiving end: connects to the sender, proves the key, then reads frames straight into
 * buffers of their own and acknowledges each after `deliver`.
 */
export class LinkReceiver {
  private state: 'handshake' | 'prefix' | 'header' | 'data' = 'handshake';
  private readonly scratch = Buffer.allocUnsafe(64 * 1024);
  /** Bytes of the part being assembled (handshake, prefix, header). */
  private part: Buffer = Buffer.alloc(0);
  private need = NONCE_BYTES + MAC_BYTES;
  private headerLen = 0;
  /** The announced body length of the frame being read. */
  private dataLen = 0;
  private seq = 0;
  private data: Buffer = Buffer.alloc(0);
  private got = 0;
  private headers: Record<string, string> = {};
  private readonly nonceR = nonce();
  private readonly socket: net.Socket;
  private down = false;
  private up = false;
  /** The last sequence number handed on (frames come in order). */
  delivered = 0;

  constructor(private readonly o: ReceiverOptions) {
    this.socket = net.connect({
      host: o.host,
      port: o.port,
      onread: {
        // Into the frame's own buffer while its data come, else into the scratch buffer.
        buffer: () => (this.state === 'data' ? this.data.subarray(this.got) : this.scratch),
        callback: (n: number, buf: Uint8Array) => {
          this.onRead(n, buf);
          return true;
        },
      },
    } as net.NetConnectOpts);
    this.socket.setNoDelay(true);
    this.socket.setTimeout(o.handshakeMs, () => this.fail('the handshake took too long'));
    this.socket.on('connect', () => this.socket.write(encodeHello(o.id, this.nonceR)));
    this.socket.on('error', (e) => this.fail(`socket error: ${e.message}`));
    this.socket.on('close', () => this.fail('the connection closed'));
  }

  get isUp(): boolean {
    return this.up && !this.down;
  }

  close(why = 'closed'): void {
    this.fail(why);
  }

  private fail(why: string): void {
    if (this.down) return;
    this.down = true;
    this.socket.destroy();
    this.o.onDown(why);
  }

  private onRead(n: number, buf: Uint8Array): void {
    if (this.down) return;
    try {
      if (this.state === 'data' && buf.buffer === this.data.buffer && buf.byteOffset === this.data.byteOffset + this.got) {
        this.got += n;
        if (this.got === this.data.length) this.complete();
        return;
      }
      this.consume(Buffer.from(buf.buffer, buf.byteOffset, n));
    } catch (err) {
      this.fail(messageOf(err));
    }
  }

  /** Bytes read into the scratch buffer: the handshake, prefixes, headers and the start of data. */
  private consume(b: Buffer): void {
    let off = 0;
    while (off < b.length) {
      if (this.state === 'data') {
        const k = Math.min(b.length - off, this.data.length - this.got);
        b.copy(this.data, this.got, off, off + k);
        this.got += k;
        off += k;
        if (this.got === this.data.length) this.complete();
        continue;
      }
      const k = Math.min(b.length - off, this.need - this.part.length);
      this.part = Buffer.concat([this.part, b.subarray(off, off + k)]);
      off += k;
      if (this.part.length < this.need) continue;
      const part = this.part;
      this.part = Buffer.alloc(0);
      this.onPart(part);
    }
  }

  private onPart(part: Buffer): void {
    if (this.state === 'handshake') {
      const nonceS = part.subarray(0, NONCE_BYTES);
      if (!sameProof(part.subarray(NONCE_BYTES), proof(this.o.key, 'sender', this.o.id, this.nonceR, nonceS))) {
        throw new TransportError('direct link: the sender did not prove the link key');
      }
      this.socket.write(proof(this.o.key, 'receiver', this.o.id, nonceS, this.nonceR));
      this.socket.setTimeout(0);
      this.up = true;
      this.o.onUp();
      this.toPrefix();
    } else if (this.state === 'prefix') {
      this.headerLen = part.readUInt32LE(0);
      const dataLen = part.readUInt32LE(4);
      this.seq = part.readUInt32LE(8);
      if (this.headerLen < 2 || this.headerLen > MAX_HEADER) throw new TransportError(`direct link: a header of ${this.headerLen} bytes`);
      if (dataLen > this.o.maxBytes) throw new TransportError(`direct link: a frame of ${dataLen} bytes is over the ${this.o.maxBytes}-byte limit`);
      this.dataLen = dataLen;
      this.state = 'header';
      this.need = this.headerLen;
    } else {
      const h: unknown = JSON.parse(part.toString('utf8'));
      if (!h || typeof h !== 'object' || Array.isArray(h) || !Object.values(h).every((v) => typeof v === 'string')) {
        throw new TransportError('direct link: a frame header that is not an object of strings');
      }
      this.headers = h as Record<string, string>;
      // The body's buffer once its headers are whole and read (not on the prefix's word alone).
      this.data = Buffer.allocUnsafe(this.dataLen);
      this.got = 0;
      this.state = 'data';
      if (this.data.length === 0) this.complete();
    }
  }

  private complete(): void {
    const { headers, data, seq } = this;
    this.toPrefix();
    this.data = Buffer.alloc(0);
    this.delivered = seq;
    this.o.deliver(headers, data);
    const ack = Buffer.allocUnsafe(4);
    ack.writeUInt32LE(seq, 0);
    this.socket.write(ack);
  }

  private toPrefix(): void {
    this.state = 'prefix';
    this.need = PREFIX;
  }
}
