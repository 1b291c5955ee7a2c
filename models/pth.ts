/**
 * Read official PyTorch checkpoints (`.pth`/`.pt` files written by
 * `torch.save` since PyTorch 1.6) without PyTorch and without ever executing
 * anything from the file.
 *
 * Such a file is a zip archive holding `<archive>/data.pkl` (a pickle of the
 * saved object), one `<archive>/data/<key>` record of raw bytes per tensor
 * storage, `<archive>/byteorder` and `<archive>/version`. The pickle is run by
 * a small whitelisting virtual machine: it rebuilds dicts, lists, numbers and
 * strings itself and knows only the handful of globals a state dict needs
 * (`collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
 * `torch._utils._rebuild_parameter`, the storage types, …). Any other global
 * (`os.system`, `builtins.eval`, `argparse.Namespace`, …) makes it refuse the
 * file, unless `{ skipUnknown: true }` is passed, in which case such globals
 * become inert {@link PickleObject} placeholders; they are never called.
 * Globals that could only serve an attack (running commands, loading code,
 * reaching attributes by name: see `pickle_globals.ts`) are refused even then.
 *
 * The file is untrusted: the zip layer (`zip.ts`) checks every entry's
 * CRC-32 and caps inflation; the virtual machine (`pickle_vm.ts`) bounds opcode arguments,
 * the stack, the memo, each container, the estimated heap of what it builds
 * and the opcodes it runs ({@link PTH_LIMITS}); every tensor view is checked
 * against the bytes its storage record really holds (no negative, overlapping
 * or overflowing strides), and a state dict against the bytes all its views
 * would decode to, all before allocating. Every refusal is a
 * {@link PthFormatError}: one line naming the file, the record and the limit.
 *
 * @example
 * ```ts
 * import { loadPthFile } from "./pth.ts";
 * // Official SLaK checkpoints keep `args` (an argparse.Namespace) next to the weights.
 * const weights = await loadPthFile("tests/fixtures/checkpoint.pth", { skipUnknown: true });
 * console.log([...weights.keys()]); // ["stem.weight", "stem.bias"]
 * ```
 * @module
 */
import { dtypeBytes, type Weights } from "./safetensors.ts";
import { ZipArchive } from "./zip.ts";
import { oneLine, quoteName } from "./quote.ts";
import { STORAGE_DTYPES, toInt, typeOf, Unpickler } from "./pickle_vm.ts";
import {
  PickleGlobal,
  type PickleValue,
  PTH_LIMITS,
  PthFormatError,
  PthStorage,
  PthTensor,
} from "./pth_values.ts";

export {
  PickleGlobal,
  PickleObject,
  type PickleValue,
  PTH_LIMITS,
  PthFormatError,
  PthStorage,
  PthTensor,
} from "./pth_values.ts";

// ---------------------------------------------------------------- options

/**
 * Options of {@link readPth}.
 *
 * @example
 * ```ts
 * import { type PthOptions, readPth } from "./pth.ts";
 * const opts: PthOptions = { skipUnknown: true, source: "checkpoint.pth" };
 * readPth(await Deno.readFile("tests/fixtures/checkpoint.pth"), opts);
 * ```
 */
export interface PthOptions {
  /**
   * Turn globals outside the whitelist into inert {@link PickleObject}
   * placeholders instead of refusing the file (default false: refuse).
   */
  skipUnknown?: boolean;
  /** Name used in error messages (the file path). */
  source?: string;
}

/**
 * Options of {@link pthStateDict} and {@link loadPthFile}.
 *
 * @example
 * ```ts
 * import { pthStateDict, type PthStateDictOptions } from "./pth.ts";
 * const opts: PthStateDictOptions = { skipUnknown: true, entry: "model_ema" };
 * pthStateDict(await Deno.readFile("tests/fixtures/checkpoint.pth"), opts);
 * ```
 */
export interface PthStateDictOptions extends PthOptions {
  /**
   * Top-level key holding the state dict. Default: the first of `model`,
   * `state_dict`, `model_ema` whose value is a dict, else the top-level dict itself.
   */
  entry?: string;
  /** Leading key prefix to remove (default "module.", left by DataParallel). */
  stripPrefix?: string;
}

// ---------------------------------------------------------------- public API

/**
 * Read a `torch.save` checkpoint and return the saved top-level object, with
 * tensors as lazily decoded {@link PthTensor}s. Refuses (throws a
 * {@link PthFormatError}, naming the global) any pickle global outside the
 * whitelist unless `skipUnknown` is set, and globals that could only serve
 * an attack (`os.system`, `builtins.eval`, …) even then. Every size the file
 * declares is checked against {@link PTH_LIMITS} and the bytes present
 * before memory is allocated for it.
 *
 * @example
 * ```ts
 * import { PthTensor, readPth } from "./pth.ts";
 * const ckpt = readPth(await Deno.readFile("tests/fixtures/checkpoint.pth"), { skipUnknown: true });
 * const top = ckpt as Map<string, unknown>;
 * console.log(top.get("epoch")); // 3
 * const model = top.get("model") as Map<string, PthTensor>;
 * console.log(model.get("module.stem.weight")!.toFloat32()); // Float32Array(6) [-1, -0.5, 0, 0.5, 1, 1.5]
 * ```
 */
export function readPth(bytes: Uint8Array, opts: PthOptions = {}): PickleValue {
  const source = oneLine(opts.source ?? "PyTorch checkpoint");
  try {
    return readPthUnchecked(bytes, source, opts.skipUnknown ?? false);
  } catch (e) {
    if (e instanceof PthFormatError) throw e;
    // A last line of defence: whatever slipped past the checks still leaves as one line.
    const msg = oneLine((e instanceof Error ? e.message : String(e)).slice(0, 300));
    throw new PthFormatError(`cannot read ${source}: ${msg}`);
  }
}

function readPthUnchecked(bytes: Uint8Array, source: string, skipUnknown: boolean): PickleValue {
  const fail: (why: string) => never = (why) => {
    throw new PthFormatError(`cannot read ${source}: ${why}`);
  };
  if (
    bytes.byteLength < 4 || bytes[0] !== 0x50 || bytes[1] !== 0x4b || bytes[2] !== 0x03 ||
    bytes[3] !== 0x04
  ) {
    if (bytes[0] === 0x80) {
      fail(
        "legacy (pre-1.6, non-zip) torch.save format is not supported; re-save it with a recent PyTorch",
      );
    }
    fail("not a torch.save zip archive (no zip signature at the start)");
  }
  const zip = new ZipArchive(bytes, fail);
  const entries = zip.entries;
  const names = [...entries.keys()];
  if (
    names.some((n) => /(^|\/)constants\.pkl$/.test(n)) && names.some((n) => /(^|\/)code\//.test(n))
  ) {
    fail("this is a TorchScript archive (torch.jit.save), not a torch.save checkpoint");
  }
  // PyTorch's reader takes the archive folder from the first entry; fall back to any <dir>/data.pkl.
  const first = names[0]?.split("/")[0];
  const pkl = entries.has(`${first}/data.pkl`)
    ? `${first}/data.pkl`
    : names.find((n) => /^[^/]+\/data\.pkl$/.test(n));
  if (!pkl) fail("no <archive>/data.pkl record");
  const prefix = pkl.slice(0, -"data.pkl".length);
  const record = (name: string): Uint8Array => zip.read(prefix + name);
  let littleEndian = true;
  if (entries.has(`${prefix}byteorder`)) {
    if (entries.get(`${prefix}byteorder`)!.size > 16) fail(`${prefix}byteorder is too long`);
    const order = new TextDecoder().decode(record("byteorder")).trim();
    if (order !== "little" && order !== "big") fail(`unknown byteorder ${quoteName(order)}`);
    littleEndian = order === "little";
  }
  const pickleSize = entries.get(pkl)!.size;
  if (pickleSize > PTH_LIMITS.maxPickleBytes) {
    fail(`${pkl} is ${pickleSize} bytes (limit ${PTH_LIMITS.maxPickleBytes})`);
  }
  const storages = new Map<string, PthStorage>();
  const persistentLoad = (pid: PickleValue): PickleValue => {
    if (!Array.isArray(pid) || pid[0] !== "storage" || pid.length < 5) {
      throw new Error(`corrupt pickle (unknown persistent id ${typeOf(pid)})`);
    }
    const [, type, key, location, numelValue] = pid;
    if (!(type instanceof PickleGlobal) || !/Storage$/.test(type.name)) {
      throw new Error(`corrupt pickle (storage type is a ${typeOf(type)})`);
    }
    if (typeof key !== "string") {
      throw new Error(`corrupt pickle (storage key is a ${typeOf(key)})`);
    }
    const numel = toInt(numelValue, "storage size");
    const name = `data/${key}`;
    const cached = storages.get(key);
    if (cached) {
      if (cached.typeName !== type.fullName || cached.numel !== numel) {
        throw new Error(
          `storage ${
            quoteName(name)
          } is declared twice, as ${cached.numel} × ${cached.typeName} and ${numel} × ${type.fullName}`,
        );
      }
      return cached;
    }
    const entry = entries.get(prefix + name);
    if (!entry) throw new Error(`missing record ${quoteName(prefix + name)}`);
    const dtype = STORAGE_DTYPES[type.fullName] ?? null;
    if (numel < 0) throw new Error(`storage ${quoteName(name)} has ${numel} elements`);
    // The record's size is known from the directory: check it before anything is read.
    if (dtype !== null && entry.size < numel * dtypeBytes(dtype)) {
      throw new Error(
        `storage ${quoteName(name)} declares ${numel} × ${type.fullName} (${
          numel * dtypeBytes(dtype)
        } bytes) but its record holds ${entry.size} bytes`,
      );
    }
    let raw: Uint8Array | null = null;
    const storage = new PthStorage(
      key,
      dtype,
      type.fullName,
      String(location).slice(0, 64),
      numel,
      littleEndian,
      () => (raw ??= record(name)),
      source,
    );
    storages.set(key, storage);
    return storage;
  };
  return new Unpickler(record("data.pkl"), {
    record: pkl,
    skipUnknown,
    heapBudget: PTH_LIMITS.baseHeapBytes + PTH_LIMITS.heapPerFileByte * bytes.byteLength,
    opBudget: PTH_LIMITS.baseOps + PTH_LIMITS.opsPerFileByte * bytes.byteLength,
    persistentLoad,
    fail,
  }).run();
}

/** A dict key for a message: strings quoted, other values by type. */
function describeKey(k: PickleValue): string {
  return typeof k === "string" ? quoteName(k) : typeOf(k);
}

/**
 * Read a `torch.save` checkpoint as f32 weights: the state dict found under
 * `model`, `state_dict` or `model_ema` (first present, or `opts.entry`), or
 * the top-level dict itself, with a leading `module.` stripped from keys.
 * Non-tensor entries are skipped. The tensors together may decode to at most
 * {@link PTH_LIMITS}`.outputPerStorageByte` f32 bytes per byte of the
 * storages they view (plus 1 MiB), checked before any is decoded.
 *
 * @example
 * ```ts
 * import { pthStateDict } from "./pth.ts";
 * const bytes = await Deno.readFile("tests/fixtures/checkpoint.pth");
 * const ema = pthStateDict(bytes, { skipUnknown: true, entry: "model_ema" });
 * console.log(ema.get("stem.bias")); // { shape: [2], data: Float32Array [-1, -2] }
 * ```
 */
export function pthStateDict(bytes: Uint8Array, opts: PthStateDictOptions = {}): Weights {
  const source = oneLine(opts.source ?? "PyTorch checkpoint");
  const fail: (why: string) => never = (why) => {
    throw new PthFormatError(`cannot read ${source}: ${why}`);
  };
  const top = readPth(bytes, { ...opts, source });
  if (!(top instanceof Map)) fail(`the saved object is a ${typeOf(top)}, not a dict`);
  let dict: Map<PickleValue, PickleValue> = top as Map<PickleValue, PickleValue>;
  let where = "the top-level dict";
  if (opts.entry !== undefined) {
    const v = dict.get(opts.entry);
    if (!(v instanceof Map)) {
      const keys = [...dict.keys()];
      const shown = keys.slice(0, 20).map(describeKey).join(", ");
      fail(
        `no dict under ${quoteName(opts.entry)} (top-level keys: ${shown}${
          keys.length > 20 ? `, … ${keys.length} in all` : ""
        })`,
      );
    }
    dict = v as Map<PickleValue, PickleValue>;
    where = quoteName(opts.entry);
  } else {
    for (const key of ["model", "state_dict", "model_ema"]) {
      const v = dict.get(key);
      if (v instanceof Map) {
        dict = v;
        where = `"${key}"`;
        break;
      }
    }
  }
  const strip = opts.stripPrefix ?? "module.";
  const tensors: [string, string, PthTensor][] = [];
  const names = new Set<string>();
  const storages = new Set<PthStorage>();
  let outputBytes = 0;
  for (const [k, v] of dict) {
    if (!(v instanceof PthTensor)) continue;
    if (typeof k !== "string") fail(`a tensor in ${where} has a ${typeOf(k)} key, not a string`);
    const key = k as string;
    const name = strip && key.startsWith(strip) ? key.slice(strip.length) : key;
    if (names.has(name)) {
      fail(`duplicate key ${quoteName(name)} after removing the prefix ${quoteName(strip)}`);
    }
    names.add(name);
    if (v.dtype === null) {
      fail(`tensor ${quoteName(key)}: cannot decode a tensor of ${v.storage.typeName}`);
    }
    tensors.push([key, name, v]);
    storages.add(v.storage);
    outputBytes += 4 * v.shape.reduce((a, b) => a * b, 1);
  }
  if (tensors.length === 0) fail(`no tensors in ${where}`);
  let storageBytes = 0;
  for (const s of storages) storageBytes += s.dtype ? s.numel * dtypeBytes(s.dtype) : 0;
  const allowed = PTH_LIMITS.outputPerStorageByte * storageBytes + (1 << 20);
  if (outputBytes > allowed) {
    fail(
      `the tensors of ${where} would decode to ${outputBytes} bytes from ${storageBytes} bytes of storage (limit ${PTH_LIMITS.outputPerStorageByte}× + 1 MiB: views repeat one storage too often)`,
    );
  }
  const out: Weights = new Map();
  const prefix = `cannot read ${source}: `;
  for (const [key, name, t] of tensors) {
    try {
      out.set(name, { shape: [...t.shape], data: t.toFloat32() });
    } catch (e) {
      const msg = oneLine(e instanceof Error ? e.message : String(e));
      fail(`tensor ${quoteName(key)}: ${msg.startsWith(prefix) ? msg.slice(prefix.length) : msg}`);
    }
  }
  return out;
}

/**
 * Read a `torch.save` checkpoint file from disk as f32 weights (see
 * {@link pthStateDict}); errors name the file.
 *
 * @example
 * ```ts
 * import { loadPthFile } from "./pth.ts";
 * const weights = await loadPthFile("tests/fixtures/state_dict.pth");
 * console.log(weights.get("bn.num_batches_tracked")); // { shape: [], data: Float32Array [7] }
 * ```
 */
export async function loadPthFile(path: string, opts: PthStateDictOptions = {}): Promise<Weights> {
  // A device or pipe would be read without end; checkpoints are regular files.
  if (!(await Deno.stat(path)).isFile) {
    throw new PthFormatError(`cannot read ${oneLine(path)}: not a regular file`);
  }
  return pthStateDict(await Deno.readFile(path), { source: path, ...opts });
}
