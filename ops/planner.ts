/**
 * The kernel planner: the one owner of every per-shape kernel choice (dense
 * direct and FFT depthwise tiles, sparse depthwise tiles, matrix-product
 * tiles), as `cudnn.benchmark` is for PyTorch.
 *
 * An op asks {@linkcode Planner.choose} for its choice under a key made of
 * the op, the shape and the dtype; the planner answers with a forced choice
 * (tests), else a planned one, else `undefined` and the op takes its
 * heuristic. {@linkcode Planner.plan} runs one recorded step supplied by the
 * caller (a model's forward and backward), collects every key that ran with
 * a job that knows the key's candidates, then times the candidates of each
 * key. A candidate that raises a GPU error or whose output differs from the
 * plain reference kernel never wins. Plans are keyed by the adapter too, and
 * serialise to versioned JSON ({@linkcode Planner.toJSON},
 * {@linkcode Planner.load}) for checkpoints and the plan cache.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { planner } from "./planner.ts";
 * await initGpu();
 * const p = planner();
 * p.force("gemm", { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4 });
 * p.force("gemm", null);
 * console.log(p.toJSON().version); // 1
 * ```
 * @module
 */
import { relativeDifferences } from "./compare.ts";
import { type Gpu, gpu } from "./gpu.ts";
import type { Tensor } from "./tensor.ts";
import { medianOf, timeGpu, timeInterleaved, TUNE_MIN_MS, TUNE_WARMUP_MS } from "./timing.ts";

/** Version of the JSON that {@linkcode Planner.toJSON} writes. */
export const PLANS_VERSION = 1;

/** How many candidates a job may offer (the caller's bound, or none). */
export interface CandidateOptions {
  /** Planning on a software adapter: offer few, small candidates. */
  software: boolean;
  /** At most about this many candidates, when given (the job decides how to apply it). */
  max?: number;
}

/**
 * The candidates without repeats (equal by their JSON), first occurrence
 * kept: a job's variants of its heuristic often fit back onto one config.
 *
 * @example
 * ```ts
 * import { distinctCandidates } from "./planner.ts";
 * console.log(distinctCandidates([{ tile: 4 }, { tile: 8 }, { tile: 4 }])); // [{ tile: 4 }, { tile: 8 }]
 * ```
 */
export function distinctCandidates<C>(list: C[]): C[] {
  const seen = new Set<string>();
  return list.filter((c) => {
    const k = JSON.stringify(c);
    if (seen.has(k)) return false;
    seen.add(k);
    return true;
  });
}

/** The work of one key, run on inputs of its own. */
export interface PlanBench<C> {
  /** Record the work under `choice`; returns the outputs to compare (the caller disposes them). */
  run(choice: C): Tensor[];
  /** The same work by the plain reference kernel, in the order of `run`'s outputs. */
  reference(): Tensor[];
  /**
   * Record the work under `choice` for timing only (optional; default: `run`, its outputs
   * disposed). It may write the same outputs every time: only its GPU time counts, so work
   * that `run` does to give each call fresh outputs (filling them) stays out of the timing.
   */
  time?(choice: C): void;
  /** Free the inputs. */
  dispose(): void;
}

/** What the planner needs to plan one key. */
export interface PlanJob<C> {
  /** The candidates, the op's heuristic first. */
  candidates(opts: CandidateOptions): C[];
  /** Inputs of the key's shape, and how to run a candidate and the reference on them. */
  bench(): PlanBench<C>;
  /**
   * The key's work per launch (multiply-adds, say; only its order matters): under a
   * {@linkcode PlanOptions.budgetMs} the keys with the most work per step (work per launch
   * times launches per step) are planned first. Default 0.
   */
  work?: number;
  /**
   * Full keys ({@linkcode planKey}) whose plans this job's candidates or
   * bench read: among the keys planned together, it is planned after them,
   * whatever the order would otherwise be.
   */
  after?: readonly string[];
}

/**
 * The full key of `op` for `shape`: what {@linkcode Planner.choose} files
 * the choice under, and what plans and {@linkcode PlanJob.after} name.
 *
 * @example
 * ```ts
 * import { planKey } from "./planner.ts";
 * console.log(planKey("gemm", "1x8x8x8")); // "gemm|1x8x8x8|f32"
 * ```
 */
export function planKey(op: string, shape: string): string {
  return `${op}|${shape}|f32`;
}

/** Options of {@linkcode Planner.plan}. */
export interface PlanOptions {
  /**
   * Plan on a software adapter (llvmpipe) too; without it, planning there is
   * skipped (the heuristics stay, and a run stays fast). Tests use it.
   */
  software?: boolean;
  /** At most this many candidates per key (default: the job's own bound; 2 on a software adapter). */
  maxCandidates?: number;
  /** Plan again the keys that already have a plan. */
  retune?: boolean;
  /** Timed runs per candidate (median); default 3, 1 on a software adapter. */
  runs?: number;
  /** Largest accepted difference from the reference, relative to its largest magnitude. */
  tolerance?: number;
  /** Plan only the keys of these ops (e.g. `["sparse.forward"]`); the others keep their heuristic. */
  ops?: readonly string[];
  /**
   * Called (and awaited) after each key is planned, with how many of the `total` keys to plan
   * are done: `planWithCache` saves the cache there, so a run stopped while planning keeps
   * the plans it made.
   */
  onPlanned?: (row: PlanRow, done: number, total: number) => unknown;
  /**
   * Wall ms that planning may take. The keys are planned heaviest first (their
   * {@linkcode PlanJob.work} times the times the step launches them); a key is not started
   * when the time spent plus the mean of the keys planned so far would pass the budget. The
   * keys left are reported as `deferred`: they keep their heuristic now, and the next plan
   * (the next run, with a plan cache) picks them up. Default: no bound.
   */
  budgetMs?: number;
}

/**
 * A key that {@linkcode Planner.collect} found: its job, and how many times
 * the step looked it up.
 */
export interface CollectedKey {
  job: () => PlanJob<unknown>;
  launches: number;
}

/** One planned key: what {@linkcode Planner.plan} reports. */
export interface PlanRow {
  key: string;
  /** Candidates offered, and those rejected (GPU error or wrong output) with the reason. */
  candidates: number;
  rejected: { choice: unknown; reason: string }[];
  /** GPU ms of the heuristic (NaN when rejected or not timed) and of the chosen candidate. */
  heuristicMs: number;
  bestMs: number;
  /**
   * Wall ms spent compiling and checking the candidates, and timing those that passed (which
   * includes compiling the next key's candidates: that overlaps the timed rounds).
   */
  checkMs: number;
  timeMs: number;
  /** The plan stored, or null when every candidate was rejected (the heuristic stays). */
  choice: unknown;
}

/** What {@linkcode Planner.plan} did. */
export interface PlanReport {
  /** Keys the step ran (full keys: `op|shape|dtype`). */
  keys: string[];
  /** Keys planned now, one row each. */
  planned: PlanRow[];
  /** Keys that already had a plan (restored or planned before) and were left as they are. */
  reused: number;
  /** Why nothing was planned, when nothing was. */
  skipped?: string;
  /** Keys left unplanned when {@linkcode PlanOptions.budgetMs} ran out (their heuristic runs). */
  deferred?: string[];
}

/**
 * Move each key with {@linkcode PlanJob.after} right behind the last of
 * those keys in `todo` (in place; the others keep their order).
 */
function afterTheirInputs(todo: { key: string; job: PlanJob<unknown> }[]): void {
  // Each move goes later and a key that reads no plans never moves: at most one pass per key.
  for (let moves = 0, i = 0; i < todo.length && moves <= todo.length * todo.length; i++) {
    const after = todo[i].job.after;
    if (!after?.length) continue;
    let last = -1;
    todo.forEach((t, j) => {
      if (after.includes(t.key)) last = j;
    });
    if (last > i) {
      todo.splice(last, 0, ...todo.splice(i, 1));
      i--;
      moves++;
    }
  }
}

/** The shape part of a full key (`op|shape|dtype`). */
const shapeOf = (key: string) => key.split("|")[1];

/** One plan in {@linkcode SavedPlans}. */
export interface SavedPlan {
  /** The adapter it was made on (see {@linkcode adapterKey}). */
  adapter: string;
  /** `op|shape|dtype`. */
  key: string;
  choice: unknown;
}

/** The JSON form of a planner's plans. */
export interface SavedPlans {
  version: number;
  plans: SavedPlan[];
}

/** Bounds on loaded plans: a hostile file must not cost much memory or time. */
const MAX_PLANS = 100_000;
const MAX_KEY_CHARS = 1000;
const MAX_CHOICE_DEPTH = 3;

/**
 * The adapter part of a plan key: vendor, architecture and the driver's
 * description, as the adapter reports them.
 *
 * @example
 * ```ts
 * import { initGpu, gpu } from "./gpu.ts";
 * import { adapterKey } from "./planner.ts";
 * await initGpu();
 * console.log(adapterKey(gpu()).length > 0); // true
 * ```
 */
export function adapterKey(g: Gpu): string {
  const { vendor, architecture, description } = g.adapter;
  return [vendor, architecture, description || g.description].join(" / ");
}

/** Finite numbers, booleans, null and short strings, in objects at most a few levels deep. */
function plainValue(v: unknown, depth: number): boolean {
  if (v === null || typeof v === "boolean") return true;
  if (typeof v === "number") return Number.isFinite(v);
  if (typeof v === "string") return v.length <= MAX_KEY_CHARS;
  if (typeof v !== "object" || Array.isArray(v) || depth >= MAX_CHOICE_DEPTH) return false;
  const entries = Object.entries(v as Record<string, unknown>);
  return entries.length <= 32 && entries.every(([, x]) => plainValue(x, depth + 1));
}

/**
 * Check that `json` has the structure of {@linkcode SavedPlans} within the
 * size bounds, and return it; throws a one-line error naming what is wrong.
 *
 * @example
 * ```ts
 * import { validSavedPlans } from "./planner.ts";
 * console.log(validSavedPlans({ version: 1, plans: [] }).plans.length); // 0
 * ```
 */
export function validSavedPlans(json: unknown): SavedPlans {
  if (typeof json !== "object" || json === null) throw new Error("expected a JSON object");
  const { version, plans } = json as Record<string, unknown>;
  if (version !== PLANS_VERSION) {
    throw new Error(`expected version ${PLANS_VERSION}, got ${JSON.stringify(version)}`);
  }
  if (!Array.isArray(plans) || plans.length > MAX_PLANS) {
    throw new Error(`expected "plans" to be an array of at most ${MAX_PLANS} plans`);
  }
  for (const p of plans) {
    const ok = typeof p === "object" && p !== null &&
      typeof p.adapter === "string" && p.adapter.length <= MAX_KEY_CHARS &&
      typeof p.key === "string" && p.key.length <= MAX_KEY_CHARS &&
      plainValue(p.choice, 0);
    if (!ok) throw new Error(`malformed plan ${JSON.stringify(p).slice(0, 200)}`);
  }
  return { version, plans: plans as SavedPlan[] };
}

/**
 * The kernel choices of one GPU: see the module documentation.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { Planner } from "./planner.ts";
 * const p = new Planner(await initGpu()); // a fresh one; the ops use planner()
 * console.log(p.adapter.length > 0, p.timings); // true 0
 * ```
 */
export class Planner {
  /** The adapter this planner's own plans are for. */
  readonly adapter: string;
  readonly #gpu: Gpu;
  /** Plans of this adapter by key. */
  #plans = new Map<string, unknown>();
  /** Plans loaded for other adapters: kept so that saving them again loses nothing. */
  #foreign = new Map<string, SavedPlan>();
  #forced = new Map<string, unknown>();
  #collecting: Map<string, CollectedKey> | null = null;
  /** Candidate timings run so far (one per candidate per key planned): tests count them. */
  timings = 0;

  /** A planner for `g` with no plans. Ops use the one of {@linkcode planner}. */
  constructor(g: Gpu) {
    this.#gpu = g;
    this.adapter = adapterKey(g);
  }

  /**
   * The choice of `op` for `shape` (f32): the forced one, else the planned
   * one when `valid` accepts it, else `undefined` (the op's heuristic). While
   * {@linkcode plan} collects, remembers the key with `job` so that it gets
   * planned.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { planner } from "./planner.ts";
   * await initGpu();
   * const valid = (c: unknown): c is { n: number } => typeof c === "object";
   * const job = () => ({ candidates: () => [], bench: () => { throw new Error("unused"); } });
   * console.log(planner().choose("demo", "1,2", valid, job)); // undefined
   * ```
   */
  choose<C>(
    op: string,
    shape: string,
    valid: (c: unknown) => c is C,
    job: () => PlanJob<C>,
  ): C | undefined {
    if (this.#forced.has(op)) {
      const c = this.#forced.get(op);
      if (!valid(c)) throw new Error(`planner: the choice forced for ${op} is invalid: ${c}`);
      return c;
    }
    const key = planKey(op, shape);
    if (this.#collecting) {
      const seen = this.#collecting.get(key);
      if (seen) seen.launches++;
      else this.#collecting.set(key, { job, launches: 1 });
    }
    const c = this.#plans.get(key);
    return c !== undefined && valid(c) ? c : undefined;
  }

  /**
   * Force `choice` for every shape of `op` (tests use tiny tiles to exercise
   * partial tiles; studies force one tiling); `null` lifts it.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { planner } from "./planner.ts";
   * await initGpu();
   * planner().force("gemm", { bm: 8, bn: 8, bk: 4, tm: 4, tn: 4 });
   * console.log(planner().forced("gemm") !== undefined); // true
   * planner().force("gemm", null);
   * ```
   */
  force(op: string, choice: unknown): void {
    if (choice === null || choice === undefined) this.#forced.delete(op);
    else this.#forced.set(op, structuredClone(choice));
  }

  /** The choice forced for `op`, if any (see {@linkcode force}). */
  forced(op: string): unknown {
    return this.#forced.get(op);
  }

  /** Lift every forced choice. */
  clearForced(): void {
    this.#forced.clear();
  }

  /** How many keys of this adapter have a plan. */
  get size(): number {
    return this.#plans.size;
  }

  /** The plan of a full key (`op|shape|dtype`), if any. */
  planOf(key: string): unknown {
    return this.#plans.get(key);
  }

  /** Forget every plan of this adapter (the heuristics apply again). */
  clear(): void {
    this.#plans.clear();
  }

  /** Whether {@linkcode plan} is collecting a step's keys now (nothing is dispatched then). */
  get collecting(): boolean {
    return this.#collecting !== null;
  }

  /**
   * Record `step` once (a model's forward and backward, say) and collect
   * every key it looked up, with how many times it did (the launches of the
   * key per step), without planning anything. The step's
   * dispatches are skipped (`Gpu.skipDispatches`): keys are looked up on the
   * CPU as ops record, so nothing runs and nothing compiles. (Running it
   * compiled every kernel of the step first: 7.9 s for SLaK-T's on the H100,
   * which a run whose plans are all cached then spent before its first step
   * as well as in it.)
   */
  async collect(step: () => unknown): Promise<Map<string, CollectedKey>> {
    if (this.#collecting) throw new Error("planner: a plan is already being collected");
    const jobs = new Map<string, CollectedKey>();
    this.#collecting = jobs;
    const skipping = this.#gpu.skipDispatches;
    this.#gpu.skipDispatches = true;
    try {
      await step();
    } finally {
      this.#gpu.skipDispatches = skipping;
      this.#collecting = null;
    }
    await this.#gpu.sync();
    return jobs;
  }

  /**
   * Plan every key that `step` runs: collect them (see {@linkcode collect}),
   * then for each key without a plan (every key with `retune`) check each
   * candidate against the reference under GPU error scopes, time those that
   * pass, and keep the fastest. A sync point: before a run, never inside a
   * step. On a software adapter nothing is planned unless `software` is set.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { Tensor } from "./tensor.ts";
   * import { matmul } from "./matmul.ts";
   * import { planner } from "./planner.ts";
   * await initGpu();
   * const a = Tensor.randn([8, 8], { seed: 1 });
   * const r = await planner().plan(() => matmul(a, a).dispose(), { software: true });
   * console.log(r.keys.length); // 1
   * ```
   */
  async plan(step: () => unknown, opts: PlanOptions = {}): Promise<PlanReport> {
    const software = this.#gpu.isFallback;
    if (software && !opts.software) {
      return { keys: [], planned: [], reused: 0, skipped: "software adapter" };
    }
    if (opts.budgetMs !== undefined && !(opts.budgetMs >= 0)) {
      throw new Error(`planner: budgetMs must be a number of ms ≥ 0, got ${opts.budgetMs}`);
    }
    const jobs = await this.collect(step);
    const report: PlanReport = { keys: [...jobs.keys()], planned: [], reused: 0 };
    const todo: { key: string; job: PlanJob<unknown>; perStep: number }[] = [];
    for (const [key, { job, launches }] of jobs) {
      if (opts.ops && !opts.ops.includes(key.split("|")[0])) continue;
      if (!opts.retune && this.#plans.has(key)) report.reused++;
      else {
        const j = job();
        todo.push({ key, job: j, perStep: (j.work ?? 0) * launches });
      }
    }
    // Heaviest first, so that a budget goes where the time is: a product that stage 3 of a
    // ConvNeXt launches nine times a step before one of the same size that stage 1 launches
    // three times. The sort is stable: keys of equal work (the kernels of one depthwise shape,
    // which read each other's plans, all looked up by each launch) keep their order.
    if (opts.budgetMs !== undefined) todo.sort((a, b) => b.perStep - a.perStep);
    afterTheirInputs(todo);
    const t0 = performance.now();
    const fits = (spent: number, mean: number) =>
      opts.budgetMs === undefined || spent + mean < opts.budgetMs;
    for (const [i, { key, job }] of todo.entries()) {
      const spent = performance.now() - t0;
      const mean = i ? spent / i : 0;
      if (!fits(spent, mean)) {
        report.deferred = todo.slice(i).map((t) => t.key);
        break;
      }
      // While the GPU times this key's candidates, the CPU compiles the next key's, if the
      // budget is likely to reach it and it has another shape: keys of one shape may read each
      // other's plans (the depthwise ones do), so its candidates may not be known yet.
      const next = todo[i + 1];
      const ahead = next && shapeOf(next.key) !== shapeOf(key) && fits(spent, 2 * mean)
        ? () => this.#compileAhead(next.job, software, opts)
        : undefined;
      const row = await this.#planKey(key, job, software, opts, ahead);
      report.planned.push(row);
      await opts.onPlanned?.(row, report.planned.length, todo.length);
    }
    return report;
  }

  /** The candidates of `job` that the planner checks. */
  #candidatesOf(job: PlanJob<unknown>, software: boolean, opts: PlanOptions): unknown[] {
    const max = opts.maxCandidates ?? (software ? 2 : undefined);
    // The job applies `max` as it sees fit (the depthwise jobs bound the direct tilings and
    // keep every FFT one); on a software adapter the bound is hard, to keep compiles short.
    const all = job.candidates({ software, max });
    return software ? all.slice(0, max) : all;
  }

  /**
   * Compile the kernels of `job`'s candidates and reference without running
   * them (`Gpu.precompile`), so that its check finds them compiled. Called
   * while the GPU times the key before; nothing here is reported: a
   * candidate that fails fails again, in its scopes, when it is checked.
   */
  #compileAhead(job: PlanJob<unknown>, software: boolean, opts: PlanOptions): void {
    const benches: PlanBench<unknown>[] = [];
    const attempt = (record: () => Tensor[]) => {
      try {
        record().forEach((t) => t.dispose());
      } catch { /* the check makes the same call and reports it */ }
    };
    try {
      this.#gpu.precompile(() => {
        const bench = job.bench();
        benches.push(bench);
        for (const c of this.#candidatesOf(job, software, opts)) attempt(() => bench.run(c));
        attempt(() => bench.reference());
      });
    } catch {
      /* as above: job.bench() or candidates() throw again in the check */
    } finally {
      benches.forEach((b) => b.dispose());
    }
  }

  async #planKey(
    key: string,
    job: PlanJob<unknown>,
    software: boolean,
    opts: PlanOptions,
    whileTiming?: () => void,
  ): Promise<PlanRow> {
    const candidates = this.#candidatesOf(job, software, opts);
    const row: PlanRow = {
      key,
      candidates: candidates.length,
      rejected: [],
      heuristicMs: NaN,
      bestMs: NaN,
      checkMs: 0,
      timeMs: 0,
      choice: null,
    };
    const bench = job.bench();
    const ref = bench.reference();
    try {
      let started = performance.now();
      const passed: unknown[] = [];
      const reasons = await this.#checkAll(bench, candidates, ref, opts.tolerance ?? 1e-3);
      candidates.forEach((c, i) => {
        if (reasons[i]) row.rejected.push({ choice: c, reason: reasons[i]! });
        else passed.push(c);
      });
      row.checkMs = performance.now() - started;
      started = performance.now();
      // A lone candidate wins untimed.
      const times = passed.length > 1
        ? await this.#timeAll(bench, passed, software, opts, whileTiming)
        : [NaN];
      row.timeMs = performance.now() - started;
      let best = -1;
      for (let i = 0; i < passed.length; i++) {
        if (passed[i] === candidates[0]) row.heuristicMs = times[i];
        if (best < 0 || times[i] < times[best]) best = i;
      }
      if (best >= 0) {
        [row.bestMs, row.choice] = [times[best], passed[best]];
        this.#plans.set(key, structuredClone(passed[best]));
      }
    } finally {
      ref.forEach((t) => t.dispose());
      bench.dispose();
    }
    return row;
  }

  /**
   * GPU ms of each candidate of `passed` (median of the runs). Every candidate
   * has already compiled and run (in {@linkcode #checkAll}), so the timed runs
   * follow each other with no compile in between: the GPU is warmed up once,
   * then the candidates take turns, run by run, so that a drifting clock
   * weighs on all of them alike rather than on the last ones. With timestamps
   * all of it is one submission and one read-back ({@linkcode timeInterleaved});
   * without, each run is timed on its own by the wall clock.
   */
  async #timeAll(
    bench: PlanBench<unknown>,
    passed: unknown[],
    software: boolean,
    opts: PlanOptions,
    whileRunning?: () => void,
  ): Promise<number[]> {
    const record = (c: unknown) =>
      bench.time ? () => bench.time!(c) : () => bench.run(c).forEach((x) => x.dispose());
    const runs = opts.runs ?? (software ? 1 : 3);
    const minMs = software ? 0 : TUNE_MIN_MS;
    this.timings += passed.length;
    const together = await timeInterleaved(passed.map(record), {
      runs,
      minMs,
      warmupMs: software ? 0 : TUNE_WARMUP_MS,
      whileRunning,
    });
    if (together) return together.ms;
    // The first round also finds how many back-to-back repeats make a run last minMs, and the
    // first candidate's warms the GPU up.
    const reps: number[] = [];
    const all: number[][] = [];
    for (const c of passed) {
      const t = await timeGpu(record(c), {
        runs: 1,
        warmup: 0,
        minMs,
        warmupMs: software || reps.length ? 0 : TUNE_WARMUP_MS,
      });
      reps.push(t.reps);
      all.push([t.ms]);
    }
    for (let r = 1; r < runs; r++) {
      for (let i = 0; i < passed.length; i++) {
        const t = await timeGpu(record(passed[i]), { runs: 1, warmup: 0, reps: reps[i] });
        all[i].push(t.ms);
      }
    }
    return all.map(medianOf);
  }

  /**
   * Why each of `candidates` may not win (a GPU error, a thrown error, a wrong
   * output), or null. Each candidate runs inside its own error scopes and its
   * outputs are compared with the reference on the GPU and freed at once; the
   * comparisons are read back together at the end, one wait for the GPU per
   * key rather than several per candidate.
   */
  async #checkAll(
    bench: PlanBench<unknown>,
    candidates: unknown[],
    ref: Tensor[],
    tolerance: number,
  ): Promise<(string | null)[]> {
    const g = this.#gpu;
    const device = g.device;
    // Work recorded before (the reference) is submitted and its failures reported outside the
    // candidates' scopes.
    g.flush();
    await g.checkErrors();
    const results: Promise<string | null>[] = [];
    for (const c of candidates) {
      device.pushErrorScope("out-of-memory");
      device.pushErrorScope("validation");
      let outs: Tensor[] = [];
      let thrown: string | null = null;
      try {
        outs = bench.run(c);
        g.flush();
        // Failed allocations (scoped where they happen) are reported here, not under another
        // candidate.
        await g.checkErrors();
      } catch (e) {
        thrown = e instanceof Error ? e.message : String(e);
      }
      const validation = await device.popErrorScope();
      const oom = await device.popErrorScope();
      const gpuError = validation ?? oom;
      if (thrown || gpuError) {
        outs.forEach((t) => t.dispose());
        results.push(Promise.resolve(
          thrown ??
            `GPU ${validation ? "validation" : "out-of-memory"} error: ${
              gpuError!.message.split("\n")[0]
            }`,
        ));
        continue;
      }
      // A missing output differs by Infinity.
      const pairs = ref.map((r, i): [Tensor, Tensor] | null => outs[i] ? [outs[i], r] : null);
      const diffs = relativeDifferences(pairs.filter((p) => p !== null));
      outs.forEach((t) => t.dispose());
      results.push(diffs.then((d) => {
        let j = 0;
        const errs = pairs.map((p) => p ? d[j++] : Infinity);
        const i = errs.findIndex((err) => !(err <= tolerance));
        return i < 0 ? null : `output ${i} differs from the reference by ${errs[i]}`;
      }));
    }
    return await Promise.all(results);
  }

  /**
   * The plans as versioned JSON: this adapter's and those loaded for others,
   * or with `keys` only this adapter's plans of those keys (what a
   * checkpoint keeps: the kernels its model runs).
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { planner } from "./planner.ts";
   * await initGpu();
   * console.log(Array.isArray(planner().toJSON().plans)); // true
   * ```
   */
  toJSON(keys?: readonly string[]): SavedPlans {
    const plans = keys ? [] : [...this.#foreign.values()].map((p) => structuredClone(p));
    for (const [key, choice] of this.#plans) {
      if (keys && !keys.includes(key)) continue;
      plans.push({ adapter: this.adapter, key, choice: structuredClone(choice) });
    }
    return { version: PLANS_VERSION, plans };
  }

  /**
   * Add the plans of `json` (as {@linkcode toJSON} writes them; checked with
   * {@linkcode validSavedPlans}, which throws on a malformed one): plans for
   * this adapter replace the ones it has for the same keys, those of other
   * adapters are kept for {@linkcode toJSON} only. Returns how many plans are
   * for this adapter.
   *
   * @example
   * ```ts
   * import { initGpu } from "./gpu.ts";
   * import { planner } from "./planner.ts";
   * await initGpu();
   * console.log(planner().load({ version: 1, plans: [] })); // 0
   * ```
   */
  load(json: unknown): number {
    const saved = validSavedPlans(json);
    let mine = 0;
    for (const p of saved.plans) {
      if (p.adapter === this.adapter) {
        this.#plans.set(p.key, structuredClone(p.choice));
        mine++;
      } else this.#foreign.set(`${p.adapter}\n${p.key}`, structuredClone(p));
    }
    return mine;
  }
}

/** The planner of each Gpu: one per device, made on first use and gone with it. */
const planners = new WeakMap<Gpu, Planner>();

/**
 * The planner of the current GPU (see {@linkcode gpu}): where every op looks
 * its kernel choice up.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { planner } from "./planner.ts";
 * await initGpu();
 * console.log(planner() === planner()); // true
 * ```
 */
export function planner(): Planner {
  const g = gpu();
  let p = planners.get(g);
  if (!p) planners.set(g, p = new Planner(g));
  return p;
}
