/** A task module by path: its default export, a function of (input, index). */
import { ConfigError } from '../errors.js';
import { importDefault } from '../importDefault.js';
import type { Task } from './poolWorker.js';

/** Loads the task module's default export; a ConfigError names what is wrong. */
export async function loadTask(path: string): Promise<Task> {
  const task = await importDefault(path, 'task module');
  if (typeof task !== 'function') throw new ConfigError(`task module ${path}: the default export must be a function of (input, index)`);
  return task as Task;
}
