/**
 * The child process a pool worker runs a task module in (`TaskProcess`): it loads the module,
 * says it is ready, then runs one task at a time as the parent sends them. Its parent can
 * stop a task that never ends by killing it, however it spins; it exits when the parent goes.
 */
import { Worker } from 'node:worker_threads';
import { messageOf } from '../errors.js';
import { encodeJsonValue } from './jsonValue.js';
import { loadTask } from './loadTask.js';
import type { ChildMessage, ParentMessage } from './taskProcess.js';

const send = (m: ChildMessage) => process.send!(m);

// A task spinning in this thread would keep the process from hearing that its parent died
// (the IPC channel's 'disconnect' is an event): a watchdog thread ends the process once the
// parent is gone, whatever this thread is doing. (A worker thread's process.ppid is not the
// parent's, so the parent is probed by its pid.)
new Worker(
  `const ppid = ${process.ppid};
   setInterval(() => { try { process.kill(ppid, 0); } catch { process.kill(process.pid, 'SIGKILL'); } }, 250);`,
  { eval: true },
).unref();

try {
  const task = await loadTask(process.argv[2]!);
  process.on('message', (m: ParentMessage) => {
    void (async () => {
      try {
        const output = await task(JSON.parse(m.input) as unknown, m.index);
        send({ type: 'result', seq: m.seq, ok: true, json: encodeJsonValue(output, m.index, 'output') });
      } catch (err) {
        send({ type: 'result', seq: m.seq, ok: false, error: { name: err instanceof Error ? err.name : 'Error', message: messageOf(err) } });
      }
    })();
  });
  process.on('disconnect', () => process.exit(0));
  send({ type: 'ready' });
} catch (err) {
  send({ type: 'failed', message: messageOf(err) });
  process.disconnect();
}
