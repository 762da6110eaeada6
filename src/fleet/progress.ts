/** A one-line progress bar: step, epoch, loss, metric, samples/s and ETA. */

/** One step's figures for the bar. */
export interface ProgressUpdate {
  readonly step: number;
  readonly total: number;
  readonly epoch: number;
  readonly epochs: number;
  readonly loss: number;
  readonly metric: number | null;
  readonly samples: number;
}

function clock(s: number): string {
  const t = Math.max(0, Math.round(s));
  return `${Math.floor(t / 60)}:${String(t % 60).padStart(2, '0')}`;
}

/**
 * Renders progress on a stream: redrawn in place on a terminal, otherwise one line per
 * tenth of the run (and at the end), so logs stay readable.
 */
export class Progress {
  private readonly started = performance.now();
  private lastLine = -1;

  constructor(private readonly out: NodeJS.WritableStream & { isTTY?: boolean } = process.stdout) {}

  /** Formats the bar for `u`. */
  static line(u: ProgressUpdate, elapsedS: number): string {
    const rate = u.samples / Math.max(elapsedS, 1e-9);
    const eta = (elapsedS / u.step) * (u.total - u.step);
    const width = 20;
    const filled = Math.round((u.step / u.total) * width);
    const bar = `${'#'.repeat(filled)}${'.'.repeat(width - filled)}`;
    const metric = u.metric === null ? '' : ` metric ${u.metric.toFixed(4)}`;
    return `[${bar}] step ${u.step}/${u.total} epoch ${u.epoch}/${u.epochs} loss ${u.loss.toFixed(4)}${metric} ${rate.toFixed(0)} samples/s ETA ${clock(eta)}`;
  }

  update(u: ProgressUpdate): void {
    const line = Progress.line(u, (performance.now() - this.started) / 1000);
    if (this.out.isTTY) {
      this.out.write(`\r${line}`);
      if (u.step === u.total) this.out.write('\n');
      return;
    }
    const tenth = Math.floor((u.step * 10) / u.total);
    if (tenth !== this.lastLine || u.step === u.total) {
      this.lastLine = tenth;
      this.out.write(`${line}\n`);
    }
  }

  /** Prints a line above the bar. */
  note(line: string): void {
    this.out.write(this.out.isTTY ? `\r\x1b[K${line}\n` : `${line}\n`);
  }
}
