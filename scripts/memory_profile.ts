/**
 * Where a training step's memory goes: per phase (forward, backward,
 * optimiser) of a training step with AdamW, the peak of live tensor bytes,
 * the peak of the tensor pool's buffers (what the device holds), the bytes
 * the tape keeps for backward at the end of the forward, and the fixed part
 * (parameters, gradients and AdamW's two moments); then the same allocations
 * replayed through an exact-class pool. Memory is deterministic: the same
 * allocations happen on any adapter, and with `--dry` (no kernels recorded)
 * a batch of 64 at 224² takes seconds on llvmpipe. Writes
 * `memory_profile.csv` (one row per model, phase and policy).
 *
 * ```sh
 * deno run -A scripts/memory_profile.ts --models slak_tiny,convnext_tiny --batch 1 --size 224
 * deno run -A scripts/memory_profile.ts --models convnext_tiny --fit-slack 1 --no-reclaim  # exact-class pool
 * deno run -A scripts/memory_profile.ts --models convnext_tiny --batch 64 --dry  # memory only
 * ```
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { createModel } from "../models/registry.ts";
 * import { profileStep } from "./memory_profile.ts";
 * await initGpu();
 * const { phases } = profileStep(createModel("convnext_cpu", { numClasses: 10 }), {
 *   batch: 1,
 *   size: 32,
 *   steps: 2,
 *   classes: 10,
 * });
 * console.log(phases.map((r) => r.phase)); // [ "forward", "backward", "optimiser", "step" ]
 * ```
 * @module
 */
import { parseFlags } from "../train/flags.ts";
import { toCsv, writeFileAtomic } from "../analysis/csv.ts";
import { backward, savedBytes } from "../ops/autograd.ts";
import { gpu, initGpu, runMain } from "../ops/gpu.ts";
import { softmaxCrossEntropy } from "../ops/loss.ts";
import { AdamW } from "../ops/optim.ts";
import {
  configurePool,
  peekTraceLength,
  poolStats,
  type PoolTrace,
  resetPoolPeaks,
  scope,
  startPoolTrace,
  stopPoolTrace,
  Tensor,
  trimPool,
} from "../ops/tensor.ts";
import { DEFAULT_POOL_POLICY, type PoolPolicy, replayTrace } from "../ops/buffer_pool.ts";
import type { Classifier } from "../models/module.ts";
import { createModel, modelInfo } from "../models/registry.ts";
import { seedInit } from "../models/module.ts";

const HELP = `usage: deno run -A scripts/memory_profile.ts [flags]

Peak live tensor bytes vs the pool's bytes per phase of a training step (AdamW).

  --models LIST     model names (default slak_tiny,convnext_tiny)
  --batch N         batch (default 1)
  --size R          image size (default 224)
  --classes N       classes (default 1000)
  --steps N         training steps; the last one is reported (default 3)
  --fit-slack X     a request may take a free buffer up to X times its size class (default 1.25)
  --no-reclaim      never return free buffers to the driver before the pool grows
  --headroom H      reclaim only past (1 + H) × the most bytes in use at once (default 0.2)
  --small-kib K     buffers under K KiB are never reclaimed (default 1024)
  --dry             record no kernels (values are garbage, allocations the same): batch 64
                    at 224² in seconds on any adapter
  --out DIR         output folder (default out/memory_profile/)
  --help`;

/** One phase of one step: bytes. */
export interface PhaseMemory {
  phase: "forward" | "backward" | "optimiser" | "step";
  peakLiveBytes: number;
  peakPoolBytes: number;
  /** Live tensor bytes when the phase ends. */
  endLiveBytes: number;
  /** Activations the tape holds for backward when the forward ends (0 for the other phases). */
  savedBytes: number;
  /** Pool buffers created during the phase (0 in a steady step but for churn). */
  created: number;
}

/** What {@linkcode profileStep} measured. */
export interface StepProfile {
  /** The last step's phases, then the whole step. */
  phases: PhaseMemory[];
  /** Every allocation of the run (see `PoolTrace`), and where the last step starts in it. */
  trace: PoolTrace;
  lastStepFrom: number;
}

/**
 * Run `steps` training steps (forward, cross-entropy, backward, AdamW, zeroed
 * gradients) of `model` on a seeded batch and return the last step's
 * {@linkcode PhaseMemory} per phase, then the whole step, with the trace of
 * every allocation from the input batch on.
 */
export function profileStep(
  model: Classifier,
  { batch, size, steps, classes = 1000 }: {
    batch: number;
    size: number;
    steps: number;
    classes?: number;
  },
): StepProfile {
  startPoolTrace();
  let trace: PoolTrace = [];
  let lastStepFrom = 0;
  const x = Tensor.randn([batch, 3, size, size], { seed: 7 });
  const labels = Array.from({ length: batch }, (_, i) => (i * 7919) % classes);
  model.train();
  const opt = new AdamW(model.parameters(), { lr: 1e-4, weightDecay: 0.05 });
  let rows: PhaseMemory[] = [];
  try {
    for (let s = 0; s < steps; s++) {
      rows = [];
      lastStepFrom = peekTraceLength();
      let start = poolStats();
      const phase = (name: PhaseMemory["phase"], saved = 0) => {
        const now = poolStats();
        rows.push({
          phase: name,
          peakLiveBytes: now.peakLiveBytes,
          peakPoolBytes: now.peakAllocatedBytes,
          endLiveBytes: now.liveBytes,
          savedBytes: saved,
          created: now.created - start.created,
        });
        resetPoolPeaks();
        start = now;
      };
      resetPoolPeaks();
      scope(() => {
        const loss = softmaxCrossEntropy(model.forward(x), labels);
        phase("forward", savedBytes(model.parameters()));
        backward(loss);
        phase("backward");
        opt.step();
        opt.zeroGrad();
      });
      phase("optimiser");
      rows.push(rows.reduce((a, r) => ({
        phase: "step" as const,
        peakLiveBytes: Math.max(a.peakLiveBytes, r.peakLiveBytes),
        peakPoolBytes: Math.max(a.peakPoolBytes, r.peakPoolBytes),
        endLiveBytes: r.endLiveBytes,
        savedBytes: Math.max(a.savedBytes, r.savedBytes),
        created: a.created + r.created,
      })));
    }
  } finally {
    opt.dispose();
    x.dispose();
    trace = stopPoolTrace();
  }
  return { phases: rows, trace, lastStepFrom };
}

const MIB = 2 ** 20;

const EXACT_POOL: PoolPolicy = { fitSlack: 1, reclaim: false, headroom: 0, smallBytes: 0 };

const policyName = (p: PoolPolicy) =>
  p.fitSlack === 1 && !p.reclaim
    ? "exact class"
    : `fit ${p.fitSlack}${
      p.reclaim ? ` + reclaim above ${p.smallBytes / 2 ** 10} KiB, headroom ${p.headroom}` : ""
    }`;

async function main(): Promise<void> {
  const values = parseFlags(Deno.args, {
    models: { type: "string", default: "slak_tiny,convnext_tiny" },
    batch: { type: "int", min: 1, max: 4096, default: 1 },
    size: { type: "int", min: 32, max: 4096, default: 224 },
    classes: { type: "int", min: 1, max: 100_000, default: 1000 },
    steps: { type: "int", min: 1, max: 100, default: 3 },
    "fit-slack": { type: "number", min: 1, max: 16, default: DEFAULT_POOL_POLICY.fitSlack },
    reclaim: { type: "boolean", default: DEFAULT_POOL_POLICY.reclaim },
    headroom: { type: "number", min: 0, max: 100, default: DEFAULT_POOL_POLICY.headroom },
    "small-kib": {
      type: "number",
      min: 0,
      max: 2 ** 30,
      default: DEFAULT_POOL_POLICY.smallBytes / 2 ** 10,
    },
    dry: { type: "boolean", default: false },
    out: { type: "string", default: "out/memory_profile/" },
    help: { type: "boolean", short: "h" },
  });
  if (values.help) {
    console.log(HELP);
    return;
  }
  const names = values.models.split(",").filter(Boolean);
  for (const n of names) modelInfo(n); // unknown names fail before the GPU starts
  const out = values.out.replace(/\/+$/, "");
  const policy: PoolPolicy = {
    fitSlack: values["fit-slack"],
    reclaim: values.reclaim,
    headroom: values.headroom,
    smallBytes: values["small-kib"] * 2 ** 10,
  };
  configurePool(policy);
  await initGpu();
  if (values.dry) {
    // Allocations are decided on the CPU when ops are recorded: without the kernels they are the same.
    gpu().dispatch = () => {};
  }
  const rows: Record<string, string | number>[] = [];
  const mib = (bytes: number) => Number((bytes / MIB).toFixed(2));
  const columns = [
    "model",
    "batch",
    "res",
    "policy",
    "source",
    "phase",
    "peak_live_mib",
    "peak_pool_mib",
    "pool_over_live",
    "end_live_mib",
    "saved_mib",
    "fixed_mib",
    "created",
  ];
  console.log(columns.join(","));
  const emit = (row: Record<string, string | number>) => {
    rows.push(row);
    console.log(columns.map((c) => row[c]).join(","));
  };
  for (const name of names) {
    seedInit(0);
    const model = createModel(name, { numClasses: values.classes });
    const base = {
      model: name,
      batch: values.batch,
      res: values.size,
      // Parameters, their gradients and AdamW's two moments.
      fixed_mib: mib(4 * 4 * model.numParams()),
    };
    try {
      const { phases, trace, lastStepFrom } = profileStep(model, values);
      for (const p of phases) {
        emit({
          ...base,
          policy: policyName(policy),
          source: "measured",
          phase: p.phase,
          peak_live_mib: mib(p.peakLiveBytes),
          peak_pool_mib: mib(p.peakPoolBytes),
          pool_over_live: Number((p.peakPoolBytes / p.peakLiveBytes).toFixed(3)),
          end_live_mib: mib(p.endLiveBytes),
          saved_mib: mib(p.savedBytes),
          created: p.created,
        });
      }
      // The same allocations through the exact-class pool, for comparison.
      const r = replayTrace(trace, lastStepFrom, EXACT_POOL);
      emit({
        ...base,
        policy: policyName(EXACT_POOL),
        source: "replayed",
        phase: "step",
        peak_live_mib: mib(r.peakLiveBytes),
        peak_pool_mib: mib(r.peakAllocatedBytes),
        pool_over_live: Number((r.peakAllocatedBytes / r.peakLiveBytes).toFixed(3)),
        end_live_mib: "",
        saved_mib: "",
        created: r.created,
      });
    } finally {
      model.dispose(); // every materialised parameter and buffer, with its gradient
      trimPool();
    }
    await writeFileAtomic(`${out}/memory_profile.csv`, toCsv(rows));
  }
  console.log(`wrote ${out}/memory_profile.csv`);
}

if (import.meta.main) await runMain(main);
