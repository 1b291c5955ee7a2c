/**
 * The repository's own TypeScript files, for the tests that read the code
 * itself (the import layers, where WGSL may live).
 *
 * @example
 * ```ts
 * import { sourceFiles } from "./source_tree.ts";
 * const files = await sourceFiles();
 * console.log(files.includes("ops/tensor.ts")); // true
 * ```
 * @module
 */

/** The repository root (the folder holding `deno.json`). */
export const REPO_ROOT: URL = new URL("../", import.meta.url);

/** Folders that hold no source of ours: build outputs and installed packages. */
const SKIPPED_DIRS = new Set(["node_modules", "out"]);

/**
 * Every `.ts` file under the repository root as a sorted, `/`-separated
 * relative path, skipping `node_modules/`, `out/` and hidden folders.
 */
export async function sourceFiles(): Promise<string[]> {
  const files: string[] = [];
  async function walk(dir: URL, prefix: string): Promise<void> {
    for await (const entry of Deno.readDir(dir)) {
      if (entry.isDirectory) {
        if (SKIPPED_DIRS.has(entry.name) || entry.name.startsWith(".")) continue;
        await walk(new URL(`${entry.name}/`, dir), `${prefix}${entry.name}/`);
      } else if (entry.isFile && entry.name.endsWith(".ts")) {
        files.push(prefix + entry.name);
      }
    }
  }
  await walk(REPO_ROOT, "");
  return files.sort();
}
