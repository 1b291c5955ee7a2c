/**
 * Load a weights file by its extension: safetensors, or an official PyTorch
 * `.pth`/`.pt` checkpoint (read by the whitelist pickle parser; extra entries
 * such as `args` or `optimizer` are kept inert, never executed).
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
