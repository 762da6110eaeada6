/**
 * `troupe inspect` (and `troupe up --inspect`): a local server (127.0.0.1) that listens to a
 * job's inspection, action, stats and error messages on NATS (every replica's) and serves
 *   /            the offline inspector page (diagrams, timeline, counters, errors)
 *   /events      the page's live updates (server-sent events), everything known first
 *   /model       everything known so far, as JSON
 *   /stately     a bridge page that embeds Stately's inspector (online) fed from /ws
 *   /ws          inspection events in the @statelyai/inspect WebSocket format (with `stately`),
 *                each live actor's announcement with its latest snapshot first
 * It may start before or after the job: on start, and whenever an actor it has not heard
 * announce itself shows up, it asks who is there (`troupe.<job>.who`, at most once a
 * second) and the actors' hosts answer with their announcements, latest snapshots and the
 * errors and refused frames they kept.
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, WebSocket } from 'ws';
import { decodeMessage, encodeJson } from '../protocol/messages.js';
import { checkJobId, everyScope, parseSchedSubject, scopeOfSubject, whoSubject, type WatchedFamily } from '../protocol/subjects.js';
import { ConfigError, TransportError, messageOf } from '../errors.js';
import { Bus, type BusMessage } from '../transport/bus.js';
import { credentialsFor } from '../transport/credentials.js';
import { InspectorModel, type ModelUpdate } from './model.js';
import { inspectorPage, statelyBridgePage } from './page.js';
import { decodePresence } from './rollCall.js';
import { StatelyRelay } from './statelyRelay.js';
import type { StatelyEvent } from './statelyEvents.js';

/** Options of `startInspector`. */
export interface InspectorOptions {
  readonly nats: string;
  readonly job: string;
  /** HTTP port on 127.0.0.1; 0 (default) picks a free one. */
  readonly port?: number;
  /** Also relay inspection events on /ws in the @statelyai/inspect format. */
  readonly stately?: boolean;
}

/** A running inspector server. */
export interface Inspector {
  readonly url: string;
  /** The relay's WebSocket URL, with `stately`. */
  readonly wsUrl: string | null;
  readonly model: InspectorModel;
  close(): Promise<void>;
}

/** Shortest time between two `who` requests. */
const WHO_EVERY_MS = 1000;

/** Connects as the inspector; an authorization failure without credentials says which variable to set. */
async function connectInspector(nats: string, job: string): Promise<Bus> {
  try {
    return await Bus.connect({ servers: nats.split(','), name: `troupe-${job}-inspector`, role: 'inspector' });
  } catch (err) {
    if (/authori[sz]ation/i.test(messageOf(err)) && credentialsFor('inspector') === undefined) {
      throw new ConfigError(
        `NATS at ${nats} refused the inspector: it needs credentials. ` +
          "Set TROUPE_NATS_CREDENTIALS to the credentials file 'troupe up' printed, or TROUPE_NATS_PASS_INSPECTOR to the inspector's password",
        { cause: err },
      );
    }
    throw err;
  }
}

/**
 * Starts the inspector server for one job.
 *
 * @example
 * const insp = await startInspector({ nats: 'nats://127.0.0.1:4222', job: 'mnist', stately: true });
 * console.log(insp.url); // open it in a browser
 */
export async function startInspector(o: InspectorOptions): Promise<Inspector> {
  const job = checkJobId(o.job);
  const model = new InspectorModel(job);
  const relay = new StatelyRelay();
  const clients = new Set<ServerResponse>();
  const bus = await connectInspector(o.nats, job);
  let wss: WebSocketServer | undefined;
  const dec = new TextDecoder();

  const push = (u: ModelUpdate | null) => {
    if (!u) return;
    const line = `data: ${JSON.stringify(u)}\n\n`;
    for (const c of clients) c.write(line);
  };
  const toViewers = (text: string) => {
    if (!wss) return;
    for (const c of wss.clients) if (c.readyState === WebSocket.OPEN) c.send(text);
  };
  // Who is there: asked at start, and again (at most once a second) when an actor nobody announced shows up.
  let lastAsked = -Infinity;
  let askTimer: NodeJS.Timeout | undefined;
  let closed = false;
  const ask = () => {
    if (closed) return;
    lastAsked = performance.now();
    model.unknownSeen = relay.unknownSeen = false;
    bus.publish(whoSubject(job), encodeJson({})).catch(() => {});
  };
  const askSoon = () => {
    if (askTimer || closed) return;
    askTimer = setTimeout(
      () => {
        askTimer = undefined;
        ask();
      },
      Math.max(0, lastAsked + WHO_EVERY_MS - performance.now()),
    );
  };
  /** Subscribes to a family of the job's subjects in the job and in every replica's scope. */
  const every = (family: WatchedFamily, handler: (m: BusMessage, scope: string) => void) =>
    everyScope(job, family).map((subject) =>
      bus.subscribe(subject, (m) => {
        try {
          handler(m, scopeOfSubject(job, m.subject) ?? job);
        } catch {
          // malformed: not ours to count (the scheduler counts its own)
        }
      }),
    );
  const subs = [
    ...every('inspect', (m, scope) => {
      const text = dec.decode(m.data);
      const ev = JSON.parse(text) as StatelyEvent;
      if (typeof ev?.type !== 'string' || typeof ev.sessionId !== 'string') return;
      if (relay.take(ev)) toViewers(text);
      push(model.applyInspection(ev, scope));
      if (relay.unknownSeen || model.unknownSeen) askSoon();
    }),
    ...every('present', (m) => {
      const p = decodePresence(m.data);
      for (const a of relay.takePresence(p)) toViewers(JSON.stringify(a));
      for (const u of model.applyPresence(p)) push(u);
    }),
    ...every('sched', (m, scope) => {
      // The rank is the subject's, which only that stage may publish on.
      const from = parseSchedSubject(m.subject);
      if (!from) return;
      const { rank, event: kind } = from;
      if (kind === 'action') push(model.applyAction({ ...decodeMessage('action', m.data), rank }, scope));
      else if (kind === 'error') push(model.applyError({ ...decodeMessage('error', m.data), rank }, scope));
      else if (kind === 'reject') {
        const r = { ...decodeMessage('reject', m.data), rank };
        push(model.applyReject(r, scope));
        // A refused INPUT fails its step: the error panel shows it.
        const failed = InspectorModel.stepFailureOf(r);
        if (failed) push(model.applyError(failed, scope));
      }
    }),
    ...every('stats', (m, scope) => push(model.applyStats(decodeMessage('stats', m.data), scope))),
  ];
  await bus.flush();
  ask();

  let port = 0;
  // Only this machine's pages: a Host or Origin of another name (DNS rebinding, a foreign page) is refused.
  const local = (host: string | undefined) => host === `127.0.0.1:${port}` || host === `localhost:${port}`;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    const path = (req.url ?? '/').split('?')[0];
    if (!local(req.headers.host)) {
      res.writeHead(403, { 'content-type': 'text/plain' });
      res.end('troupe inspect answers 127.0.0.1 and localhost only\n');
      return;
    }
    if (path === '/') {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(inspectorPage(job));
    } else if (path === '/model') {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(JSON.stringify(model.replay()));
    } else if (path === '/events') {
      res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache', connection: 'keep-alive' });
      for (const u of model.replay()) res.write(`data: ${JSON.stringify(u)}\n\n`);
      clients.add(res);
      req.on('close', () => clients.delete(res));
    } else if (path === '/stately' && o.stately) {
      res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      res.end(statelyBridgePage());
    } else {
      res.writeHead(404, { 'content-type': 'text/plain' });
      res.end(`no ${path} here\n`);
    }
  });
  if (o.stately) {
    wss = new WebSocketServer({
      server,
      path: '/ws',
      // Node clients send no Origin; browsers must come from this server's own pages.
      verifyClient: ({ origin, req }: { origin: string | undefined; req: IncomingMessage }) =>
        local(req.headers.host) && (origin === undefined || origin === '' || local(origin.replace(/^https?:\/\//, ''))),
    });
    // A viewer joining now gets every live actor in its current state first, then the live frames.
    wss.on('connection', (ws) => {
      for (const a of relay.replay()) ws.send(JSON.stringify(a));
    });
  }
  try {
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(o.port ?? 0, '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
  } catch (cause) {
    closed = true;
    clearTimeout(askTimer);
    await Promise.all(subs.map((s) => s.drain()));
    await bus.close();
    throw new TransportError(`troupe inspect cannot listen on 127.0.0.1:${o.port ?? 0}: ${messageOf(cause)}`, { cause });
  }
  port = (server.address() as AddressInfo).port;
  return {
    url: `http://127.0.0.1:${port}/`,
    wsUrl: o.stately ? `ws://127.0.0.1:${port}/ws` : null,
    model,
    close: async () => {
      closed = true;
      clearTimeout(askTimer);
      for (const c of clients) c.end();
      clients.clear();
      if (wss) {
        for (const c of wss.clients) c.terminate();
        await new Promise<void>((r) => wss.close(() => r()));
      }
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await Promise.all(subs.map((s) => s.drain()));
      await bus.close();
    },
  };
}
