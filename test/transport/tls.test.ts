/**
 * TLS by configuration: nats-tls.conf (nats.conf plus a tls block whose files come from the
 * environment). A client naming the CA connects; one that does not is refused; the users and
 * permissions of nats.conf still apply.
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startNatsServer, type NatsServer } from '../../src/fleet/natsServer.js';
import { Bus } from '../../src/transport/bus.js';

const TLS_CONF = fileURLToPath(new URL('../../nats-tls.conf', import.meta.url));
const dir = mkdtempSync(join(tmpdir(), 'troupe-tls-'));
let server: NatsServer;

/** A throwaway CA and a server certificate for 127.0.0.1 it signed. */
function makeCertificates(): void {
  const ssl = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'ignore' });
  ssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'ca.key', '-out', 'ca.pem', '-days', '1', '-subj', '/CN=troupe-test-ca');
  ssl('req', '-newkey', 'rsa:2048', '-nodes', '-keyout', 'server.key', '-out', 'server.csr', '-subj', '/CN=127.0.0.1');
  writeFileSync(join(dir, 'ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  ssl('x509', '-req', '-in', 'server.csr', '-CA', 'ca.pem', '-CAkey', 'ca.key', '-CAcreateserial', '-out', 'server.pem', '-days', '1', '-extfile', 'ext.cnf');
}

beforeAll(async () => {
  makeCertificates();
  process.env['TROUPE_NATS_TLS_CERT'] = JSON.stringify(join(dir, 'server.pem'));
  process.env['TROUPE_NATS_TLS_KEY'] = JSON.stringify(join(dir, 'server.key'));
  server = await startNatsServer({ config: TLS_CONF });
});
afterAll(async () => {
  await server?.stop();
  delete process.env['TROUPE_NATS_TLS_CERT'];
  delete process.env['TROUPE_NATS_TLS_KEY'];
  rmSync(dir, { recursive: true, force: true });
});

describe('nats-tls.conf', () => {
  it('a client naming the CA connects over TLS and exchanges messages; one without it is refused', async () => {
    const a = await Bus.connect({ servers: server.url, role: 'admin', caFile: join(dir, 'ca.pem') });
    const b = await Bus.connect({ servers: server.url, role: 'admin', caFile: join(dir, 'ca.pem') });
    try {
      const got = new Promise<string>((resolve) => b.subscribe('troupe.tls.hello', (m) => resolve(new TextDecoder().decode(m.data))));
      await b.flush();
      await a.publish('troupe.tls.hello', new TextEncoder().encode('over tls'));
      expect(await got).toBe('over tls');
    } finally {
      await a.close();
      await b.close();
    }
    await expect(Bus.connect({ servers: server.url, role: 'admin', maxReconnectAttempts: 0 })).rejects.toThrow(/certificate/);
  });

  it('still refuses an anonymous client', async () => {
    await expect(Bus.connect({ servers: server.url, caFile: join(dir, 'ca.pem'), maxReconnectAttempts: 0 })).rejects.toThrow(/authorization/i);
  });
});
