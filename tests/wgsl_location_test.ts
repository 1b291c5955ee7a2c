/**
 * WGSL lives only in `ops/`: no `.ts` file elsewhere (tests aside) holds
 * shader syntax, launches a kernel with `ops/kernel.ts`'s helpers, or
 * compiles a shader itself. A kernel written outside `ops/` escapes the
 * rule that every kernel is tested against a CPU reference beside its op.
 */
import assert from "node:assert/strict";
import { REPO_ROOT, sourceFiles } from "./source_tree.ts";

/** Text that only a WGSL shader (or code compiling one) contains. */
const SHADER_MARKERS = [
  /@compute\b/,
  /@workgroup_size\s*\(/,
  /@builtin\s*\(/,
  /@group\s*\(\s*\d/,
  /@binding\s*\(\s*\d/,
  /\bvar\s*<\s*(storage|workgroup|uniform|private)\b/,
  /\bcreateShaderModule\s*\(/,
  /\bcreateComputePipeline(Async)?\s*\(/,
];

/** `ops/kernel.ts` exports that take or write WGSL source. */
const KERNEL_HELPERS = new Set(["launch", "elementwiseKernel", "storage", "flatMain", "uniforms"]);

/** The WGSL helpers `source` imports from `ops/kernel.ts` (any relative path to it). */
function kernelHelperImports(source: string): string[] {
  const found: string[] = [];
  const imports = /import\s+(?:type\s+)?\{([^}]*)\}\s*from\s*["']([^"']+)["']/g;
  for (const [, names, from] of source.matchAll(imports)) {
    if (!/(^|\/)ops\/kernel\.ts$|^\.\/kernel\.ts$/.test(from)) continue;
    for (const spec of names.split(",")) {
      const name = spec.trim().replace(/^type\s+/, "").split(/\s+as\s+/)[0];
      if (KERNEL_HELPERS.has(name)) found.push(name);
    }
  }
  return found;
}

/** One line per WGSL marker or kernel helper import found in `source`. */
function wgslFindings(path: string, source: string): string[] {
  const found = SHADER_MARKERS.filter((m) => m.test(source)).map((m) =>
    `${path} holds shader text matching ${m}`
  );
  for (const name of kernelHelperImports(source)) {
    found.push(`${path} imports ${name} from ops/kernel.ts`);
  }
  return found;
}

Deno.test("WGSL lives only under ops/", async () => {
  const outside = (await sourceFiles()).filter((f) =>
    !f.startsWith("ops/") && !f.startsWith("tests/")
  );
  assert.ok(outside.includes("models/module.ts"), "the walk found no file outside ops/");
  const found: string[] = [];
  for (const f of outside) {
    found.push(...wgslFindings(f, await Deno.readTextFile(new URL(f, REPO_ROOT))));
  }
  assert.deepEqual(found, []);
});

Deno.test("WGSL location: the scan finds a kernel and a helper import, and passes plain code", () => {
  const kernel = "const code = `@group(0) @binding(0) var<storage, read_write> y: array<f32>;\n" +
    "@compute @workgroup_size(64) fn main() {}`;";
  assert.equal(wgslFindings("a.ts", kernel).length, 5); // @group, @binding, var<storage, @compute, @workgroup_size
  const helpers = 'import { elementwiseKernel, launch as run } from "../ops/kernel.ts";';
  assert.deepEqual(wgslFindings("b.ts", helpers), [
    "b.ts imports elementwiseKernel from ops/kernel.ts",
    "b.ts imports launch from ops/kernel.ts",
  ]);
  const plain = 'import { memoize } from "../ops/kernel.ts";\n// a compute shader, in words';
  assert.deepEqual(wgslFindings("c.ts", plain), []);
});
