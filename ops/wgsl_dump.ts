/**
 * Shader dumps for kernel work: with `LARGEKERNEL_DUMP_WGSL=DIR` set, `Gpu`
 * writes every kernel it compiles to `DIR`, one `.wgsl` file per pipeline,
 * named by the kernel's name and a hash of its source, with what the
 * launcher knew about it (name, config or plan, adapter, first dispatch) as
 * leading `//` comments. The file is the exact source handed to the
 * compiler, so it can be fed to a shader tool as is.
 *
 * @example
 * ```ts
 * import { shaderDumpFile, shaderHash } from "./wgsl_dump.ts";
 * const code = "@compute @workgroup_size(1) fn main() {}";
 * const file = shaderDumpFile(code, { name: "noop", config: { tile: 4 } }, {
 *   adapter: "llvmpipe",
 *   workgroups: [1, 1, 1],
 *   buffers: 0,
 *   uniformBytes: 0,
 * });
 * console.log(file.name === `noop-${shaderHash(code)}.wgsl`); // true
 * console.log(file.text.split("\n")[1]); // // config: {"tile":4}
 * ```
 * @module
 */

/** What a launcher says about a kernel: a short name and the config or plan it was built from. */
export interface KernelInfo {
  /** Short name, e.g. "depthwise-forward"; used in the file name. */
  name: string;
  /** The plan, tile config or shape the source was generated from (written as JSON). */
  config?: unknown;
}

/** Facts about a kernel's first dispatch, known only to the recorder. */
export interface DispatchFacts {
  adapter: string;
  /** The launching line, when known (see {@linkcode launchSite}). */
  launchedFrom?: string;
  workgroups: readonly number[];
  buffers: number;
  uniformBytes: number;
  /** True when the source was rewritten for workgroup bounds checking. */
  boundsChecked?: boolean;
}

/** The environment variable that turns dumping on; its value is the folder. */
export const DUMP_WGSL_VARIABLE = "LARGEKERNEL_DUMP_WGSL";

/**
 * The folder of `LARGEKERNEL_DUMP_WGSL`, or null (unset, empty, or no env permission; never prompts).
 *
 * @example
 * ```ts
 * import { shaderDumpRequested } from "./wgsl_dump.ts";
 * console.log(shaderDumpRequested()); // null unless LARGEKERNEL_DUMP_WGSL names a folder
 * ```
 */
export function shaderDumpRequested(): string | null {
  try {
    const env = Deno.permissions.querySync({ name: "env", variable: DUMP_WGSL_VARIABLE });
    if (env.state !== "granted") return null;
    return Deno.env.get(DUMP_WGSL_VARIABLE) || null;
  } catch {
    return null;
  }
}

/**
 * Where a kernel was launched from, read off a stack trace taken while it
 * compiles: the first frame outside the dispatch plumbing (gpu.ts, kernel.ts),
 * as "file.function" and "path:line", e.g. "elementwise.unary" and
 * "ops/elementwise.ts:194". Names kernels whose launcher passed none.
 *
 * @example
 * ```ts
 * import { launchSite } from "./wgsl_dump.ts";
 * const stack = `Error
 *     at Gpu.pipeline (file:///repo/ops/gpu.ts:160:9)
 *     at launch (file:///repo/ops/kernel.ts:102:9)
 *     at unary (file:///repo/ops/elementwise.ts:194:3)`;
 * console.log(launchSite(stack)); // { name: "elementwise.unary", where: "ops/elementwise.ts:194" }
 * ```
 */
export function launchSite(stack: string): { name: string; where: string } | null {
  for (const line of stack.split("\n")) {
    const m = line.match(
      /^\s*at (?:(?:async )?([\w$.<>]+) \()?.*?\/(\w+)\/(\w+)\.[mc]?[tj]s:(\d+)/,
    );
    if (!m) continue;
    const [, fn, dir, file, row] = m;
    if (dir === "ops" && (file === "gpu" || file === "kernel")) continue;
    const name = fn ? `${file}.${fn.split(".").at(-1)}` : file;
    return { name, where: `${dir}/${file}.ts:${row}` };
  }
  return null;
}

/** 16 hex digits identifying a source (two 32-bit FNV-1a hashes); not cryptographic. */
export function shaderHash(code: string): string {
  let a = 0x811c9dc5;
  let b = 0x01000193 ^ code.length;
  for (let i = 0; i < code.length; i++) {
    const c = code.charCodeAt(i);
    a = Math.imul(a ^ c, 0x01000193) >>> 0;
    b = Math.imul(b ^ c, 0x5bd1e995) >>> 0;
    b = (b ^ (b >>> 15)) >>> 0;
  }
  return a.toString(16).padStart(8, "0") + b.toString(16).padStart(8, "0");
}

/** The dump file of one kernel: its name in the folder and its text. */
export function shaderDumpFile(
  code: string,
  info: KernelInfo | undefined,
  facts: DispatchFacts,
): { name: string; text: string } {
  const hash = shaderHash(code);
  const name = (info?.name ?? "kernel").replace(/[^A-Za-z0-9_.-]+/g, "_").slice(0, 60) || "kernel";
  const config = info?.config === undefined ? "none" : JSON.stringify(info.config);
  const header = [
    `// kernel ${name} ${hash}`,
    `// config: ${config.replace(/[\r\n]+/g, " ")}`,
    `// adapter: ${facts.adapter}`,
    ...(facts.launchedFrom ? [`// launched from ${facts.launchedFrom}`] : []),
    `// first dispatch: ${facts.workgroups.join("x")} workgroups, ${facts.buffers} storage ` +
    `buffers, ${facts.uniformBytes} uniform bytes`,
    ...(facts.boundsChecked ? ["// rewritten with workgroup bounds checks"] : []),
  ];
  return { name: `${name}-${hash}.wgsl`, text: `${header.join("\n")}\n${code}\n` };
}

/**
 * Write one kernel's dump into `dir` (created if missing) through a
 * temporary file and a rename, so a reader never sees half a shader.
 * Throws one line naming the variable and the file when it cannot.
 *
 * @example
 * ```ts
 * import { shaderDumpFile, writeShaderDump } from "./wgsl_dump.ts";
 * const dir = Deno.makeTempDirSync();
 * const file = shaderDumpFile("@compute @workgroup_size(1) fn main() {}", { name: "noop" }, {
 *   adapter: "llvmpipe",
 *   workgroups: [1],
 *   buffers: 0,
 *   uniformBytes: 0,
 * });
 * writeShaderDump(dir, file);
 * console.log(Deno.readTextFileSync(`${dir}/${file.name}`) === file.text); // true
 * ```
 */
export function writeShaderDump(dir: string, file: { name: string; text: string }): void {
  const path = `${dir}/${file.name}`;
  const tmp = `${dir}/.${file.name}.${Deno.pid}.tmp`;
  try {
    Deno.mkdirSync(dir, { recursive: true });
    Deno.writeTextFileSync(tmp, file.text);
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* nothing was written */ }
    throw new Error(
      `${DUMP_WGSL_VARIABLE}: cannot write ${path}: ${e instanceof Error ? e.message : e}`,
    );
  }
}
