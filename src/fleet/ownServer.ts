/**
 * The nats-server `troupe up` starts when it is given none, confined to the job: the
 * credentials files it hands other processes (each with the passwords of the roles it names
 * only), its death told to the job actor, and starting it again on its port (the passwords
 * are this process's, so every client logs in again as before).
 */
import { rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { StateError } from '../errors.js';
import { writeCredentialsFile } from '../transport/credentials.js';
import { startNatsServer, type NatsServer, type NatsServerOptions } from './natsServer.js';
import { removeWithThisProcess } from './tiedProcess.js';

export class OwnServer {
  private closing = false;
  /** The server exited on its own and is not started again yet. */
  private down = false;
  private again: Promise<void> | undefined;
  /** The credentials files handed out: removed when the server stops. */
  private readonly files: string[] = [];
  /** Each file also goes with this process if it is killed (SIGKILL leaves no finally). */
  private readonly drops: (() => void)[] = [];

  private constructor(
    private server: NatsServer,
    private readonly options: NatsServerOptions,
    private readonly onExit: (why: string) => void,
  ) {
    this.watch(server);
  }

  /** Starts the server (`options.job` confines it to the job); `onExit` hears of an exit nobody asked for. */
  static async start(options: NatsServerOptions, onExit: (why: string) => void): Promise<OwnServer> {
    return new OwnServer(await startNatsServer(options), options, onExit);
  }

  /**
   * A file holding the passwords of `roles` only, for another process (troupe inspect, a
   * worker on another host); it goes with the server, and with this process however it ends.
   */
  async credentialsFor(roles: readonly string[], name: string): Promise<string> {
    if (this.closing) throw new StateError(`no credentials for ${name}: the nats-server is stopping`);
    const file = await writeCredentialsFile(roles, process.env, name);
    // Stopped while it was written: stop() did not see it, so it goes now.
    if (this.closing) {
      await rm(dirname(file), { recursive: true, force: true });
      throw new StateError(`no credentials for ${name}: the nats-server is stopping`);
    }
    this.files.push(file);
    this.drops.push(removeWithThisProcess(dirname(file)));
    return file;
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

  /** Stops the server (waiting for a restart under way) and removes the credentials files. */
  async stop(): Promise<void> {
    this.closing = true;
    await this.again?.catch(() => {});
    await this.server.stop();
    for (const file of this.files) await rm(dirname(file), { recursive: true, force: true });
    for (const drop of this.drops) drop();
  }
}
