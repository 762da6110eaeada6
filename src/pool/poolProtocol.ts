/** The messages of a task pool: a request per task, a reply per task. */
import { poolSubject } from '../protocol/subjects.js';

/** Tasks of pool `name` go to `troupe.pool.<name>.task` (a queue group of workers). */
export function poolTaskSubject(name: string): string {
  return poolSubject(name, 'task');
}

/** A task as sent: the caller's input index and the JSON input. */
export interface TaskRequest {
  readonly index: number;
  readonly input: unknown;
}

/** A task's answer: its output, or the worker's error. */
export type TaskReply =
  | { readonly ok: true; readonly worker: string; readonly output: unknown }
  | { readonly ok: false; readonly worker: string; readonly error: { readonly name: string; readonly message: string } };
