/**
 * Load a weights file by its extension: safetensors, or an official PyTorch
 * `.pth`/`.pt` checkpoint (read by the whitelist pickle parser; extra entries
 * such as `args` or `optimizer` are kept inert, never executed), and load it
 * into a model strictly: every key present on both sides, every shape equal.
 * Partial loading happens only when asked for, and then says what it left out.
 *
 * @example
 * ```ts
 * import { loadWeightsFile } from "./weights.ts";
 * // Needs a checkpoint file on disk (type-checked, not run).
 * const w = await loadWeightsFile("SLaK_tiny_checkpoint.pth");
 * console.log(w.size);
 * ```
 * @module
 */
import { loadSafetensorsFile, type Weights } from "../models/safetensors.ts";
import { loadPthFile } from "../models/pth.ts";
import type { Module } from "../models/module.ts";
import { largeKernelPrefixes, mergeLargeKernelWeights } from "../models/weight_mapping.ts";

/** Read `path` as safetensors (`.safetensors`) or a PyTorch checkpoint (`.pth`, `.pt`, `.bin`). */
export async function loadWeightsFile(path: string): Promise<Weights> {
  try {
    await Deno.stat(path);
  } catch {
    throw new Error(`weights file ${path} does not exist`);
  }
  if (path.endsWith(".safetensors")) return await loadSafetensorsFile(path);
  if (/\.(pth|pt|bin)$/.test(path)) return await loadPthFile(path, { skipUnknown: true });
  throw new Error(`weights file ${path}: expected a .safetensors, .pth or .pt file`);
}

/** Options of {@linkcode loadModelWeights}. */
export interface LoadModelWeightsOptions {
  /** The flag that named the file, for errors (e.g. `--weights`). */
  flag?: string;
  /**
   * Load the keys both sides share and print the missing and unexpected ones
   * (the user asked for it by flag); shapes must still match exactly.
   */
  partial?: boolean;
  /** Where the partial-load report goes (default stderr). */
  report?: (line: string) => void;
}

/**
 * Load the weights file at `path` into `model`, strictly unless `partial`.
 * Weights in the trained large-kernel form (conv-BN branches) loaded into a
 * model built merged (`lkb_reparam`) are converted first by
 * {@linkcode mergeLargeKernelWeights}, and a line says so. Errors are one
 * line naming the flag, the file and the keys.
 *
 * @example
 * ```ts
 * import { initGpu } from "../ops/gpu.ts";
 * import { Linear } from "../models/layers.ts";
 * import { saveSafetensorsFile } from "../models/safetensors.ts";
 * import { loadModelWeights } from "./weights.ts";
 * await initGpu();
 * const path = `${await Deno.makeTempDir()}/fc.safetensors`;
 * await saveSafetensorsFile(path, new Map([
 *   ["weight", { shape: [1, 2], data: new Float32Array([3, 4]) }],
 *   ["bias", { shape: [1], data: new Float32Array([5]) }],
 * ]));
 * const fc = new Linear(2, 1);
 * console.log(await loadModelWeights(fc, path, { flag: "--weights" })); // { missing: [], unexpected: [] }
 * console.log(await fc.weight.tensor.read()); // Float32Array [3, 4]
 * ```
 */
export async function loadModelWeights(
  model: Module,
  path: string,
  opts: LoadModelWeightsOptions = {},
): Promise<{ missing: string[]; unexpected: string[] }> {
  const where = opts.flag ? `${opts.flag}: ${path}` : path;
  const report = opts.report ?? ((line: string) => console.error(line));
  let weights = await loadWeightsFile(path);
  const own = [...model.namedEntries()].map(([k]) => k);
  if (
    own.some((k) => k.endsWith("lkb_reparam.weight")) &&
    ![...weights.keys()].some((k) => k.endsWith("lkb_reparam.weight")) &&
    largeKernelPrefixes(weights).length
  ) {
    weights = mergeLargeKernelWeights(weights);
    report(`${where}: folded the trained large-kernel branches into lkb_reparam (merged model)`);
  }
  try {
    const r = model.loadStateDict(weights, { strict: !opts.partial });
    if (opts.partial) {
      const list = (keys: string[]) => keys.length ? keys.join(", ") : "none";
      report(`${where}: partial load: ${r.missing.length} missing keys: ${list(r.missing)}`);
      report(
        `${where}: partial load: ${r.unexpected.length} unexpected keys: ${list(r.unexpected)}`,
      );
    }
    return r;
  } catch (e) {
    throw new Error(`${where}: ${(e as Error).message}`);
  }
}
