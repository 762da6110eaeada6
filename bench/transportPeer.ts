/**
 * The receiving process of bench/transport.ts's two-process table: stage 1's Bus
 * (direct path on or off, TROUPE_BENCH_DIRECT), frames of `troupe.<job>.stage.1.*` judged and
 * assembled as a stage does (parseHeader, Reassembler), and for each whole frame its arrival
 * time sent to the parent.
 */
import { Bus } from '../src/transport/bus.js';
import { parseHeader } from '../src/protocol/frame.js';
import { Reassembler } from '../src/protocol/reassembler.js';

const job = process.env['TROUPE_BENCH_JOB']!;
const bus = await Bus.connect({ role: 'stage1', servers: process.env['TROUPE_BENCH_NATS']!, name: `bench-peer-${job}`, direct: process.env['TROUPE_BENCH_DIRECT'] === '1' });
const re = new Reassembler(256, 4 * 1024 * 1024 * 1024);
bus.subscribe(`troupe.${job}.stage.1.*`, (m) => {
  const f = re.accept(parseHeader(m.header, 'FORWARD', 1 << 30), m.data, m.owned);
  if (f) process.send!({ mb: f.key.microbatch, step: f.key.step, at: performance.timeOrigin + performance.now(), bytes: f.tensors[0]!.data.byteLength });
});
await bus.flush();
process.send!('ready');
process.on('disconnect', () => void bus.close().then(() => process.exit(0)));
