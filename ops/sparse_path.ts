/**
 * Sparse or dense, by measurement: a masked stride-1 depthwise convolution
 * gives the same result on the sparse kernels (`sparse_depthwise.ts`, only
 * the active taps) and on the dense ones with the masked weights; which is
 * faster depends on the GPU, the shape and the density. Untuned, a density
 * threshold decides ({@linkcode SPARSE_DEPTHWISE_THRESHOLD}); planned, the
 * planner times one forward and backward of each, under the key
 * `sparse.path|shape,density` (density to a tenth), after it has planned the
 * kernels of both, and keeps the faster.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
 * import { depthwiseMaybeSparse } from "./sparse_path.ts";
 * await initGpu();
 * const plan = SparseDepthwisePlan.fromMask(SparseDepthwisePlan.randomMask(2, 7, 3, 0.3, 1), [2, 1, 7, 3]);
 * const y = depthwiseMaybeSparse(Tensor.randn([1, 2, 6, 6]), Tensor.randn([2, 1, 7, 3]), plan, null);
 * console.log(y.shape); // [1, 2, 6, 6]
 * plan.dispose();
 * ```
 * @module
 */
import { backward } from "./autograd.ts";
import { depthwiseConv2d, type DepthwiseOptions } from "./depthwise.ts";
import {
  plainDepthwiseBackwardFilter,
  plainDepthwiseBackwardInput,
  plainDepthwiseForward,
} from "./depthwise_plain.ts";
import { depthwisePlan, depthwiseShapeKey } from "./depthwise_plan.ts";
import { type DepthwiseShape, depthwiseWork } from "./depthwise_shape.ts";
import { mul } from "./elementwise.ts";
import { type PlanJob, planKey, planner } from "./planner.ts";
import {
  depthwiseShapeOf,
  sparseBenchInputs,
  sparseConfigKey,
  sparseDepthwiseConfigs,
  sparseDepthwiseConv2d,
  type SparseDepthwisePlan,
} from "./sparse_depthwise.ts";
import { scope, type Tensor } from "./tensor.ts";

/**
 * Density (active taps / all taps of a kernel) below which
 * {@linkcode depthwiseMaybeSparse} runs the sparse kernels until the planner
 * has timed both. Measured with `scripts/sparse_speed.ts` on an H200 (SLaK-T
 * stage 1: 64×124×56², 51×5 and 5×51, untuned, back to back): forward and
 * backward together, sparse ran ×0.99 of dense's speed at density 0.6 and
 * ×1.08 at 0.2, crossing over at ≈ 0.55.
 *
 * @example
 * ```ts
 * import { SPARSE_DEPTHWISE_THRESHOLD } from "./sparse_path.ts";
 * console.log(SPARSE_DEPTHWISE_THRESHOLD); // 0.55
 * ```
 */
export const SPARSE_DEPTHWISE_THRESHOLD = 0.55;

/** The planner's choice of path for one shape and density. */
export interface SparsePathChoice {
  sparse: boolean;
}

const isPath = (c: unknown): c is SparsePathChoice =>
  typeof c === "object" && c !== null && typeof (c as SparsePathChoice).sparse === "boolean";

/**
 * Sparse when it pays, dense otherwise: {@linkcode sparseDepthwiseConv2d}
 * when `plan` is given, the stride is 1 and either `threshold` is given and
 * the plan's density is below it, or the planner chose the sparse path for
 * this shape and density (untuned: density below
 * {@linkcode SPARSE_DEPTHWISE_THRESHOLD}); else `depthwiseConv2d(x, w, bias,
 * opts)`. Both give the same result when `w` is already masked (as
 * `sparse/masks.ts` keeps it after every step).
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { SparseDepthwisePlan } from "./sparse_depthwise.ts";
 * import { depthwiseMaybeSparse } from "./sparse_path.ts";
 * await initGpu();
 * const plan = SparseDepthwisePlan.fromMask(SparseDepthwisePlan.randomMask(2, 7, 3, 0.3, 1), [2, 1, 7, 3]);
 * const x = Tensor.randn([1, 2, 6, 6]);
 * const w = Tensor.randn([2, 1, 7, 3]);
 * console.log(depthwiseMaybeSparse(x, w, plan, null, {}, 0.5).shape); // [1, 2, 6, 6]: sparse
 * plan.dispose();
 * ```
 */
export function depthwiseMaybeSparse(
  x: Tensor,
  w: Tensor,
  plan: SparseDepthwisePlan | null,
  bias: Tensor | null,
  opts: DepthwiseOptions = {},
  threshold?: number,
): Tensor {
  if (plan && (opts.stride ?? 1) === 1) {
    const sparse = threshold === undefined
      ? sparsePath(depthwiseShapeOf(x, w, opts), plan.density)
      : plan.density < threshold;
    if (sparse) return sparseDepthwiseConv2d(x, w, plan, bias, opts);
  }
  return depthwiseConv2d(x, w, bias, opts);
}

/** The planner's path for `s` at `density`, else the threshold's. */
function sparsePath(s: DepthwiseShape, density: number): boolean {
  const p = planner();
  const choice = p.choose(
    "sparse.path",
    sparseConfigKey(s, density),
    isPath,
    () => pathJob(s, density),
  );
  const sparse = choice?.sparse ?? density < SPARSE_DEPTHWISE_THRESHOLD;
  // While the planner collects a step's keys, the kernels of the path not taken are looked up
  // too (the path taken looks up its own), so that both get planned before the path is chosen.
  if (p.collecting) {
    if (sparse) depthwisePlan(s, 1);
    else sparseDepthwiseConfigs(s, density);
  }
  return sparse;
}

/**
 * The planner's job for the path of `s` at `density`: one forward and
 * backward (input and filter gradients) on each path, on a random mask of
 * that density, checked against the plain kernels on the masked weights (the
 * filter gradient at the active taps: the sparse kernels leave the others
 * at zero).
 */
function pathJob(s: DepthwiseShape, density: number): PlanJob<SparsePathChoice> {
  const dense = depthwiseShapeKey(s);
  const sparseKey = sparseConfigKey(s, density);
  return {
    work: depthwiseWork(s) * density,
    // Both paths' kernels are what it times.
    after: [
      ...["forward", "backwardInput", "filter", "fuse"].map((k) =>
        planKey(`depthwise.${k}`, dense)
      ),
      ...["forward", "backwardInput", "filter"].map((k) => planKey(`sparse.${k}`, sparseKey)),
    ],
    candidates: () => {
      const sparse = density < SPARSE_DEPTHWISE_THRESHOLD;
      return [{ sparse }, { sparse: !sparse }];
    },
    bench: () => {
      const { plan, x, masked: w, gy, g, dispose } = sparseBenchInputs(s, density);
      const opts = { padding: [s.ph, s.pw] as [number, number] };
      // y, x's gradient and w's gradient on the path (masked when `masked`).
      const pass = (sparse: boolean, masked: boolean): Tensor[] => {
        x.requiresGrad = w.requiresGrad = true;
        try {
          const y = scope(() => {
            const y = sparse
              ? sparseDepthwiseConv2d(x, w, plan, null, opts)
              : depthwiseConv2d(x, w, null, opts);
            backward(y, gy);
            return y;
          });
          const [gx, gw] = [x.grad!, w.grad!];
          x.grad = w.grad = null;
          if (!masked) return [y, gx, gw];
          const active = mul(gw, plan.mask);
          gw.dispose();
          return [y, gx, active];
        } finally {
          x.requiresGrad = w.requiresGrad = false;
        }
      };
      return {
        run: ({ sparse }) => pass(sparse, true),
        time: ({ sparse }) => pass(sparse, false).forEach((t) => t.dispose()),
        reference: () => {
          const gw = plainDepthwiseBackwardFilter(gy, x, g);
          const active = mul(gw, plan.mask);
          gw.dispose();
          return [
            plainDepthwiseForward(x, w, null, g),
            plainDepthwiseBackwardInput(gy, w, g),
            active,
          ];
        },
        dispose,
      };
    },
  };
}
