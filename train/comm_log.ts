/**
 * The communication cost of data-parallel training, step by step: one row
 * per optimiser step in `comm.csv` (bytes summed, read-back, all-reduce and
 * write-back milliseconds, the time the step waited on them, the whole
 * step's time, and the time in synchronised batch norm's all-reduces), and
 * the share of the step spent waiting on communication (the gradient sum's
 * wait plus the batch-norm all-reduces outside it, during which the GPU has
 * nothing queued), which the progress bar shows.
 *
 * @example
 * ```ts
 * import { CommLog } from "./comm_log.ts";
 * const log = new CommLog(null); // no file: only the share
 * log.add(1, { bytes: 400, readMs: 2, reduceMs: 3, writeMs: 1, waitMs: 5 }, 50);
 * console.log(log.share()); // 0.1
 * ```
 * @module
 */
import type { CommStep } from "./grad_sync.ts";
import { appendLinesAtomic } from "../analysis/csv.ts";

/** The columns of `comm.csv`. */
export const COMM_CSV_HEADER =
  "step,bytes,read_ms,allreduce_ms,write_ms,wait_ms,step_ms,bn_allreduce_ms";

/** Rows of `comm.csv` gathered between writes, and the running communication share. */
export class CommLog {
  readonly #path: string | null;
  #rows: string[] = [];
  #waitMs = 0;
  #stepMs = 0;
  /** Every step's costs so far: bytes, read, all-reduce, write, wait, step, BN (for the summary). */
  #all: number[][] = [];

  /** `path`: the CSV to append to (created with its header), or null to keep no file. */
  constructor(path: string | null) {
    this.#path = path;
  }

  /** Record optimiser step `step`, whose gradient sum cost `comm`, and which took `stepMs`. */
  add(step: number, comm: CommStep, stepMs: number): void {
    const f = (x: number) => x.toFixed(3);
    const bnMs = comm.bnMs ?? 0;
    this.#rows.push(
      [
        step,
        comm.bytes,
        f(comm.readMs),
        f(comm.reduceMs),
        f(comm.writeMs),
        f(comm.waitMs),
        f(stepMs),
        f(bnMs),
      ]
        .join(","),
    );
    this.#waitMs += comm.waitMs + (comm.bnWaitMs ?? bnMs);
    this.#stepMs += stepMs;
    this.#all.push([
      comm.bytes,
      comm.readMs,
      comm.reduceMs,
      comm.writeMs,
      comm.waitMs,
      stepMs,
      bnMs,
    ]);
  }

  /**
   * The mean cost of a step, leaving out the first (which also compiles the
   * kernels) when there are others: the cost model of the run, on one line.
   *
   * @example
   * ```ts
   * import { CommLog } from "./comm_log.ts";
   * const log = new CommLog(null);
   * log.add(1, { bytes: 400, readMs: 2, reduceMs: 3, writeMs: 1, waitMs: 5 }, 50);
   * console.log(log.describe()); // "communication per step (1 step): 400 B, read-back 2.0 ms, …"
   * ```
   */
  describe(): string {
    const rows = this.#all.length > 1 ? this.#all.slice(1) : this.#all;
    const mean = (j: number) => rows.reduce((a, r) => a + r[j], 0) / Math.max(rows.length, 1);
    const ms = (j: number) => `${mean(j).toFixed(1)} ms`;
    const steps = `${rows.length} step${rows.length === 1 ? "" : "s"}`;
    const n = rows.length === this.#all.length ? steps : `mean of ${steps} after the first`;
    const bn = rows.some((r) => r[6] > 0) ? `, batch-norm all-reduces ${ms(6)}` : "";
    return `communication per step (${n}): ${formatBytes(mean(0))}, read-back ${ms(1)}, ` +
      `all-reduce ${ms(2)}, write-back ${ms(3)}${bn}; the step waited ${ms(4)} of ${ms(5)}`;
  }

  /** Fraction of the step time since the last call spent waiting on communication; then resets. */
  share(): number {
    const s = this.#waitMs / Math.max(this.#stepMs, 1e-9);
    this.#waitMs = 0;
    this.#stepMs = 0;
    return s;
  }

  /** Append the gathered rows to the file (with a header when it is new). */
  async write(): Promise<void> {
    if (!this.#path || this.#rows.length === 0) return;
    const rows = this.#rows;
    this.#rows = [];
    await appendLinesAtomic(this.#path, COMM_CSV_HEADER, rows);
  }
}

function formatBytes(b: number): string {
  if (b >= 1 << 20) return `${(b / (1 << 20)).toFixed(1)} MiB`;
  if (b >= 1 << 10) return `${(b / (1 << 10)).toFixed(1)} KiB`;
  return `${b.toFixed(0)} B`;
}
