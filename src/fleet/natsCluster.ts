/** A NATS cluster on this host: n nodes from nats-cluster.conf, routed to each other. */
import { createServer } from 'node:net';
import { TransportError } from '../errors.js';
import { packagePath } from '../packagePath.js';
import { ROUTE_ROLE, credentialsFor, ensureCredentials } from '../transport/credentials.js';
import { startNatsServer, type NatsServer } from './natsServer.js';

/** The cluster node configuration: nats.conf plus a cluster block whose routes authenticate. */
export const NATS_CLUSTER_CONF = packagePath('nats-cluster.conf');

/** A running cluster. */
export interface NatsCluster {
  readonly nodes: readonly NatsServer[];
  /** Every node's client URL, comma-separated (what `--nats` takes). */
  readonly urls: string;
  /** Ends every node still running. */
  stop(): Promise<void>;
}

/** A TCP port nobody listens on right now. */
async function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const srv = createServer();
    srv.once('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const port = (srv.address() as { port: number }).port;
      srv.close(() => resolve(port));
    });
  });
}

/**
 * Starts `n` nodes (default 3) on free ports, each routed to all others as the route user
 * (password TROUPE_NATS_PASS_ROUTE, made when unset), and resolves once every node has a
 * route to every other one. With `job`, every node's users are confined to that job.
 */
export async function startNatsCluster(n = 3, readyTimeoutMs = 10_000, o: { readonly job?: string } = {}): Promise<NatsCluster> {
  const routes: number[] = [];
  for (let i = 0; i < n; i++) routes.push(await freePort());
  ensureCredentials();
  const pass = credentialsFor(ROUTE_ROLE)!;
  // Each node lists every node (it ignores the route to itself); the URLs carry the route user.
  const urls = JSON.stringify(routes.map((p) => `nats://${ROUTE_ROLE}:${pass}@127.0.0.1:${p}`));
  const nodes: NatsServer[] = [];
  const stop = async () => {
    await Promise.all(nodes.map((s) => s.stop()));
  };
  try {
    for (let i = 0; i < n; i++) {
      const env = { TROUPE_NATS_CLUSTER_LISTEN: `127.0.0.1:${routes[i]}`, TROUPE_NATS_ROUTES: urls };
      nodes.push(await startNatsServer({ config: NATS_CLUSTER_CONF, env, ...(o.job !== undefined ? { job: o.job } : {}) }));
    }
    const deadline = Date.now() + readyTimeoutMs;
    // Each node logs a line per route connection; a full mesh has at least n - 1 per node.
    while (nodes.some((s) => (s.log().match(/Route connection created/g) ?? []).length < n - 1)) {
      if (Date.now() > deadline) throw new TransportError(`the ${n} NATS nodes did not route to each other within ${readyTimeoutMs} ms`);
      await new Promise((r) => setTimeout(r, 50));
    }
    return { nodes, urls: nodes.map((s) => s.url).join(','), stop };
  } catch (err) {
    await stop();
    throw err;
  }
}
