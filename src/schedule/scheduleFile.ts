/**
 * Schedules written by hand: a text table, one line per stage, validated before use.
 *
 * ```
 * # 1F1B for 2 stages, 3 microbatches
 * 0: F0 F1 B0 F2 B1 B2
 * 1: F0 B0 F1 B1 F2 B2
 * ```
 */
import { readFile } from 'node:fs/promises';
import { ScheduleError } from '../errors.js';
import { parseStageActions, type Action, type Schedule } from './action.js';
import { validateSchedule } from './validate.js';

/** Parses the table (stage lines in order 0..p-1) and validates it for its own p and m. */
export function parseScheduleTable(text: string, where = 'schedule'): Schedule {
  const rows: Action[][] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/#.*/, '').trim();
    if (!line) return;
    const m = /^(\d+)\s*:\s*(.*)$/.exec(line);
    if (!m) throw new ScheduleError(`${where} line ${i + 1}: "${raw.trim()}" is not "<stage>: <actions>"`);
    const stage = Number(m[1]);
    if (stage !== rows.length) throw new ScheduleError(`${where} line ${i + 1}: stage ${stage} where stage ${rows.length} comes next`);
    try {
      rows.push(parseStageActions(m[2]!, stage));
    } catch (cause) {
      throw new ScheduleError(`${where} line ${i + 1}: ${(cause as Error).message}`);
    }
  });
  if (rows.length === 0) throw new ScheduleError(`${where}: no stage lines`);
  const m = new Set(rows.flat().map((a) => a.microbatch)).size;
  validateSchedule(rows, rows.length, m);
  return rows;
}

/** Reads and validates a schedule table from a file. */
export async function loadScheduleFile(path: string): Promise<Schedule> {
  return parseScheduleTable(await readFile(path, 'utf8'), path);
}
