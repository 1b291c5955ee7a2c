/**
 * The processes that train one model together, as the trainer sees them.
 *
 * The training engine never talks to a transport: it asks its
 * {@linkcode Replicas} to make the model equal everywhere, to sum gradients
 * and metrics, and to agree on settings. One process is a world of one
 * ({@linkcode singleProcess}), where every call is a no-op; data-parallel runs
 * plug in another implementation without touching the loop.
 *
 * @example
 * ```ts
 * import { singleProcess } from "./parallel.ts";
 * const replicas = singleProcess();
 * console.log(replicas.world, replicas.isMain); // 1 true
 * console.log(await replicas.sum(new Float64Array([3, 4]))); // Float64Array [3, 4]
 * ```
 * @module
 */
import type { Module } from "../models/module.ts";
import type { StatsReducer } from "../ops/norm.ts";
import type { Tensor } from "../ops/tensor.ts";

/**
 * Summing the gradients of one optimiser step across ranks: the engine calls
 * `onGradReady` for every parameter as soon as its gradient is final, then
 * awaits `finish` before the optimiser step.
 */
export interface GradientSync {
  onGradReady(p: Tensor): void;
  finish(): Promise<void>;
}

/** What one optimiser step's gradient sum cost (milliseconds of wall time). */
export interface CommStep {
  /** Bytes of gradient each rank sent into the sums. */
  bytes: number;
  /** First bucket's copy recorded → last bucket on the CPU (overlaps the backward pass). */
  readMs: number;
  /** Time inside the all-reduce calls, summed over buckets. */
  reduceMs: number;
  /** Dividing by the world size and recording the copies back. */
  writeMs: number;
  /** How long `finish` held up the step: the communication the backward pass did not hide. */
  waitMs: number;
  /**
   * Time inside synchronised batch norm's all-reduces of the step (forward
   * and backward), during which this rank's GPU has nothing queued.
   */
  bnMs?: number;
  /** The part of `bnMs` outside `waitMs` (the rest overlapped the gradient sum's wait). */
  bnWaitMs?: number;
  /** Synchronised batch norm's all-reduces in the step. */
  bnReductions?: number;
}

/** The ranks of a run and the collective operations the engine needs. */
export interface Replicas {
  readonly rank: number;
  readonly world: number;
  /** Rank 0: the only one that writes logs, curves and checkpoints. */
  readonly isMain: boolean;
  /** Make every rank's weights and buffers equal to rank 0's. */
  syncModel(model: Module): Promise<void>;
  /** Element-wise sum of `values` over the ranks (metric reduction). */
  sum(values: Float64Array): Promise<Float64Array>;
  /** The gradient sum of the coming backward pass; null when there is nothing to sum. */
  gradientSync(params: Tensor[]): GradientSync | null;
  /** Fail on every rank unless every rank holds the same `hash` of `what`. */
  agree(what: string, hash: string): Promise<void>;
  /** Stop every rank with `code` (after an error on this one). */
  abort(code: number): void;
  /** The costs of the gradient sums since the last call (emptied by it); none in one process. */
  takeCommSteps?(): CommStep[];
  /**
   * Synchronised batch norm's reducer: sums per-channel statistics over the
   * ranks, in recording order (absent in one process: nothing to sum).
   */
  statsReducer?(): StatsReducer;
}

/**
 * A world of one: nothing to synchronise.
 *
 * @example
 * ```ts
 * import { singleProcess } from "./parallel.ts";
 * console.log(singleProcess().gradientSync([])); // null
 * ```
 */
export function singleProcess(): Replicas {
  return {
    rank: 0,
    world: 1,
    isMain: true,
    syncModel: () => Promise.resolve(),
    sum: (values) => Promise.resolve(values),
    gradientSync: () => null,
    agree: () => Promise.resolve(),
    abort: (code) => Deno.exit(code),
  };
}
