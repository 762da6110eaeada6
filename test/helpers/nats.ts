/** A real nats-server from the project's nats.conf on a free port, for one test file. */
import { afterAll, beforeAll } from 'vitest';
import { startNatsServer, type NatsServer } from '../../src/fleet/natsServer.js';

/** Starts a server before the file's tests and stops it after; read `.server` inside tests. */
export function useNatsServer(): { server: NatsServer } {
  const holder = {} as { server: NatsServer };
  beforeAll(async () => {
    holder.server = await startNatsServer();
  });
  afterAll(async () => {
    await holder.server?.stop();
  });
  return holder;
}
