import { describe, expect, it } from 'vitest';
import { TransportError } from '../../src/index.js';
import { decodeSingle, encodeFrame, parseHeader, Reassembler } from '../../src/protocol/index.js';
import { Bus } from '../../src/transport/index.js';
import { startNatsServer } from '../../src/fleet/natsServer.js';
import type { Frame } from '../../src/protocol/frame.js';
import { countingLock } from '../helpers/countingLock.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();

function bigFrame(elements: number): Frame {
  const data = new Float32Array(elements);
  for (let i = 0; i < elements; i++) data[i] = Math.sin(i) * 1000;
  return {
    key: { job: 'bus', step: 1, microbatch: 0, phase: 'FORWARD' },
    from: 'test',
    tensors: [{ name: 'a0', dtype: 'float32', shape: [elements / 4, 4], data }],
  };
}

describe('Bus on a real nats-server', () => {
  it('carries a 16 MB tensor chunked below max_payload and reassembles it byte for byte', async () => {
    const a = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const b = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const frame = bigFrame(4 * 1024 * 1024);
    const r = new Reassembler();
    let chunks = 0;
    let maxBody = 0;
    const got = new Promise<Frame>((resolve, reject) => {
      b.subscribe('bus.frames', (m) => {
        try {
          chunks++;
          maxBody = Math.max(maxBody, m.data.byteLength);
          const f = r.accept(parseHeader(m.header, 'FORWARD', 1 << 30), m.data);
          if (f) resolve(f);
        } catch (e) {
          reject(e);
        }
      });
    });
    try {
      await b.flush();
      const sent = await a.publishFrame('bus.frames', frame);
      expect(sent).toBe(16 * 1024 * 1024);
      const f = await got;
      expect(a.maxPayload).toBe(1024 * 1024); // nats.conf's max_payload
      expect(chunks).toBe(Math.ceil(sent / a.maxChunkBytes));
      expect(maxBody).toBeLessThanOrEqual(a.maxPayload);
      expect(Buffer.from((f.tensors[0]!.data as Float32Array).buffer).equals(Buffer.from(frame.tensors[0]!.data.buffer))).toBe(true);
      expect(f.tensors[0]!.shape).toEqual([1024 * 1024, 4]);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('bounds the bytes in flight: publish waits for the server once the bound is out', async () => {
    const a = await Bus.connect({ role: 'admin', servers: nats.server.url, maxInFlightBytes: 256 * 1024 });
    const b = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const n = 64;
    const lock = countingLock(n);
    b.subscribe('bus.flow', () => lock.count());
    await b.flush();
    try {
      const body = new Uint8Array(64 * 1024);
      for (let i = 0; i < n; i++) await a.publish('bus.flow', body);
      await lock.wait(10_000);
      // 64 x 64 KiB through a 256 KiB bound: a wait at least every 4 messages.
      expect(a.inFlightWaits).toBeGreaterThanOrEqual(n / 4 - 1);
      expect(a.bytesOut).toBe(n * body.byteLength);
    } finally {
      await a.close();
      await b.close();
    }
  });

  it('reports disconnect and reconnect when the server restarts, then works again', async () => {
    const first = await startNatsServer();
    const bus = await Bus.connect({ role: 'admin', servers: first.url, reconnectTimeWait: 100 });
    const seen: string[] = [];
    const reconnected = new Promise<void>((resolve) =>
      bus.onStatus((s) => {
        seen.push(s.type);
        if (s.type === 'reconnect') resolve();
      }),
    );
    let second: Awaited<ReturnType<typeof startNatsServer>> | undefined;
    try {
      await first.stop();
      second = await startNatsServer({ port: first.port });
      await reconnected;
      expect(seen).toContain('disconnect');
      const echo = new Promise<string>((resolve) => bus.subscribe('bus.echo', (m) => resolve(new TextDecoder().decode(m.data))));
      await bus.publish('bus.echo', new TextEncoder().encode('back'));
      expect(await echo).toBe('back');
    } finally {
      await bus.close();
      await second?.stop();
    }
  });

  it('names the servers when it cannot connect', async () => {
    const s = await startNatsServer();
    const url = s.url;
    await s.stop();
    await expect(Bus.connect({ role: 'admin', servers: url, maxReconnectAttempts: 0 })).rejects.toThrow(TransportError);
    await expect(Bus.connect({ role: 'admin', servers: url, maxReconnectAttempts: 0 })).rejects.toThrow(url.replace('nats://', ''));
  });

  it('one-message frames decode the same through the server', async () => {
    const a = await Bus.connect({ role: 'admin', servers: nats.server.url });
    const frame: Frame = {
      key: { job: 'bus', step: 2, microbatch: 1, phase: 'INPUT' },
      from: 'test',
      tensors: [
        { name: 'x0', dtype: 'int32', shape: [3], data: Int32Array.from([1, -2, 3]) },
        { name: 'y0', dtype: 'bool', shape: [3], data: Uint8Array.from([1, 0, 1]) },
      ],
    };
    const got = new Promise<Frame>((resolve) => a.subscribe('bus.one', (m) => resolve(decodeSingle(parseHeader(m.header, 'INPUT', 1 << 20), m.data))));
    try {
      await a.flush();
      await a.publishMessages('bus.one', encodeFrame(frame, a.maxChunkBytes));
      const f = await got;
      expect(Array.from(f.tensors[0]!.data)).toEqual([1, -2, 3]);
      expect(Array.from(f.tensors[1]!.data)).toEqual([1, 0, 1]);
      expect(f.tensors[1]!.dtype).toBe('bool');
    } finally {
      await a.close();
    }
  });
});
