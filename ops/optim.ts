/**
 * Optimisers that update parameters in place on the GPU: AdamW (decoupled
 * weight decay, as `torch.optim.AdamW`) and SGD with momentum (as
 * `torch.optim.SGD`). The learning rate and step count travel as uniforms,
 * so a schedule that changes them every step compiles nothing new.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { backward } from "./autograd.ts";
 * import { mul, sum } from "./elementwise.ts";
 * import { AdamW } from "./optim.ts";
 * await initGpu();
 * const w = Tensor.from([1, -2, 3]);
 * w.requiresGrad = true;
 * const opt = new AdamW([w], { lr: 0.1 });
 * for (let i = 0; i < 10; i++) {
 *   backward(sum(mul(w, w)));
 *   opt.step();
 *   opt.zeroGrad();
 * }
 * console.log(await w.read()); // moves towards 0
 * ```
 * @module
 */
import { gpu } from "./gpu.ts";
import { flatMain, launch, memoize, storage, uniforms, WG } from "./kernel.ts";
import { f32, flatIndex, grid1d, keep, Tensor } from "./tensor.ts";

/** Parameters sharing one weight decay. */
export interface ParamGroup {
  params: Tensor[];
  weightDecay?: number;
}

/**
 * Split named parameters into a decayed and a non-decayed group as timm's
 * `param_groups_weight_decay` does: 1-D tensors (norm weights, biases,
 * LayerScale gammas) and names ending in `.bias` or listed in `skip` get no
 * weight decay.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { AdamW, decayGroups } from "./optim.ts";
 * await initGpu();
 * const named: [string, Tensor][] = [["fc.weight", Tensor.ones([2, 2])], ["fc.bias", Tensor.zeros([2])]];
 * const groups = decayGroups(named, 0.05);
 * console.log(groups.map((g) => [g.params.length, g.weightDecay])); // [[1, 0.05], [1, 0]]
 * const opt = new AdamW(groups, { lr: 1e-3 });
 * console.log(opt.lr); // 0.001
 * ```
 */
export function decayGroups(
  named: Iterable<[string, Tensor]>,
  weightDecay: number,
  skip: (name: string) => boolean = () => false,
): ParamGroup[] {
  const decay: Tensor[] = [];
  const noDecay: Tensor[] = [];
  for (const [name, p] of named) {
    if (p.rank <= 1 || name.endsWith(".bias") || skip(name)) noDecay.push(p);
    else decay.push(p);
  }
  return [{ params: decay, weightDecay }, { params: noDecay, weightDecay: 0 }];
}

function normaliseGroups(
  params: Tensor[] | ParamGroup[],
  weightDecay: number,
): Required<ParamGroup>[] {
  if (params.length === 0) return [];
  if (params[0] instanceof Tensor) return [{ params: params as Tensor[], weightDecay }];
  return (params as ParamGroup[]).map((g) => ({
    params: g.params,
    weightDecay: g.weightDecay ?? weightDecay,
  }));
}

/** The optimiser interface the trainer uses. */
export interface Optimizer {
  lr: number;
  step(): void;
  zeroGrad(): void;
  /** Moments and step count, read back for checkpoints. */
  stateDict(): Promise<OptimizerState>;
  loadStateDict(state: OptimizerState): void;
  /** The state tensors of one parameter (none before its first step); see `GpuOptimizer.moments`. */
  moments?(p: Tensor): readonly Tensor[];
}

/** Serialisable optimiser state: step count and one list of buffers per parameter. */
export interface OptimizerState {
  step: number;
  buffers: Float32Array[][];
}

abstract class GpuOptimizer implements Optimizer {
  lr: number;
  protected groups: Required<ParamGroup>[];
  /** Per parameter, its state tensors (allocated lazily, zero-initialised). */
  protected state: Map<Tensor, Tensor[]> = new Map();
  protected steps = 0;
  protected abstract readonly buffersPerParam: number;

  constructor(params: Tensor[] | ParamGroup[], lr: number, weightDecay: number) {
    this.lr = lr;
    this.groups = normaliseGroups(params, weightDecay);
  }

  protected get params(): Tensor[] {
    return this.groups.flatMap((g) => g.params);
  }

  protected buffers(p: Tensor): Tensor[] {
    let s = this.state.get(p);
    if (!s) {
      s = Array.from({ length: this.buffersPerParam }, () => keep(Tensor.zeros(p.shape)));
      this.state.set(p, s);
    }
    return s;
  }

  /**
   * The state tensors of `p` (AdamW: `exp_avg`, `exp_avg_sq`; SGD: the
   * momentum buffer), or none before its first step. Sparse training
   * multiplies them by its masks in place.
   */
  moments(p: Tensor): readonly Tensor[] {
    return this.state.get(p) ?? [];
  }

  /** Number of steps taken. */
  get stepCount(): number {
    return this.steps;
  }

  zeroGrad(): void {
    for (const p of this.params) {
      p.grad?.dispose();
      p.grad = null;
    }
  }

  abstract step(): void;

  async stateDict(): Promise<OptimizerState> {
    // Every copy is queued before the first wait: one GPU round trip, not one per parameter.
    const buffers = await Promise.all(
      this.params.map((p) => Promise.all(this.buffers(p).map((b) => b.read()))),
    );
    return { step: this.steps, buffers };
  }

  loadStateDict(state: OptimizerState): void {
    const params = this.params;
    if (state.buffers.length !== params.length) {
      throw new Error(
        `optimizer state has ${state.buffers.length} parameters, model has ${params.length}`,
      );
    }
    params.forEach((p, i) => {
      const old = this.state.get(p);
      old?.forEach((t) => t.dispose());
      const bufs = state.buffers[i];
      if (bufs.length !== this.buffersPerParam || bufs.some((b) => b.length !== p.size)) {
        throw new Error(`optimizer state for parameter ${i} does not match shape [${p.shape}]`);
      }
      this.state.set(p, bufs.map((b) => keep(Tensor.from(b, p.shape))));
    });
    this.steps = state.step;
  }

  /** Free the optimiser's state tensors. */
  dispose(): void {
    for (const s of this.state.values()) s.forEach((t) => t.dispose());
    this.state.clear();
  }
}

/** AdamW's per-step values, as a uniform block bound after the buffers of `params` parameters. */
function adamWParams(params: number, decay: number, stepSize: number, sqrtBc2: number) {
  return uniforms(4 * params, {
    decay: ["f32", decay],
    stepSize: ["f32", stepSize],
    sqrtBc2: ["f32", sqrtBc2],
  });
}

/** Most parameters one AdamW dispatch updates (four storage buffers each). */
const ADAMW_PARAMS_PER_DISPATCH = 8;

/**
 * AdamW's kernel over parameters of `sizes` values, each bound as `p_j`,
 * `g_j`, `m_j`, `v_j`: one dispatch updates several parameters (a training
 * step launched one per parameter, a quarter of all its dispatches), each
 * in its own range of workgroups, with the same arithmetic per value.
 * Cached: the same chunks come back every step.
 */
const adamWSource = memoize((sizes: number[], b1: number, b2: number, eps: number) => {
  const names = sizes.flatMap((_, j) => [`p_${j}!`, `g_${j}`, `m_${j}!`, `v_${j}!`]);
  let start = 0;
  const segments = sizes.map((n, j) => {
    const end = start + Math.ceil(n / WG) * WG;
    const segment = `  if (t < ${end}u) {
    let i = t - ${start}u;
    if (i >= ${n}u) { return; }
    let g0 = g_${j}[i];
    let pv = p_${j}[i] * P.decay;
    let mv = ${f32(b1)} * m_${j}[i] + ${f32(1 - b1)} * g0;
    let vv = ${f32(b2)} * v_${j}[i] + ${f32(1 - b2)} * g0 * g0;
    m_${j}[i] = mv;
    v_${j}[i] = vv;
    p_${j}[i] = pv - P.stepSize * mv / (sqrt(vv) / P.sqrtBc2 + ${f32(eps)});
    return;
  }`;
    start = end;
    return segment;
  });
  return `${storage(...names)}
${adamWParams(sizes.length, 0, 0, 0).decl}
@compute @workgroup_size(${WG})
fn main(@builtin(global_invocation_id) gid: vec3u, @builtin(num_workgroups) nwg: vec3u) {
  let t = ${flatIndex()};
${segments.join("\n")}
}`;
});

/** SGD's per-step values, as a uniform block bound after its three buffers. */
function sgdParams(lr: number, wd: number, first: number) {
  return uniforms(3, { lr: ["f32", lr], wd: ["f32", wd], first: ["u32", first] });
}

/** SGD's kernel over `n` values (cached as {@linkcode adamWSource}). */
const sgdSource = memoize((n: number, momentum: number, nesterov: boolean) => {
  const mu = f32(momentum);
  return `${storage("p!", "g", "b!")}
${sgdParams(0, 0, 0).decl}
${flatMain(n)}
  let d = g[i] + P.wd * p[i];
  var bv = d;
  if (P.first == 0u) { bv = ${mu} * b[i] + d; }
  b[i] = bv;
  ${nesterov ? `let upd = d + ${mu} * bv;` : "let upd = bv;"}
  p[i] = p[i] - P.lr * upd;
}`;
});

/** Options of {@linkcode AdamW}; defaults are PyTorch's except weight decay (timm's 0.05). */
export interface AdamWOptions {
  lr?: number;
  betas?: [number, number];
  eps?: number;
  weightDecay?: number;
}

/**
 * AdamW: `p ← p·(1 − lr·wd)`, then the Adam update with bias correction,
 * in PyTorch's exact arithmetic order.
 */
export class AdamW extends GpuOptimizer {
  protected readonly buffersPerParam = 2;
  readonly betas: [number, number];
  readonly eps: number;

  constructor(params: Tensor[] | ParamGroup[], opts: AdamWOptions = {}) {
    super(params, opts.lr ?? 1e-3, opts.weightDecay ?? 0.05);
    this.betas = opts.betas ?? [0.9, 0.999];
    this.eps = opts.eps ?? 1e-8;
  }

  step(): void {
    this.steps++;
    const [b1, b2] = this.betas;
    const bc1 = 1 - b1 ** this.steps;
    const bc2 = 1 - b2 ** this.steps;
    const perDispatch = Math.max(
      1,
      Math.min(
        ADAMW_PARAMS_PER_DISPATCH,
        Math.floor(gpu().limits.maxStorageBuffersPerShaderStage / 4),
      ),
    );
    for (const group of this.groups) {
      const decay = 1 - this.lr * group.weightDecay;
      let chunk: Tensor[] = [];
      const bound = new Set<GPUBuffer>();
      const launchChunk = () => {
        if (!chunk.length) return;
        const u = adamWParams(chunk.length, decay, this.lr / bc1, Math.sqrt(bc2));
        const sizes = chunk.map((p) => p.size);
        const tensors = chunk.flatMap((p) => [p, p.grad!, ...this.buffers(p)]);
        const groups = grid1d(sizes.reduce((a, n) => a + Math.ceil(n / WG) * WG, 0));
        launch(adamWSource(sizes, b1, b2, this.eps), tensors, groups, u.data);
        chunk = [];
        bound.clear();
      };
      for (const p of group.params) {
        if (!p.grad) continue;
        const buffers = [p, p.grad, ...this.buffers(p)].map((t) => t.buffer);
        // A buffer bound twice, once writable, is a conflict: such a parameter starts a new dispatch.
        if (chunk.length === perDispatch || buffers.some((b) => bound.has(b))) launchChunk();
        chunk.push(p);
        for (const b of buffers) bound.add(b);
      }
      launchChunk();
    }
  }
}

/** Options of {@linkcode SGD}. */
export interface SGDOptions {
  lr?: number;
  momentum?: number;
  weightDecay?: number;
  nesterov?: boolean;
}

/**
 * SGD with momentum and (coupled, L2) weight decay, as `torch.optim.SGD`.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Tensor } from "./tensor.ts";
 * import { backward } from "./autograd.ts";
 * import { sum } from "./elementwise.ts";
 * import { SGD } from "./optim.ts";
 * await initGpu();
 * const w = Tensor.from([1, 2]);
 * w.requiresGrad = true;
 * const opt = new SGD([w], { lr: 0.1, momentum: 0 });
 * backward(sum(w)); // gradient 1 everywhere
 * opt.step();
 * console.log(await w.read()); // Float32Array [0.9, 1.9]
 * ```
 */
export class SGD extends GpuOptimizer {
  protected readonly buffersPerParam = 1;
  readonly momentum: number;
  readonly nesterov: boolean;

  constructor(params: Tensor[] | ParamGroup[], opts: SGDOptions = {}) {
    super(params, opts.lr ?? 0.1, opts.weightDecay ?? 0);
    this.momentum = opts.momentum ?? 0.9;
    this.nesterov = opts.nesterov ?? false;
  }

  step(): void {
    this.steps++;
    // PyTorch starts the momentum buffer at the first gradient rather than decaying from zero.
    const first = this.steps === 1 ? 1 : 0;
    for (const group of this.groups) {
      for (const p of group.params) {
        if (!p.grad) continue;
        const [buf] = this.buffers(p);
        const u = sgdParams(this.lr, group.weightDecay, first);
        launch(sgdSource(p.size, this.momentum, this.nesterov), [p, p.grad, buf], p.size, u.data);
      }
    }
  }
}
