/**
 * Starts a command that cannot outlive this process, however this process ends (an uncaught
 * error, a signal, SIGKILL): Node has no PR_SET_PDEATHSIG, so a small sh keeper holds a pipe
 * from this process and kills the command when the pipe closes, which the kernel does when
 * this process dies.
 *
 * ```
 * node (this process) --lifeline pipe (fd 3)--> sh keeper
 *                                                ├── command         (its child: pid reported on fd 4)
 *                                                └── reader: EOF on fd 3 -> kill -KILL command
 * ```
 * The keeper waits for the command and exits with its status, so this process sees the
 * command's end as the keeper's exit. The command's pid stays the keeper's unreaped child
 * until it exits, so the reader never signals a reused pid.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import type { Socket } from 'node:net';

const KEEPER = [
  '"$@" </dev/null 3<&- 4>&- &',
  'cmd=$!',
  'echo "$cmd" >&4',
  'exec 4>&-',
  // The lifeline: read until EOF (this process closed it or died), then end the command.
  '{ while read -r _; do :; done <&3; kill -KILL "$cmd" 2>/dev/null; } &',
  'reader=$!',
  'exec 3<&-',
  'wait "$cmd"',
  'code=$?',
  'kill "$reader" 2>/dev/null',
  'exit "$code"',
].join('\n');

/** A command tied to this process's life. */
export interface TiedProcess {
  /** The keeper; its exit is the command's (its code is the command's status, 128 + n for signal n). */
  readonly keeper: ChildProcess;
  /** The command's own pid, once the keeper has started it. */
  readonly pid: Promise<number>;
  /** Closes the lifeline: the keeper kills the command at once (SIGKILL). */
  cut(): void;
}

/**
 * Runs `bin args` (with `env` added to this process's environment) under a keeper in a process group of its own (a terminal's Ctrl-C reaches
 * only this process, which ends the command as it sees fit). The command's stdout and stderr
 * are the keeper's (`keeper.stdout`, `keeper.stderr`); its stdin is /dev/null.
 *
 * @example
 * const t = tieToThisProcess('/usr/sbin/nats-server', ['-c', 'nats.conf']);
 * process.kill(await t.pid, 'SIGTERM');
 */
export function tieToThisProcess(bin: string, args: readonly string[], env?: Readonly<Record<string, string>>): TiedProcess {
  const keeper = spawn('/bin/sh', ['-c', KEEPER, 'troupe-keeper', bin, ...args], {
    stdio: ['ignore', 'pipe', 'pipe', 'pipe', 'pipe'],
    detached: true,
    ...(env ? { env: { ...process.env, ...env } } : {}),
  });
  const lifeline = keeper.stdio[3] as Socket;
  const report = keeper.stdio[4] as Socket;
  const pid = new Promise<number>((resolve, reject) => {
    let text = '';
    report.on('data', (b: Buffer) => {
      text += b.toString();
      const m = /^(\d+)\n/.exec(text);
      if (m) resolve(Number(m[1]));
    });
    report.once('end', () => reject(new Error(`the keeper of ${bin} reported no pid`)));
    keeper.once('error', reject);
  });
  pid.catch(() => {}); // the caller sees the keeper's exit or error too
  // The lifeline is only ever closed; an error on it (the keeper gone) changes nothing.
  lifeline.on('error', () => {});
  return { keeper, pid, cut: () => lifeline.destroy() };
}

/**
 * Removes `path` (a file or directory of secrets) when this process ends, however it ends,
 * through a sh that waits on a pipe from this process. Returns a function that removes it
 * now (the same sh does). Neither keeps this process alive.
 *
 * @example
 * const drop = removeWithThisProcess(dirname(credentialsFile));
 * // ... on a normal end:
 * drop();
 */
export function removeWithThisProcess(path: string): () => void {
  const cleaner = spawn('/bin/sh', ['-c', 'while read -r _; do :; done <&3; rm -rf -- "$1"', 'troupe-cleanup', path], {
    stdio: ['ignore', 'ignore', 'ignore', 'pipe'],
    detached: true,
  });
  const lifeline = cleaner.stdio[3] as Socket;
  lifeline.on('error', () => {});
  lifeline.unref();
  cleaner.unref();
  return () => lifeline.destroy();
}
