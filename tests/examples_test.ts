/**
 * Every exported function and class outside `tests/` has an `@example`
 * (which `deno task check-types` type-checks), its own or its module's
 * example that uses it by name. Types, interfaces and constants are left
 * to their doc comments. Read with `deno doc --json`, Deno's own parser.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { REPO_ROOT, sourceFiles } from "./source_tree.ts";

/**
 * Exports that still lack an example, in files being reorganised; remove an
 * entry when its export gets an example or goes away.
 */
const WITHOUT_EXAMPLE_YET = new Set<string>([]);

interface DocTag {
  kind: string;
  doc?: string;
}
interface DocDeclaration {
  declarationKind: string;
  kind: string;
  location: { filename: string };
  jsDoc?: { doc?: string; tags?: DocTag[] };
}
interface DocNode {
  module_doc?: { doc?: string; tags?: DocTag[] };
  symbols?: { name: string; declarations: DocDeclaration[] }[];
}

const examplesOf = (doc?: { tags?: DocTag[] }) =>
  (doc?.tags ?? []).filter((t) => t.kind === "example").map((t) => t.doc ?? "");

/** "file name" of every exported function or class without an example. */
function missingExamples(nodes: Record<string, DocNode>): string[] {
  const missing: string[] = [];
  for (const [url, node] of Object.entries(nodes)) {
    const file = url.slice(REPO_ROOT.href.length);
    const moduleExamples = examplesOf(node.module_doc).join("\n");
    for (const { name, declarations } of node.symbols ?? []) {
      // Re-exports (mod.ts) are declared, and checked, in their own file.
      const exported = declarations.filter((d) =>
        d.declarationKind === "export" && (d.kind === "function" || d.kind === "class") &&
        d.location.filename === url
      );
      if (exported.length === 0) continue;
      const own = exported.some((d) => examplesOf(d.jsDoc).length > 0);
      const inModule = new RegExp(`\\b${name}\\b`).test(moduleExamples);
      if (!own && !inModule) missing.push(`${file} ${name}`);
    }
  }
  return missing.sort();
}

Deno.test("every exported function and class has an @example", async () => {
  const files = (await sourceFiles()).filter((f) => !f.startsWith("tests/"));
  const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["doc", "--json", ...files],
    cwd: fileURLToPath(REPO_ROOT),
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert.equal(code, 0, `deno doc failed: ${new TextDecoder().decode(stderr)}`);
  const { nodes } = JSON.parse(new TextDecoder().decode(stdout)) as {
    nodes: Record<string, DocNode>;
  };
  assert.ok(Object.keys(nodes).includes(new URL("ops/tensor.ts", REPO_ROOT).href));
  const missing = missingExamples(nodes);
  assert.deepEqual(missing.filter((m) => !WITHOUT_EXAMPLE_YET.has(m)), [], "add an @example");
  const stale = [...WITHOUT_EXAMPLE_YET].filter((m) => !missing.includes(m));
  assert.deepEqual(stale, [], "these have an example now (or are gone): drop them from the list");
});

Deno.test("examples check: a function without an example is found, one with it is not", () => {
  const file = new URL("x.ts", REPO_ROOT).href;
  const fn = (name: string, tags: DocTag[]) => ({
    name,
    declarations: [{
      declarationKind: "export",
      kind: "function",
      location: { filename: file },
      jsDoc: { tags },
    }],
  });
  const nodes = {
    [file]: {
      module_doc: { tags: [{ kind: "example", doc: "```ts\nshown();\n```" }] },
      symbols: [fn("bare", []), fn("own", [{ kind: "example", doc: "own()" }]), fn("shown", [])],
    },
  };
  assert.deepEqual(missingExamples(nodes), ["x.ts bare"]);
});
