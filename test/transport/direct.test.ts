import { fork, type ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import net from 'node:net';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { afterEach, describe, expect, it } from 'vitest';
import { credentialsFor } from '../../src/transport/credentials.js';
import { Bus, type BusStatus } from '../../src/transport/bus.js';
import { encodeHello } from '../../src/transport/directHandshake.js';
import { directOptions } from '../../src/transport/bus.js';
import { answerSubject, subjectMatches } from '../../src/transport/directRoute.js';
import type { Frame } from '../../src/protocol/frame.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

interface Seen {
  readonly step: number;
  readonly mb: number;
  readonly bytes: number;
  readonly sum: string;
  readonly direct: boolean;
}

/** A receiving stage (rank 1 of job `job`) in a process of its own: test/helpers/directPeer.ts. */
interface Peer {
  readonly child: ChildProcess;
  readonly frames: Seen[];
  readonly statuses: string[];
  /** Resolves once `n` frames are in. */
  frameCount(n: number): Promise<void>;
  counters(): Promise<{ counters: Record<string, number> | null; bytesIn: number }>;
  /** Holds the peer's event loop for `ms` (as a stage computing); resolves once it has begun, and `done` once it is over (its Unix ms). */
  block(ms: number): Promise<{ done: Promise<number> }>;
}

const peers: ChildProcess[] = [];
const buses: Bus[] = [];
const spies: NatsConnection[] = [];

afterEach(async () => {
  await Promise.all(spies.splice(0).map((c) => c.close()));
  for (const c of peers.splice(0)) if (c.exitCode === null && c.signalCode === null) c.kill('SIGKILL');
  await Promise.all(buses.splice(0).map((b) => b.close()));
});

async function peer(job: string, direct: boolean | object = true): Promise<Peer> {
  const child = fork(new URL('../helpers/directPeer.ts', import.meta.url).pathname, [], {
    execArgv: ['--import', 'tsx'],
    env: { ...process.env, TROUPE_PEER_JOB: job, TROUPE_PEER_NATS: nats.server.url, TROUPE_PEER_DIRECT: direct === false ? '0' : JSON.stringify(direct) },
  });
  peers.push(child);
  const frames: Seen[] = [];
  const statuses: string[] = [];
  let waiters: { n: number; resolve: () => void }[] = [];
  let countersWaiter: ((v: { counters: Record<string, number> | null; bytesIn: number }) => void) | null = null;
  await new Promise<void>((resolve, reject) => {
    child.once('exit', (code, sig) => reject(new Error(`peer exited with ${String(code ?? sig)}`)));
    child.on('message', (m: unknown) => {
      if (m === 'ready') return resolve();
      const msg = m as { frame?: Seen; status?: string; detail?: string; counters?: Record<string, number> | null; bytesIn?: number; refused?: string };
      if (msg.frame) frames.push(msg.frame);
      if (msg.status) statuses.push(`${msg.status}: ${msg.detail ?? ''}`);
      if (msg.refused) statuses.push(`refused: ${msg.refused}`);
      if ('counters' in msg) countersWaiter?.({ counters: msg.counters ?? null, bytesIn: msg.bytesIn ?? 0 });
      waiters = waiters.filter((w) => (frames.length >= w.n ? (w.resolve(), false) : true));
    });
  });
  return {
    child,
    frames,
    statuses,
    frameCount: (n) => new Promise<void>((resolve) => (frames.length >= n ? resolve() : waiters.push({ n, resolve }))),
    counters: () =>
      new Promise((resolve) => {
        countersWaiter = resolve;
        child.send('counters');
      }),
    block: (ms) =>
      new Promise((resolve) => {
        const done = new Promise<number>((end) => {
          const on = (m: unknown) => {
            const msg = m as { blocking?: boolean; unblockedAt?: number };
            if (msg.blocking) resolve({ done });
            if (msg.unblockedAt !== undefined) {
              child.off('message', on);
              end(msg.unblockedAt);
            }
          };
          child.on('message', on);
        });
        child.send({ block: ms });
      }),
  };
}

/** Stage 0's bus: it sends activations to stage 1 and hears stage 1's answers on its own subjects. */
async function stage0(job: string, direct: boolean | object = true): Promise<{ bus: Bus; next(type: string): Promise<BusStatus> }> {
  const bus = await Bus.connect({ role: 'stage0', servers: nats.server.url, name: `stage0-${job}`, direct });
  buses.push(bus);
  const seen: BusStatus[] = [];
  const waiting: { type: string; resolve: (s: BusStatus) => void }[] = [];
  bus.onStatus((s) => {
    const w = waiting.findIndex((x) => x.type === s.type);
    if (w >= 0) waiting.splice(w, 1)[0]!.resolve(s);
    else seen.push(s);
  });
  bus.subscribe(`troupe.${job}.stage.0.*`, () => {});
  await bus.flush();
  return {
    bus,
    /** The next status event of `type` (or one seen already and not yet taken). */
    next: (type) => {
      const i = seen.findIndex((s) => s.type === type);
      if (i >= 0) return Promise.resolve(seen.splice(i, 1)[0]!);
      return new Promise((resolve) => waiting.push({ type, resolve }));
    },
  };
}

function activation(job: string, mb: number, elements: number, step = 1): Frame {
  const data = Float32Array.from({ length: elements }, (_, i) => Math.sin(i * 0.01 + mb) * 100);
  return {
    key: { job, step, microbatch: mb, phase: 'FORWARD' },
    from: 'stage.0',
    tensors: [{ name: 'a0', dtype: 'float32', shape: [elements / 64, 64], data }],
  };
}

function sumOf(f: Frame): string {
  const d = f.tensors[0]!.data;
  return createHash('sha256')
    .update(new Uint8Array(d.buffer, d.byteOffset, d.byteLength))
    .digest('hex');
}

const MB = 1024 * 1024;

describe('direct path: routes', () => {
  it('takes only activations and gradients between neighbours, answered on the reverse subject', () => {
    expect(answerSubject('troupe.j.stage.1.FORWARD')).toBe('troupe.j.stage.0.BACKWARD');
    expect(answerSubject('troupe.j-r1.stage.3.BACKWARD')).toBe('troupe.j-r1.stage.4.FORWARD');
    for (const s of [
      'troupe.j.stage.0.FORWARD',
      'troupe.j.stage.0.INPUT',
      'troupe.j.stage.1.UPDATE',
      'troupe.j.output',
      'troupe.j.state.1',
      'troupe.j.stage.1.FORWARD.x',
      'x.j.stage.1.FORWARD',
    ]) {
      expect(answerSubject(s), s).toBeNull();
    }
    expect(subjectMatches('troupe.j.stage.1.*', 'troupe.j.stage.1.FORWARD')).toBe(true);
    expect(subjectMatches('troupe.j.>', 'troupe.j.stage.1.FORWARD')).toBe(true);
    expect(subjectMatches('troupe.j.stage.1.*', 'troupe.j.stage.12.FORWARD')).toBe(false);
    expect(subjectMatches('troupe.j.stage.1.*', 'troupe.j.stage.1')).toBe(false);
  });

  it('is on by default, off with TLS unless asked for, and TROUPE_DIRECT decides when the options do not', () => {
    expect(directOptions(undefined, false, {})).toEqual({});
    expect(directOptions(undefined, true, {})).toBeNull();
    expect(directOptions(true, true, {})).toEqual({});
    expect(directOptions(false, false, { TROUPE_DIRECT: '1' })).toBeNull();
    expect(directOptions(undefined, false, { TROUPE_DIRECT: '0' })).toBeNull();
    expect(directOptions(undefined, true, { TROUPE_DIRECT: '1' })).toEqual({});
    expect(directOptions({ minBytes: 1 }, false, { TROUPE_DIRECT: '0' })).toEqual({ minBytes: 1 });
  });
});

describe('direct path between two processes', () => {
  it('carries large frames over a link byte for byte once it is up; small frames and the first stay on NATS; bytes are counted', async () => {
    const job = 'direct-a';
    const rx = await peer(job);
    const tx = await stage0(job);
    const sent: Frame[] = [];
    const send = async (f: Frame) => {
      sent.push(f);
      await tx.bus.publishFrame(`troupe.${job}.stage.1.FORWARD`, f);
    };
    // The first large frame goes over NATS and offers a link.
    await send(activation(job, 0, MB / 4));
    await tx.next('direct-up');
    for (let mb = 1; mb <= 4; mb++) await send(activation(job, mb, MB / 4));
    await send(activation(job, 5, 256)); // 1 KB: below minBytes
    await rx.frameCount(6);
    expect(rx.frames.map((f) => [f.mb, f.sum])).toEqual(sent.map((f) => [f.key.microbatch, sumOf(f)]));
    expect(rx.frames.map((f) => f.direct)).toEqual([false, true, true, true, true, false]);
    expect(tx.bus.directLinks).toEqual({ out: 1, in: 0 });
    const c = tx.bus.directCounters!;
    expect(c.framesOut).toBe(4);
    expect(c.bytesOut).toBe(4 * MB);
    // The bus's byte counters (the stage's stats, the inspector's) count both paths.
    const bodies = sent.reduce((n, f) => n + f.tensors[0]!.data.byteLength, 0);
    expect(tx.bus.bytesOut).toBeGreaterThanOrEqual(bodies);
    expect(tx.bus.bytesOut).toBeLessThan(bodies + 4096); // and the offer
    const got = await rx.counters();
    expect(got.counters!['framesIn']).toBe(4);
    expect(got.bytesIn).toBeGreaterThanOrEqual(bodies);
  });

  it('refuses forged connections (junk, an unknown link, a wrong proof) and links to the real neighbour', async () => {
    const job = 'direct-forged';
    const tx = await stage0(job, { handshakeMs: 20_000 });
    const subject = `troupe.${job}.stage.1.FORWARD`;
    // A plain NATS client reads everything, the offer included (as an inspector can): it knows the link id, not the key.
    const spy = await connect({ servers: nats.server.url, user: 'admin', pass: credentialsFor('admin')! });
    spies.push(spy);
    const offer = new Promise<{ host: string; port: number; link: string }>((resolve) =>
      spy.subscribe(subject, {
        callback: (_, m) => {
          if (m.headers?.get('Troupe-Direct') === 'offer') resolve(JSON.parse(Buffer.from(m.data).toString()) as { host: string; port: number; link: string });
        },
      }),
    );
    await spy.flush();
    // No receiver yet: the first large frame offers a link nobody answers.
    await tx.bus.publishFrame(subject, activation(job, 0, MB / 4));
    const o = await offer;
    /** Connects, writes `hello`, answers the sender's 64 bytes with `proof` if given; resolves to every byte it got once closed. */
    const forge = (hello: Buffer, proof?: Buffer) =>
      new Promise<Buffer>((resolve) => {
        const s = net.connect({ host: o.host, port: o.port });
        let got = Buffer.alloc(0);
        s.on('data', (b) => {
          got = Buffer.concat([got, b]);
          if (proof && got.length === 64) s.write(proof);
        });
        s.on('error', () => {});
        s.on('close', () => resolve(got));
        s.on('connect', () => s.write(hello));
      });
    expect((await forge(Buffer.alloc(53, 0x41))).length).toBe(0);
    expect((await forge(encodeHello(Buffer.alloc(16, 7), Buffer.alloc(32, 1)))).length).toBe(0);
    // The right link id, before the real receiver has answered: the sender waits for the answer, then
    // sends its nonce and proof, and refuses the forger's wrong proof.
    const wrong = forge(encodeHello(Buffer.from(o.link, 'hex'), Buffer.alloc(32, 2)), Buffer.alloc(32, 3));
    const rx = await peer(job);
    const frames = [1, 2, 3].map((mb) => activation(job, mb, MB / 4));
    await tx.bus.publishFrame(subject, frames[0]!); // the offer goes out again; the receiver answers
    await tx.next('direct-up');
    // The forger got the sender's nonce and proof, then nothing: no frame byte reached it.
    expect((await wrong).length).toBe(64);
    expect(tx.bus.directCounters!.refused).toBe(3);
    for (const f of frames.slice(1)) await tx.bus.publishFrame(subject, f);
    await rx.frameCount(3);
    expect(rx.frames.map((f) => [f.mb, f.sum, f.direct])).toEqual([
      [1, sumOf(frames[0]!), false],
      [2, sumOf(frames[1]!), true],
      [3, sumOf(frames[2]!), true],
    ]);
  });

  it("a bus that reads a stage's subjects without being that stage (an admin's) never answers, so it cannot take the link", async () => {
    const job = 'direct-reader';
    // The reader subscribes first: it hears the offer as early as anyone.
    const reader = await Bus.connect({ role: 'admin', servers: nats.server.url, direct: true });
    buses.push(reader);
    let read = 0;
    reader.subscribe(`troupe.${job}.stage.1.*`, () => read++);
    await reader.flush();
    const rx = await peer(job);
    const tx = await stage0(job);
    const subject = `troupe.${job}.stage.1.FORWARD`;
    const frames = [0, 1, 2].map((mb) => activation(job, mb, MB / 4));
    await tx.bus.publishFrame(subject, frames[0]!);
    await tx.next('direct-up');
    for (const f of frames.slice(1)) await tx.bus.publishFrame(subject, f);
    await rx.frameCount(3);
    expect(rx.frames.map((f) => [f.mb, f.sum, f.direct])).toEqual([
      [0, sumOf(frames[0]!), false],
      [1, sumOf(frames[1]!), true],
      [2, sumOf(frames[2]!), true],
    ]);
    await reader.flush();
    expect(reader.directCounters!.linksIn).toBe(0);
    expect(reader.directCounters!.ignored).toBeGreaterThanOrEqual(1); // the offer
    expect(read).toBe(2); // the NATS chunks of the first frame; the rest went over the link
  });

  it('falls back to NATS when the link cannot be made (an address the receiver cannot reach)', async () => {
    const job = 'direct-unreachable';
    const rx = await peer(job, { handshakeMs: 500 });
    // Listening on loopback, but telling the neighbour an address nothing answers on (TEST-NET-1).
    const tx = await stage0(job, { advertise: '192.0.2.1', handshakeMs: 500 });
    const frames = [0, 1, 2].map((mb) => activation(job, mb, MB / 4));
    await tx.bus.publishFrame(`troupe.${job}.stage.1.FORWARD`, frames[0]!);
    const err = await tx.next('direct-error');
    expect(err.detail).toMatch(/no direct link for troupe\.direct-unreachable\.stage\.1\.FORWARD .*go over NATS/);
    for (const f of frames.slice(1)) await tx.bus.publishFrame(`troupe.${job}.stage.1.FORWARD`, f);
    await rx.frameCount(3);
    expect(rx.frames.map((f) => [f.mb, f.sum, f.direct])).toEqual(frames.map((f) => [f.key.microbatch, sumOf(f), false]));
  });

  it('a receiver busy computing does not hold the sender up: frames are queued, as NATS would take them', async () => {
    const job = 'direct-busy';
    const rx = await peer(job);
    const tx = await stage0(job);
    const subject = `troupe.${job}.stage.1.FORWARD`;
    await tx.bus.publishFrame(subject, activation(job, 0, MB / 4));
    await tx.next('direct-up');
    // 32 MB, more than the sockets' buffers take while nobody reads.
    const frames = Array.from({ length: 8 }, (_, i) => activation(job, i + 1, MB));
    const { done } = await rx.block(1_500);
    for (const f of frames) await tx.bus.publishFrame(subject, f);
    const published = performance.timeOrigin + performance.now();
    expect(published).toBeLessThan(await done);
    await rx.frameCount(9);
    expect(rx.frames.slice(1).map((f) => [f.mb, f.sum, f.direct])).toEqual(frames.map((f) => [f.key.microbatch, sumOf(f), true]));
  });

  it('a killed receiver: the sender goes on over NATS and links to the stage that takes its place', async () => {
    const job = 'direct-killed';
    const first = await peer(job);
    const tx = await stage0(job);
    const subject = `troupe.${job}.stage.1.FORWARD`;
    await tx.bus.publishFrame(subject, activation(job, 0, MB / 4));
    await tx.next('direct-up');
    await tx.bus.publishFrame(subject, activation(job, 1, MB / 4));
    await first.frameCount(2);
    expect(first.frames[1]!.direct).toBe(true);
    first.child.kill('SIGKILL');
    const down = await tx.next('direct-down');
    expect(down.detail).toMatch(/direct link for troupe\.direct-killed\.stage\.1\.FORWARD is down/);
    // Publishing to nobody neither hangs nor throws (NATS drops it, as it drops any frame without a
    // subscriber), and offers a new link, to nobody yet.
    await tx.bus.publishFrame(subject, activation(job, 2, MB / 4, 2));
    expect(tx.bus.directLinks).toEqual({ out: 0, in: 0 });
    // Its successor subscribes; the offer goes out again with the next large frame, and it answers.
    const second = await peer(job);
    const frames = [3, 4, 5].map((mb) => activation(job, mb, MB / 4, 3));
    await tx.bus.publishFrame(subject, frames[0]!);
    await tx.next('direct-up');
    for (const f of frames.slice(1)) await tx.bus.publishFrame(subject, f);
    await second.frameCount(3);
    expect(second.frames.map((f) => [f.step, f.mb, f.sum])).toEqual(frames.map((f) => [3, f.key.microbatch, sumOf(f)]));
    expect(second.frames.map((f) => f.direct)).toEqual([false, true, true]);
  });
});

describe('direct path: a link that fails', () => {
  it('sends its unacknowledged frames again over NATS; the receiver drops those it had handed on, so each arrives once', async () => {
    const job = 'direct-resend';
    const tx = await stage0(job);
    const rx = await Bus.connect({ role: 'stage1', servers: nats.server.url, direct: true });
    buses.push(rx);
    const subject = `troupe.${job}.stage.1.FORWARD`;
    const got: { mb: number; sum: string; direct: boolean }[] = [];
    let dropAt = -1;
    const { parseHeader } = await import('../../src/protocol/frame.js');
    const { Reassembler } = await import('../../src/protocol/reassembler.js');
    const re = new Reassembler();
    let tick = () => {};
    rx.subscribe(`troupe.${job}.stage.1.*`, (m) => {
      const f = re.accept(parseHeader(m.header, 'FORWARD', 1 << 30), m.data, m.owned);
      if (!f) return;
      got.push({ mb: f.key.microbatch, sum: sumOf(f), direct: m.owned === true });
      // The link goes down right after handing this frame on, before its acknowledgement.
      if (f.key.microbatch === dropAt) rx.dropDirectLinks('test: the receiver lost its link');
      tick();
    });
    await rx.flush();
    const frames = Array.from({ length: 8 }, (_, mb) => activation(job, mb, MB / 4));
    await tx.bus.publishFrame(subject, frames[0]!);
    await tx.next('direct-up');
    dropAt = 3;
    for (const f of frames.slice(1)) await tx.bus.publishFrame(subject, f);
    await new Promise<void>((resolve) => {
      tick = () => got.length >= 8 && resolve();
      tick();
    });
    await tx.bus.flush();
    await rx.flush();
    // Every frame once, intact (the paths may interleave their order).
    expect(got).toHaveLength(8);
    expect([...got].sort((a, b) => a.mb - b.mb).map((g) => [g.mb, g.sum])).toEqual(frames.map((f) => [f.key.microbatch, sumOf(f)]));
    expect(got.filter((g) => g.mb >= 1 && g.mb <= 3).every((g) => g.direct)).toBe(true);
    expect(tx.bus.directCounters!.resent).toBeGreaterThanOrEqual(1);
    expect(rx.directCounters!.duplicatesDropped).toBeGreaterThanOrEqual(1);
  });
});
