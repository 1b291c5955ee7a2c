/**
 * The run state a checkpoint keeps in `state.json`: progress, metrics and
 * kernel plans (its own file, so that the checkpoint writer and its
 * validator both use it without importing each other).
 *
 * @example
 * ```ts
 * import type { TrainState } from "./train_state.ts";
 * const progress = (s: TrainState) => `epoch ${s.epoch}, step ${s.step}`;
 * console.log(typeof progress); // "function"
 * ```
 * @module
 */
import type { SavedPlans } from "../ops/planner.ts";

/** Everything in `state.json`. */
export interface TrainState {
  /** Format version of this file. */
  version: 1;
  model: string;
  /** Model construction arguments, so `--resume` can rebuild it. */
  modelArgs: Record<string, unknown>;
  /** Epochs fully completed. */
  epoch: number;
  /** Micro-batches done inside the current epoch (non-zero after an interrupt). */
  batchInEpoch: number;
  /** Optimiser steps taken. */
  step: number;
  bestTop1: number;
  /** Partial sums of the running epoch (loss, samples) so resumed logs match. */
  partial: { lossSum: number; samples: number };
  /** The run configuration the checkpoint was written with. */
  config: Record<string, unknown>;
  /** Per-epoch metrics so far (the CSV log's rows). */
  history: Record<string, number>[];
  optimizerStep: number;
  savedAt: string;
  /**
   * How the run that saved cut its batches: its number of ranks and per-rank
   * batch size (absent: one process). A run resumed under another number of
   * ranks carries its position over in images (see train/world_resume.ts).
   */
  ranks?: { world: number; batchSize: number };
  /** Sparse runs: density of every masked layer and overall, at the save. */
  sparse?: { densities: Record<string, number>; overallDensity: number };
  /**
   * The kernel plans of the kernels this run's model runs (dense and sparse
   * depthwise, matrix products), planned at the start (`--tune-kernels`) and
   * restored on resume, so that a resumed run computes with the same
   * kernels, bit for bit. Checkpoints written before plans had one field
   * carry none here: their runs plan again on resume.
   */
  plans?: SavedPlans;
}
