/**
 * `troupe inspect`: a local server (127.0.0.1) that listens to a job's inspection, action,
 * stats and error messages on NATS and serves
 *   /            the offline inspector page (diagrams, timeline, counters, errors)
 *   /events      the page's live updates (server-sent events)
 *   /model       everything known so far, as JSON
 *   /stately     a bridge page that embeds Stately's inspector (online) fed from /ws
 *   /ws          inspection events in the @statelyai/inspect WebSocket format (with --stately)
 */
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { WebSocketServer, WebSocket } from 'ws';
import { decodeMessage } from '../protocol/messages.js';
import { lastToken } from '../protocol/subjects.js';
import { checkJobId } from '../protocol/subjects.js';
import { TransportError, messageOf } from '../errors.js';
import { Bus } from '../transport/bus.js';
import { InspectorModel, type ModelUpdate } from './model.js';
import { inspectorPage, statelyBridgePage } from './page.js';
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

const RELAY_BUFFER = 200;

/**
 * Starts the inspector server for one job.
 *
 * @example
 * const insp = await startInspector({ nats: 'nats://127.0.0.1:4222', job: 'mnist', stately: true });
 * console.log(insp.url); // open it in a browser
 */
export async function startInspector(o: InspectorOptions): Promise<Inspector> {
  const job = checkJobId(o.job);
  const model = new InspectorModel();
  const clients = new Set<ServerResponse>();
  const relayed: string[] = [];
  const bus = await Bus.connect({ servers: o.nats, name: `troupe-${job}-inspector`, role: 'inspector' });
  let wss: WebSocketServer | undefined;

  const push = (u: ModelUpdate | null) => {
    if (!u) return;
    const line = `data: ${JSON.stringify(u)}\n\n`;
    for (const c of clients) c.write(line);
  };
  const relay = (text: string) => {
    if (!wss) return;
    relayed.push(text);
    if (relayed.length > RELAY_BUFFER) relayed.shift();
    for (const c of wss.clients) if (c.readyState === WebSocket.OPEN) c.send(text);
  };
  const subs = [
    bus.subscribe(`troupe.${job}.inspect.*`, (m) => {
      try {
        const text = new TextDecoder().decode(m.data);
        const ev = JSON.parse(text) as StatelyEvent;
        if (typeof ev?.type !== 'string' || typeof ev.sessionId !== 'string') return;
        relay(text);
        push(model.applyInspection(ev));
      } catch {
        // not an inspection event: ignored
      }
    }),
    bus.subscribe(`troupe.${job}.sched.*`, (m) => {
      try {
        const kind = lastToken(m.subject);
        if (kind === 'action') push(model.applyAction(decodeMessage('action', m.data)));
        else if (kind === 'error') push(model.applyError(decodeMessage('error', m.data)));
        else if (kind === 'reject') {
          const r = decodeMessage('reject', m.data);
          push(model.applyReject(r));
          // A refused INPUT fails its step: the error panel shows it.
          const failed = InspectorModel.stepFailureOf(r);
          if (failed) push(model.applyError(failed));
        }
      } catch {
        // malformed: the scheduler counts those
      }
    }),
    bus.subscribe(`troupe.${job}.stats.*`, (m) => {
      try {
        push(model.applyStats(decodeMessage('stats', m.data)));
      } catch {
        // malformed: ignored
      }
    }),
  ];
  await bus.flush();

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
      verifyClient: ({ origin, req }: { origin: string | undefined; req: IncomingMessage }) => local(req.headers.host) && (origin === undefined || origin === '' || local(origin.replace(/^https?:\/\//, ''))),
    });
    wss.on('connection', (ws) => {
      for (const text of relayed) ws.send(text);
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
      for (const c of clients) c.end();
      clients.clear();
      if (wss) {
        for (const c of wss.clients) c.terminate();
        await new Promise<void>((r) => wss!.close(() => r()));
      }
      server.closeAllConnections();
      await new Promise<void>((r) => server.close(() => r()));
      await Promise.all(subs.map((s) => s.drain()));
      await bus.close();
    },
  };
}
