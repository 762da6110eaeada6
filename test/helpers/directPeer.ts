/**
 * A receiving stage's bus in a process of its own, for the direct path's tests: logs in as
 * TROUPE_PEER_ROLE, takes frames of `troupe.<job>.stage.<rank>.*` as a stage does (parseHeader,
 * Reassembler) and tells the parent about each: its key, a checksum of its bytes and whether it
 * came over a direct link. Answers `counters` with the bus's direct counters.
 */
import { createHash } from 'node:crypto';
import { Bus } from '../../src/transport/bus.js';
import { parseHeader } from '../../src/protocol/frame.js';
import { Reassembler } from '../../src/protocol/reassembler.js';

const job = process.env['TROUPE_PEER_JOB']!;
const rank = Number(process.env['TROUPE_PEER_RANK'] ?? 1);
const direct = process.env['TROUPE_PEER_DIRECT'] === '0' ? false : (JSON.parse(process.env['TROUPE_PEER_DIRECT'] ?? 'true') as object | boolean);
const bus = await Bus.connect({
  role: process.env['TROUPE_PEER_ROLE'] ?? `stage${rank}`,
  servers: process.env['TROUPE_PEER_NATS']!,
  name: `direct-peer-${job}`,
  direct,
});
const re = new Reassembler();
bus.onStatus((s) => process.send!({ status: s.type, detail: s.detail }));
bus.subscribe(`troupe.${job}.stage.${rank}.*`, (m) => {
  try {
    const f = re.accept(parseHeader(m.header, m.subject.slice(m.subject.lastIndexOf('.') + 1), 1 << 30), m.data, m.owned);
    if (!f) return;
    const t = f.tensors[0]!;
    const sum = createHash('sha256')
      .update(new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength))
      .digest('hex');
    process.send!({ frame: { step: f.key.step, mb: f.key.microbatch, bytes: t.data.byteLength, sum, direct: m.owned === true } });
  } catch (err) {
    process.send!({ refused: String(err) });
  }
});
process.on('message', (m: unknown) => {
  if (m === 'counters') process.send!({ counters: bus.directCounters, bytesIn: bus.bytesIn });
  // Busy, as a stage computing: the event loop reads nothing for `block` ms.
  const block = (m as { block?: number }).block;
  if (block !== undefined) {
    process.send!({ blocking: true });
    const until = performance.now() + block;
    while (performance.now() < until);
    process.send!({ unblockedAt: performance.timeOrigin + performance.now() });
  }
});
await bus.flush();
process.send!('ready');
process.on('disconnect', () => void bus.close().then(() => process.exit(0)));
