/**
 * The persistent plan cache: the planner's plans in a JSON file in the
 * user's cache folder (`$XDG_CACHE_HOME/largekernel/plans.json`, else
 * `~/.cache/largekernel/plans.json`), so that a second run on the same
 * adapter, driver and shapes plans nothing. The file holds the plans of every
 * adapter it has seen (each plan is keyed by its adapter); it is written
 * atomically (a temporary file renamed over it), and a corrupt, oversized or
 * hostile file is ignored with one warning.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { planner } from "./planner.ts";
 * import { loadPlanCache, savePlanCache } from "./plan_cache.ts";
 * await initGpu();
 * const path = await Deno.makeTempFile({ suffix: ".json" });
 * await savePlanCache(planner(), path);
 * console.log(await loadPlanCache(planner(), path)); // the plans of this adapter in the file
 * await Deno.remove(path);
 * ```
 * @module
 */
import {
  type Planner,
  type PlanOptions,
  type PlanReport,
  type PlanRow,
  type SavedPlan,
  validSavedPlans,
} from "./planner.ts";

/** Largest cache file read: anything bigger is not a plan cache. */
export const PLAN_CACHE_MAX_BYTES = 16 << 20;

/**
 * Where the plan cache lives: `$XDG_CACHE_HOME/largekernel/plans.json`, else
 * `$HOME/.cache/largekernel/plans.json`; null when neither variable is set.
 *
 * @example
 * ```ts
 * import { planCachePath } from "./plan_cache.ts";
 * console.log(planCachePath({ XDG_CACHE_HOME: "/c" })); // "/c/largekernel/plans.json"
 * ```
 */
export function planCachePath(
  env: Record<string, string | undefined> = Deno.env.toObject(),
): string | null {
  const base = env.XDG_CACHE_HOME || (env.HOME ? `${env.HOME}/.cache` : "");
  return base ? `${base}/largekernel/plans.json` : null;
}

/** The plans in the file at `path`, [] when there is none; throws a one-line reason when it is bad. */
async function readPlans(path: string): Promise<SavedPlan[]> {
  let size: number;
  try {
    size = (await Deno.stat(path)).size;
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return [];
    throw e;
  }
  if (size > PLAN_CACHE_MAX_BYTES) {
    throw new Error(`${size} bytes, more than the ${PLAN_CACHE_MAX_BYTES} a plan cache may hold`);
  }
  let json: unknown;
  try {
    json = JSON.parse(await Deno.readTextFile(path));
  } catch (e) {
    throw new Error(`not JSON (${e instanceof Error ? e.message : e})`);
  }
  return validSavedPlans(json).plans;
}

function warnIgnored(path: string, e: unknown): void {
  console.warn(
    `warning: ignoring the plan cache ${path}: ${e instanceof Error ? e.message : e} ` +
      `(it will be rewritten; --no-plan-cache leaves it alone)`,
  );
}

/**
 * Load the plans of the cache file at `path` into `planner`; returns how many
 * are for its adapter. A missing file loads nothing; a bad one (unreadable,
 * too big, not JSON, not plans) loads nothing and prints one warning.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { planner } from "./planner.ts";
 * import { loadPlanCache } from "./plan_cache.ts";
 * await initGpu();
 * console.log(await loadPlanCache(planner(), "/nonexistent/plans.json")); // 0
 * ```
 */
export async function loadPlanCache(planner: Planner, path: string): Promise<number> {
  try {
    return planner.load({ version: 1, plans: await readPlans(path) });
  } catch (e) {
    warnIgnored(path, e);
    return 0;
  }
}

/**
 * Write `planner`'s plans to the cache file at `path`, merged with the plans
 * the file holds now (another run may have added some; the planner's win on
 * the same key): written to a temporary file next to it, then renamed over
 * it, so a reader never sees half a file. A bad file on disk is replaced.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { planner } from "./planner.ts";
 * import { savePlanCache } from "./plan_cache.ts";
 * await initGpu();
 * const dir = await Deno.makeTempDir();
 * await savePlanCache(planner(), `${dir}/sub/plans.json`);
 * console.log((await Deno.stat(`${dir}/sub/plans.json`)).isFile); // true
 * await Deno.remove(dir, { recursive: true });
 * ```
 */
export async function savePlanCache(planner: Planner, path: string): Promise<void> {
  let onDisk: SavedPlan[] = [];
  try {
    onDisk = await readPlans(path);
  } catch {
    // Replaced below: loadPlanCache has already said why it was ignored.
  }
  const merged = new Map<string, SavedPlan>();
  for (const p of [...onDisk, ...planner.toJSON().plans]) merged.set(`${p.adapter}\n${p.key}`, p);
  const dir = path.slice(0, Math.max(0, path.lastIndexOf("/")));
  if (dir) await Deno.mkdir(dir, { recursive: true });
  const tmp = `${path}.${Deno.pid}.tmp`;
  await Deno.writeTextFile(tmp, JSON.stringify({ version: 1, plans: [...merged.values()] }));
  await Deno.rename(tmp, path);
}

/**
 * Plan the kernels of `step` with the cache at `cachePath` (null: no cache):
 * load it, plan what it lacks (everything with `retune`), and write it back
 * after each key planned, so that a run stopped while planning (a first run
 * plans for minutes) leaves the next one only the keys it did not reach.
 * What the trainer and the tuning scripts call.
 *
 * @example
 * ```ts
 * import { initGpu } from "./gpu.ts";
 * import { planner } from "./planner.ts";
 * import { planWithCache } from "./plan_cache.ts";
 * await initGpu();
 * const r = await planWithCache(planner(), () => {}, { cachePath: null });
 * console.log(r.planned.length); // 0
 * ```
 */
export async function planWithCache(
  planner: Planner,
  step: () => unknown,
  opts: PlanOptions & { cachePath: string | null },
): Promise<PlanReport> {
  const { cachePath, ...planOpts } = opts;
  if (cachePath) await loadPlanCache(planner, cachePath);
  return await planner.plan(step, {
    ...planOpts,
    onPlanned: async (row, done, total) => {
      if (cachePath) await savePlanCache(planner, cachePath);
      await planOpts.onPlanned?.(row, done, total);
    },
  });
}

/**
 * An `onPlanned` reporter for long plans: a line on stderr after every
 * `every` keys and after the last, with the keys done, the seconds since the
 * reporter was made, and the key that took longest so far (a first run
 * plans for minutes, and says nothing otherwise).
 *
 * @example
 * ```ts
 * import { planProgress } from "./plan_cache.ts";
 * const report = planProgress(2, () => {}); // a sink instead of stderr
 * console.log(typeof report); // "function"
 * ```
 */
export function planProgress(
  every = 10,
  write: (line: string) => void = (line) => console.error(line),
): (row: PlanRow, done: number, total: number) => void {
  const t0 = performance.now();
  let slowest = { key: "", ms: -1 };
  return (row, done, total) => {
    const ms = row.checkMs + row.timeMs;
    if (ms > slowest.ms) slowest = { key: row.key, ms };
    if (done % every !== 0 && done !== total) return;
    const s = ((performance.now() - t0) / 1e3).toFixed(1);
    write(
      `planning kernels: ${done}/${total} keys in ${s} s (longest: ${slowest.key}, ${
        (slowest.ms / 1e3).toFixed(1)
      } s)`,
    );
  };
}
