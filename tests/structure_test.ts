/**
 * The import graph of every `.ts` file, as Deno itself resolves it (`deno
 * info --json`: static imports, `import type`, `export … from` and dynamic
 * `import("…")` of literal paths), must respect the layers and hold no cycle.
 *
 * The layers, lowest first: `ops/` → `models/` → `sparse/` → `analysis/` →
 * `train/` → `mod.ts` → `scripts/` → `tests/`. A file may import files of
 * its own layer or of a layer below, never above. `analysis/` sits below
 * `train/`: the trainer writes its CSV log and its curves with `analysis/`
 * code, while nothing in `analysis/` needs the trainer. `mod.ts`, the public
 * API, re-exports the library folders but no script; tests may import
 * anything.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { REPO_ROOT, sourceFiles } from "./source_tree.ts";

const LAYERS = ["ops", "models", "sparse", "analysis", "train", "mod.ts", "scripts", "tests"];

/** The layer of a repository-relative path: its top folder, or its name at the root. */
function layerOf(path: string): number {
  return LAYERS.indexOf(path.split("/")[0]);
}

type Graph = Map<string, Set<string>>;

/** Imports of every file in `files` (repository-relative) onto other repository files. */
async function importGraph(files: readonly string[]): Promise<Graph> {
  const root = await Deno.makeTempFile({ prefix: "import_graph_", suffix: ".ts" });
  try {
    await Deno.writeTextFile(
      root,
      files.map((f) => `import "${new URL(f, REPO_ROOT).href}";\n`).join(""),
    );
    const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["info", "--json", "--config", fileURLToPath(new URL("deno.json", REPO_ROOT)), root],
      cwd: fileURLToPath(REPO_ROOT),
      stdout: "piped",
      stderr: "piped",
    }).output();
    const decoder = new TextDecoder();
    assert.equal(code, 0, `deno info failed: ${decoder.decode(stderr)}`);
    return graphFromInfo(JSON.parse(decoder.decode(stdout)));
  } finally {
    await Deno.remove(root);
  }
}

interface InfoModule {
  specifier: string;
  error?: string;
  dependencies?: { code?: { specifier: string }; type?: { specifier: string } }[];
}

/** The repository-internal edges of `deno info --json`'s module list. */
function graphFromInfo(info: { modules: InfoModule[] }): Graph {
  const prefix = REPO_ROOT.href;
  const inRepo = (s: string) => s.startsWith(prefix) && !s.startsWith(`${prefix}node_modules/`);
  const graph: Graph = new Map();
  for (const m of info.modules) {
    if (!inRepo(m.specifier)) continue;
    const from = m.specifier.slice(prefix.length);
    assert.ok(!m.error, `${from}: ${m.error}`);
    const targets = new Set<string>();
    for (const d of m.dependencies ?? []) {
      for (const s of [d.code?.specifier, d.type?.specifier]) {
        if (s && inRepo(s)) targets.add(s.slice(prefix.length));
      }
    }
    graph.set(from, targets);
  }
  return graph;
}

/** "a imports b, a layer above it" for every edge that points up the layers. */
function upwardImports(graph: Graph): string[] {
  const found: string[] = [];
  for (const [from, targets] of graph) {
    for (const to of targets) {
      if (layerOf(to) > layerOf(from)) found.push(`${from} imports ${to}, a layer above it`);
    }
  }
  return found;
}

/**
 * One cycle per strongly connected component of more than one file (or a
 * file importing itself), written `a → b → a` (Tarjan's algorithm).
 */
function importCycles(graph: Graph): string[] {
  const index = new Map<string, number>();
  const low = new Map<string, number>();
  const stack: string[] = [];
  const onStack = new Set<string>();
  const components: string[][] = [];
  const visit = (v: string) => {
    index.set(v, index.size);
    low.set(v, index.get(v)!);
    stack.push(v);
    onStack.add(v);
    for (const w of graph.get(v) ?? []) {
      if (!index.has(w)) {
        visit(w);
        low.set(v, Math.min(low.get(v)!, low.get(w)!));
      } else if (onStack.has(w)) {
        low.set(v, Math.min(low.get(v)!, index.get(w)!));
      }
    }
    if (low.get(v) !== index.get(v)) return;
    const component: string[] = [];
    let w: string;
    do {
      w = stack.pop()!;
      onStack.delete(w);
      component.push(w);
    } while (w !== v);
    if (component.length > 1 || graph.get(v)?.has(v)) components.push(component);
  };
  for (const v of graph.keys()) if (!index.has(v)) visit(v);
  return components.map((c) => cycleThrough(graph, new Set(c)).join(" → "));
}

/** A shortest path from the component's first file (sorted) back to itself, inside the component. */
function cycleThrough(graph: Graph, component: Set<string>): string[] {
  const start = [...component].sort()[0];
  const parent = new Map<string, string>();
  const queue = [start];
  while (queue.length > 0) {
    const v = queue.shift()!;
    for (const w of graph.get(v) ?? []) {
      if (!component.has(w)) continue;
      if (w === start) {
        const path: string[] = [];
        for (let u = v; u !== start; u = parent.get(u)!) path.unshift(u);
        return [start, ...path, start];
      }
      if (!parent.has(w)) {
        parent.set(w, v);
        queue.push(w);
      }
    }
  }
  throw new Error(`no cycle through ${start}`);
}

const files = await sourceFiles();
const graph = await importGraph(files);

Deno.test("structure: every .ts file is in the import graph and in a layer", () => {
  assert.deepEqual([...graph.keys()].sort(), files);
  const unplaced = files.filter((f) => layerOf(f) < 0);
  assert.deepEqual(unplaced, [], `files outside the layers ${LAYERS.join(", ")}`);
  // The graph holds real edges: the Module base importing the tensors is one.
  assert.ok(graph.get("models/module.ts")?.has("ops/tensor.ts"));
});

Deno.test("structure: imports point down the layers", () => {
  assert.deepEqual(upwardImports(graph), []);
});

Deno.test("structure: no import cycle between files", () => {
  assert.deepEqual(importCycles(graph), []);
});

Deno.test("structure: the checks find an upward import and a cycle in a made-up graph", () => {
  const made: Graph = new Map([
    ["ops/a.ts", new Set(["models/b.ts"])],
    ["models/b.ts", new Set(["models/c.ts"])],
    ["models/c.ts", new Set(["models/b.ts", "ops/d.ts"])],
    ["ops/d.ts", new Set(["ops/d.ts"])],
    ["train/e.ts", new Set(["ops/a.ts", "analysis/f.ts"])],
    ["analysis/f.ts", new Set<string>()],
  ]);
  assert.deepEqual(upwardImports(made), ["ops/a.ts imports models/b.ts, a layer above it"]);
  assert.deepEqual(importCycles(made).sort(), [
    "models/b.ts → models/c.ts → models/b.ts",
    "ops/d.ts → ops/d.ts",
  ]);
});
