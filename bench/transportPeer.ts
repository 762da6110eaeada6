/**
 * The receiving process of bench/transport.ts's two-process table. Either stage 1's Bus
 * (direct path on or off, TROUPE_BENCH_DIRECT), frames of `troupe.<job>.stage.1.*` judged and
 * assembled as a stage does (parseHeader, Reassembler); or, with TROUPE_BENCH_TCP=<port>, a
 * plain TCP socket to the parent reading length-prefixed blobs straight into buffers of their
 * own (the ceiling). For each whole frame it sends the parent its arrival time.
 */
import net from 'node:net';
import { Bus } from '../src/transport/bus.js';
import { parseHeader } from '../src/protocol/frame.js';
import { Reassembler } from '../src/protocol/reassembler.js';

const arrived = (step: number, mb: number) => process.send!({ mb, step, at: performance.timeOrigin + performance.now() });
const tcp = process.env['TROUPE_BENCH_TCP'];
if (tcp) {
  // [u32 step][u32 mb][u32 bytes] then the bytes.
  const head = Buffer.alloc(12);
  let got = 0;
  let body: Buffer | null = null;
  const sock = net.connect({
    host: '127.0.0.1',
    port: Number(tcp),
    onread: {
      buffer: () => (body ? body.subarray(got) : head.subarray(got)),
      callback: (n: number) => {
        got += n;
        if (!body && got === 12) {
          body = Buffer.allocUnsafe(head.readUInt32LE(8));
          got = 0;
        } else if (body && got === body.length) {
          arrived(head.readUInt32LE(0), head.readUInt32LE(4));
          body = null;
          got = 0;
        }
        return true;
      },
    },
  } as net.NetConnectOpts);
  sock.setNoDelay(true);
  sock.on('connect', () => process.send!('ready'));
  process.on('disconnect', () => {
    sock.destroy();
    process.exit(0);
  });
} else {
  const job = process.env['TROUPE_BENCH_JOB']!;
  const bus = await Bus.connect({
    role: 'stage1',
    servers: process.env['TROUPE_BENCH_NATS']!,
    name: `bench-peer-${job}`,
    direct: process.env['TROUPE_BENCH_DIRECT'] === '1',
  });
  const re = new Reassembler(256, 4 * 1024 * 1024 * 1024);
  bus.subscribe(`troupe.${job}.stage.1.*`, (m) => {
    const f = re.accept(parseHeader(m.header, 'FORWARD', 1 << 30), m.data, m.owned);
    if (f) arrived(f.key.step, f.key.microbatch);
  });
  await bus.flush();
  process.send!('ready');
  process.on('disconnect', () => void bus.close().then(() => process.exit(0)));
}
