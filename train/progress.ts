/**
 * A one-line progress bar on stderr: position, throughput and ETA. On a
 * terminal it redraws in place; otherwise (logs, CI) it prints a line at
 * every tenth of the way so logs stay short.
 *
 * @example
 * ```ts
 * import { ProgressBar } from "./progress.ts";
 * const bar = new ProgressBar("epoch 1/3", 100);
 * for (let i = 1; i <= 100; i++) bar.update(i, { images: i * 32, text: "loss 0.7" });
 * bar.done();
 * ```
 * @module
 */

/**
 * Format seconds as m:ss or h:mm:ss.
 *
 * @example
 * ```ts
 * import { formatDuration } from "./progress.ts";
 * console.log(formatDuration(75), formatDuration(3725), formatDuration(NaN)); // 1:15 1:02:05 --:--
 * ```
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const s = Math.round(seconds);
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  const ss = String(s % 60).padStart(2, "0");
  return h > 0 ? `${h}:${String(m).padStart(2, "0")}:${ss}` : `${m}:${ss}`;
}

/** A progress bar over `total` units. */
export class ProgressBar {
  readonly #label: string;
  readonly #total: number;
  readonly #start = performance.now();
  readonly #tty: boolean;
  readonly #encoder = new TextEncoder();
  #lastDecile = -1;
  #startCount = 0;
  #width = 24;

  /** `startAt` > 0 when resuming inside the range (throughput counts only new work). */
  constructor(label: string, total: number, startAt = 0) {
    this.#label = label;
    this.#total = Math.max(total, 1);
    this.#startCount = startAt;
    this.#tty = Deno.stderr.isTerminal();
  }

  /** Report `done` units finished, `images` processed since the start, and extra text. */
  update(done: number, { images = 0, text = "" }: { images?: number; text?: string } = {}): void {
    const elapsed = (performance.now() - this.#start) / 1000;
    const rate = (done - this.#startCount) / Math.max(elapsed, 1e-9);
    const eta = (this.#total - done) / rate;
    const frac = Math.min(done / this.#total, 1);
    const filled = Math.round(frac * this.#width);
    const bar = "█".repeat(filled) + "·".repeat(this.#width - filled);
    const ips = images > 0 ? ` ${(images / Math.max(elapsed, 1e-9)).toFixed(1)} img/s` : "";
    const line = `${this.#label} ${bar} ${done}/${this.#total}${ips} ETA ${
      formatDuration(eta)
    } ${text}`;
    if (this.#tty) {
      Deno.stderr.writeSync(this.#encoder.encode(`\r\x1b[2K${line}`));
    } else {
      const decile = Math.floor(frac * 10);
      if (decile !== this.#lastDecile) {
        this.#lastDecile = decile;
        Deno.stderr.writeSync(this.#encoder.encode(`${line}\n`));
      }
    }
  }

  /** End the bar (newline on a terminal). */
  done(): void {
    if (this.#tty) Deno.stderr.writeSync(this.#encoder.encode("\n"));
  }

  /** Seconds since the bar started. */
  get elapsed(): number {
    return (performance.now() - this.#start) / 1000;
  }
}
