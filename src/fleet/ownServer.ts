/**
 * The nats-server `troupe up` starts when it is given none: the credentials file it prints
 * for other processes, its death told to the job actor, and starting it again on its port
 * (the passwords are this process's, so every client logs in again as before).
 */
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { writeCredentialsFile } from '../transport/credentials.js';
import { startNatsServer, type NatsServer, type NatsServerOptions } from './natsServer.js';

export class OwnServer {
  private closing = false;
  /** The server exited on its own and is not started again yet. */
  private down = false;
  private again: Promise<void> | undefined;

  private constructor(
    private server: NatsServer,
    private readonly options: NatsServerOptions,
    /** Other processes (troupe inspect, a worker on another host) log in with it; it goes with the server. */
    readonly credentialsFile: string,
    private readonly onExit: (why: string) => void,
  ) {
    this.watch(server);
  }

  /** Starts the server and writes the credentials file; `onExit` hears of an exit nobody asked for. */
  static async start(options: NatsServerOptions, onExit: (why: string) => void): Promise<OwnServer> {
    const server = await startNatsServer(options);
    try {
      return new OwnServer(server, options, await writeCredentialsFile(), onExit);
    } catch (err) {
      await server.stop();
      throw err;
    }
  }

  get url(): string {
    return this.server.url;
  }

  get pid(): number {
    return this.server.pid;
  }

  /** Whether it died and was not started again. */
  get gone(): boolean {
    return this.down;
  }

  private watch(server: NatsServer): void {
    void server.exited.then(() => {
      if (this.closing || server !== this.server) return;
      this.down = true;
      this.onExit(`nats-server (pid ${server.pid}) exited`);
    });
  }

  /** Starts it again on its port if it died (once per death, however many ask); `said` hears what happened. */
  async restart(said: (line: string) => void): Promise<void> {
    if (!this.down) return;
    this.again ??= startNatsServer({ ...this.options, port: this.server.port })
      .then((server) => {
        this.server = server;
        this.down = false;
        this.watch(server);
        said(`troupe up: nats-server started again on port ${server.port} (pid ${server.pid}); every connection comes back to it`);
      })
      .finally(() => {
        this.again = undefined;
      });
    await this.again;
  }

  /** Stops the server (waiting for a restart under way) and removes the credentials file. */
  async stop(): Promise<void> {
    this.closing = true;
    await this.again?.catch(() => {});
    await this.server.stop();
    await rm(dirname(this.credentialsFile), { recursive: true, force: true });
  }
}
