/**
 * Bind groups that outlive a dispatch: the layout of a kernel's bindings read
 * off its WGSL, and a bounded cache of bind groups keyed by the kernel and
 * the identities of the buffers bound.
 *
 * Creating a bind group was the largest CPU cost of recording a dispatch
 * (about 45% of recording a training step on llvmpipe), yet a training step
 * binds the same buffers to the same kernels step after step: the tensor
 * pool hands out the same buffers. Buffers are keyed by object identity (a
 * number given to each buffer on first sight, never reused), so a cached
 * group can only be served for the very buffers it was made from; a buffer
 * that is destroyed and replaced by a new one, even of the same size in the
 * same pool slot, gets a new number. Uniform blocks are bound with a dynamic
 * offset into a persistent uniform arena, so values that change every step
 * do not change the group.
 *
 * @example
 * ```ts
 * import { bindingLayout } from "./bind_groups.ts";
 * const code = `@group(0) @binding(0) var<storage, read> x: array<f32>;
 * @group(0) @binding(1) var<storage, read_write> y: array<f32>;
 * @group(0) @binding(2) var<uniform> P: vec4f;`;
 * console.log(bindingLayout(code, 0, 3)?.map((e) => e.buffer?.type)); // ["read-only-storage", "storage", "uniform"]
 * ```
 * @module
 */

/** `@group(G) @binding(B) var<ADDRESS_SPACE[, ACCESS]>`: every buffer declaration. */
const DECLARATION =
  /@group\(\s*(\d+)\s*\)\s*@binding\(\s*(\d+)\s*\)\s*var\s*<\s*(\w+)\s*(?:,\s*(\w+)\s*)?>/g;

/**
 * The bind group layout entries of `group` in WGSL `source`, bindings
 * `0…count-1` (every declared binding of the group when `count` is
 * undefined), uniforms with a dynamic offset. Null when one of them is not a
 * buffer declared in the source: the caller then lets WebGPU derive the
 * layout.
 *
 * @example
 * ```ts
 * import { bindingLayout } from "./bind_groups.ts";
 * const code = "@group(1) @binding(0) var<storage, read_write> c: array<u32>;";
 * console.log(bindingLayout(code, 1)?.length, bindingLayout(code, 0, 1)); // 1 null
 * ```
 */
export function bindingLayout(
  source: string,
  group: number,
  count?: number,
): GPUBindGroupLayoutEntry[] | null {
  const types = new Map<number, GPUBufferBindingType>();
  for (const [, g, b, space, access] of source.matchAll(DECLARATION)) {
    if (Number(g) !== group) continue;
    if (space === "uniform") types.set(Number(b), "uniform");
    else if (space === "storage") {
      types.set(Number(b), access === "read_write" ? "storage" : "read-only-storage");
    } else return null;
  }
  const n = count ?? (types.size ? Math.max(...types.keys()) + 1 : 0);
  const entries: GPUBindGroupLayoutEntry[] = [];
  for (let binding = 0; binding < n; binding++) {
    const type = types.get(binding);
    if (!type) return null;
    entries.push({
      binding,
      visibility: GPUShaderStage.COMPUTE,
      buffer: type === "uniform" ? { type, hasDynamicOffset: true } : { type },
    });
  }
  return entries;
}

/**
 * The bind group layouts of a pipeline running WGSL `source`, one per group
 * from 0 to the highest declared: group 0 holds the `bindings` that
 * dispatches bind (see {@linkcode bindingLayout}), other groups every binding
 * they declare. Null when a binding is not a buffer declared in the source.
 *
 * @example
 * ```ts
 * import { pipelineLayout } from "./bind_groups.ts";
 * const code = `@group(0) @binding(0) var<storage, read_write> y: array<f32>;
 * @group(1) @binding(0) var<storage, read_write> c: array<u32>;`;
 * console.log(pipelineLayout(code, 1)?.map((g) => g.length)); // [1, 1]
 * ```
 */
export function pipelineLayout(
  source: string,
  bindings: number,
): GPUBindGroupLayoutEntry[][] | null {
  let groups = 1;
  for (const [, g] of source.matchAll(DECLARATION)) groups = Math.max(groups, Number(g) + 1);
  const layout: GPUBindGroupLayoutEntry[][] = [];
  for (let g = 0; g < groups; g++) {
    const entries = bindingLayout(source, g, g === 0 ? bindings : undefined);
    if (!entries) return null;
    layout.push(entries);
  }
  return layout;
}

/** Entries a {@linkcode BindGroupCache} holds by default: several training steps' worth. */
export const BIND_GROUP_CACHE_ENTRIES = 16384;

/**
 * Bind groups by kernel and bound buffers, at most `capacity` of them (when
 * full, it starts over empty: cheaper than tracking recency on every hit, and
 * a step's working set is far below the default capacity).
 *
 * @example
 * ```ts
 * import { BindGroupCache } from "./bind_groups.ts";
 * const cache = new BindGroupCache(2);
 * const [a, b] = [{}, {}] as unknown as GPUBuffer[];
 * const key = cache.key(1, [a, b], null, 0);
 * console.log(key === cache.key(1, [a, b], null, 0), key === cache.key(1, [b, a], null, 0)); // true false
 * ```
 */
export class BindGroupCache {
  readonly capacity: number;
  #ids = new WeakMap<GPUBuffer, number>();
  #nextId = 1;
  #groups = new Map<string, GPUBindGroup>();
  /** Keys naming each buffer (by id), to drop them when the buffer is destroyed. */
  #keysOf = new Map<number, string[]>();
  /** Entries of `#keysOf`, dead ones included (a forgotten buffer's groups stay in its partners' lists). */
  #references = 0;
  /** Lookups that found a group, and ones that did not (tests and statistics). */
  hits = 0;
  misses = 0;

  constructor(capacity: number = BIND_GROUP_CACHE_ENTRIES) {
    this.capacity = capacity;
  }

  /** Groups held now. */
  get size(): number {
    return this.#groups.size;
  }

  #id(buffer: GPUBuffer): number {
    let id = this.#ids.get(buffer);
    if (id === undefined) this.#ids.set(buffer, id = this.#nextId++);
    return id;
  }

  /**
   * The key of a group of `kernel` (a number per pipeline) binding `buffers`
   * in order, then `uniforms` (a buffer bound at a dynamic offset) if any,
   * `uniformBytes` wide.
   */
  key(
    kernel: number,
    buffers: readonly GPUBuffer[],
    uniforms: GPUBuffer | null,
    uniformBytes: number,
  ): string {
    let key = `${kernel}`;
    for (let i = 0; i < buffers.length; i++) key += `,${this.#id(buffers[i])}`;
    if (uniforms) key += `|${this.#id(uniforms)}:${uniformBytes}`;
    return key;
  }

  /** The group stored under `key`, if any. */
  get(key: string): GPUBindGroup | undefined {
    const group = this.#groups.get(key);
    if (group) this.hits++;
    else this.misses++;
    return group;
  }

  /** Store `group`, made of `buffers`, under `key`. */
  set(key: string, group: GPUBindGroup, buffers: readonly GPUBuffer[]): void {
    // Bounded in groups, and in the lists of keys that forgotten buffers leave behind.
    if (this.#groups.size >= this.capacity || this.#references >= 8 * this.capacity) this.clear();
    this.#groups.set(key, group);
    this.#references += buffers.length;
    for (const b of buffers) {
      const id = this.#id(b);
      const keys = this.#keysOf.get(id);
      if (keys) keys.push(key);
      else this.#keysOf.set(id, [key]);
    }
  }

  /** Drop every group that binds `buffer` (it is being destroyed). */
  forget(buffer: GPUBuffer): void {
    const id = this.#ids.get(buffer);
    if (id === undefined) return;
    const keys = this.#keysOf.get(id);
    if (!keys) return;
    for (const k of keys) this.#groups.delete(k);
    this.#keysOf.delete(id);
  }

  /** Drop every group. */
  clear(): void {
    this.#groups.clear();
    this.#keysOf.clear();
    this.#references = 0;
  }
}
