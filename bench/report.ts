/** Helpers for benchmark tables: markdown tables, medians, the machine's description. */
import { cpus, totalmem } from 'node:os';
import * as tf from '@tensorflow/tfjs';

export function median(xs: readonly number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = Math.floor(s.length / 2);
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** A markdown table. */
export function table(head: readonly string[], rows: readonly (readonly string[])[]): string {
  const line = (cells: readonly string[]) => `| ${cells.join(' | ')} |`;
  return [line(head), line(head.map(() => '---')), ...rows.map(line)].join('\n');
}

/** One line naming the machine and backend the figures come from. */
export function machineLine(): string {
  const c = cpus();
  return `Machine: ${c.length} x ${c[0]?.model ?? 'cpu'}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, Node ${process.version}, tfjs backend ${tf.getBackend()}.`;
}
