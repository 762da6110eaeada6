/**
 * Node fires a timer longer than 2^31 - 1 ms after 1 ms. A pool deadline or heartbeat past it
 * would time every task out at once (or flood the caller with heartbeats): refused up front,
 * in the caller's options and in an offer a worker receives.
 */
import { describe, expect, it } from 'vitest';
import { ConfigError, FrameError } from '../../src/errors.js';
import { Pool } from '../../src/pool/pool.js';
import { decodeOffer, encodeWithValue, MAX_TIMER_MS } from '../../src/pool/poolProtocol.js';
import { Bus } from '../../src/transport/bus.js';
import { useNatsServer } from '../helpers/nats.js';

const nats = useNatsServer();
const DAY = 86_400_000;

describe('pool timers', () => {
  it("refuses options past Node's longest timer, naming the option; the longest that fits is taken", async () => {
    const bus = await Bus.connect({ role: 'pool', servers: nats.server.url });
    try {
      const make = (o: object) => () => new Pool<number, number>({ bus, name: 'timers', ...o });
      expect(make({ timeoutMs: 30 * DAY })).toThrow(ConfigError);
      expect(make({ timeoutMs: 30 * DAY })).toThrow(/timeoutMs must be at most 2147483647 ms/);
      expect(make({ silentMs: Number.MAX_SAFE_INTEGER })).toThrow(/silentMs must be at most/);
      expect(make({ waitForWorkerMs: 25 * DAY })).toThrow(/waitForWorkerMs must be at most/);
      expect(make({ heartbeatMs: 2 ** 31 })).toThrow(/heartbeatMs must be at most/);
      // Each fits, their sum (what the caller waits) does not.
      expect(make({ timeoutMs: MAX_TIMER_MS - 5000, silentMs: 10_000 })).toThrow(/timeoutMs \+ silentMs \(2147488647\) must be at most/);
      const pool = make({ timeoutMs: MAX_TIMER_MS - 10_000, silentMs: 10_000 })();
      await pool.close();
    } finally {
      await bus.close();
    }
  });

  it('a worker refuses an offer whose deadline or heartbeat is past the longest timer', () => {
    const offer = (timeoutMs: number, heartbeatMs: number) => decodeOffer(encodeWithValue({ caller: 'c', offer: 1, index: 0, timeoutMs, heartbeatMs }, '1'));
    expect(offer(60_000, 1000).offer.timeoutMs).toBe(60_000);
    expect(() => offer(MAX_TIMER_MS + 1, 1000)).toThrow(FrameError);
    expect(() => offer(60_000, MAX_TIMER_MS + 1)).toThrow(/heartbeatMs 10 to 2147483647, got 60000 and 2147483648/);
  });
});
