/**
 * Command-line flags declared once with their type, range and meaning, and
 * parsed strictly: unknown flags, a flag given twice, a missing value, stray
 * arguments, non-numbers, non-integers, NaN, infinities, values out of range
 * and unknown choices are each a one-line error that names the flag. The
 * trainer and every script parse their flags with {@linkcode parseFlags}.
 *
 * Negative numbers work as separate values (`--seed -1` reaches the range
 * check instead of being read as a flag).
 *
 * @example
 * ```ts
 * import { parseFlags } from "./flags.ts";
 * const v = parseFlags(["--size", "64", "--pass=fwd,fwdbwd"], {
 *   size: { type: "int", min: 1, max: 4096, default: 256 },
 *   pass: { type: "choiceList", options: ["fwd", "fwdbwd"] },
 *   help: { type: "boolean" },
 * });
 * console.log(v.size, v.pass, v.help); // 64 ["fwd", "fwdbwd"] undefined
 * try {
 *   parseFlags(["--size", "1e9"], { size: { type: "int", min: 1, max: 4096 } });
 * } catch (e) {
 *   console.log((e as Error).message); // --size: expected an integer in [1, 4096], got "1e9"
 * }
 * ```
 * @module
 */

/** One flag: its type with range or options, an optional one-letter alias and a default. */
export type FlagSpec =
  & { short?: string }
  & (
    | { type: "boolean"; default?: boolean }
    | { type: "string"; default?: string }
    | { type: "int"; min?: number; max?: number; default?: number }
    | {
      type: "number";
      min?: number;
      max?: number;
      /** Exclusive bounds: the value must be above `above` / below `below`. */
      above?: number;
      below?: number;
      default?: number;
    }
    | { type: "choice"; options: readonly string[]; default?: string }
    | {
      type: "intList";
      min?: number;
      max?: number;
      /** Allowed numbers of values (any when absent). */
      lengths?: readonly number[];
      default?: number[];
    }
    | { type: "choiceList"; options: readonly string[]; default?: string[] }
  );

/** Flags by name (kebab-case, without the dashes). */
export type FlagSpecs = Record<string, FlagSpec>;

type ValueOf<F> = F extends { type: "boolean" } ? boolean
  : F extends { type: "int" | "number" } ? number
  : F extends { type: "intList" } ? number[]
  : F extends { type: "choiceList" } ? string[]
  : string;

/** Parsed values: flags with a default always have a value, others may be undefined. */
export type FlagValues<S extends FlagSpecs> = {
  -readonly [K in keyof S]: S[K] extends { default: unknown } ? ValueOf<S[K]>
    : ValueOf<S[K]> | undefined;
};

const NUMBER = /^[+-]?(?:\d+\.?\d*|\.\d+)(?:e[+-]?\d+)?$/i;

function got(raw: string): string {
  return JSON.stringify(raw.length > 40 ? `${raw.slice(0, 40)}…` : raw);
}

function rangeText(spec: { min?: number; max?: number; above?: number; below?: number }): string {
  const lo = spec.above !== undefined
    ? `(${spec.above}`
    : spec.min !== undefined
    ? `[${spec.min}`
    : "";
  const hi = spec.below !== undefined
    ? `${spec.below})`
    : spec.max !== undefined
    ? `${spec.max}]`
    : "";
  if (lo && hi) return ` in ${lo}, ${hi}`;
  if (lo) return spec.above !== undefined ? ` > ${spec.above}` : ` ≥ ${spec.min}`;
  if (hi) return spec.below !== undefined ? ` < ${spec.below}` : ` ≤ ${spec.max}`;
  return "";
}

function inRange(
  n: number,
  spec: { min?: number; max?: number; above?: number; below?: number },
): boolean {
  return (spec.min === undefined || n >= spec.min) && (spec.max === undefined || n <= spec.max) &&
    (spec.above === undefined || n > spec.above) && (spec.below === undefined || n < spec.below);
}

/**
 * What a flag takes, as `--help` and errors say it.
 *
 * @example
 * ```ts
 * import { describeFlag } from "./flags.ts";
 * console.log(describeFlag({ type: "int", min: 1, max: 4096 })); // an integer in [1, 4096]
 * console.log(describeFlag({ type: "number", min: 0, below: 1 })); // a number in [0, 1)
 * ```
 */
export function describeFlag(spec: FlagSpec): string {
  switch (spec.type) {
    case "boolean":
      return "on/off";
    case "string":
      return "text";
    case "int":
      return `an integer${rangeText(spec)}`;
    case "number":
      return `a number${rangeText(spec)}`;
    case "intList":
      return `comma-separated integers${rangeText(spec)}`;
    case "choice":
      return `one of ${spec.options.join(", ")}`;
    case "choiceList":
      return `some of ${spec.options.join(", ")}`;
  }
}

/**
 * A number flag's value: a finite decimal number within the range, or an
 * error naming `--flag`, what was expected and what was given.
 *
 * @example
 * ```ts
 * import { numberFlag } from "./flags.ts";
 * console.log(numberFlag("lr", "4e-3", { above: 0 })); // 0.004
 * try {
 *   numberFlag("epochs", "2.5", { min: 1, integer: true });
 * } catch (e) {
 *   console.log((e as Error).message); // --epochs: expected an integer ≥ 1, got "2.5"
 * }
 * ```
 */
export function numberFlag(
  flag: string,
  raw: string,
  spec: { min?: number; max?: number; above?: number; below?: number; integer?: boolean } = {},
): number {
  const n = NUMBER.test(raw.trim()) ? Number(raw) : NaN;
  if (!Number.isFinite(n) || (spec.integer && !Number.isInteger(n)) || !inRange(n, spec)) {
    const what = spec.integer ? "an integer" : "a number";
    throw new Error(`--${flag}: expected ${what}${rangeText(spec)}, got ${got(raw)}`);
  }
  return n;
}

/**
 * A choice flag's value: one of `options`, or an error listing them.
 *
 * @example
 * ```ts
 * import { choiceFlag } from "./flags.ts";
 * const sparse = choiceFlag("sparse-init", "ERK", ["snip", "ERK", "uniform"] as const); // typed "snip" | "ERK" | "uniform"
 * console.log(sparse); // ERK
 * try {
 *   choiceFlag("opt", "adam", ["adamw", "sgd"]);
 * } catch (e) {
 *   console.log((e as Error).message); // --opt: expected one of adamw, sgd, got "adam"
 * }
 * ```
 */
export function choiceFlag<T extends string>(flag: string, raw: string, options: readonly T[]): T {
  if (!options.includes(raw as T)) {
    throw new Error(`--${flag}: expected one of ${options.join(", ")}, got ${got(raw)}`);
  }
  return raw as T;
}

function listItems(flag: string, raw: string): string[] {
  const items = raw.split(/[,\s]+/).filter(Boolean);
  if (!items.length) throw new Error(`--${flag}: expected a comma-separated list, got ${got(raw)}`);
  return items;
}

function convert(flag: string, spec: FlagSpec, raw: string): unknown {
  switch (spec.type) {
    case "boolean":
      throw new Error(
        `--${flag}: takes no value (got ${got(raw)}; use --no-${flag} to turn it off)`,
      );
    case "string":
      if (raw === "") throw new Error(`--${flag}: expected a value, got ""`);
      return raw;
    case "int":
      return numberFlag(flag, raw, { ...spec, integer: true });
    case "number":
      return numberFlag(flag, raw, spec);
    case "choice":
      return choiceFlag(flag, raw, spec.options);
    case "intList": {
      const items = listItems(flag, raw);
      if (spec.lengths && !spec.lengths.includes(items.length)) {
        throw new Error(
          `--${flag}: expected ${spec.lengths.join(" or ")} integers, got ${items.length} (${
            got(raw)
          })`,
        );
      }
      return items.map((s) => numberFlag(flag, s, { ...spec, integer: true }));
    }
    case "choiceList":
      return listItems(flag, raw).map((s) => choiceFlag(flag, s, spec.options));
  }
}

/**
 * Parse `argv` against `specs`: `--name value`, `--name=value`, `-x value`
 * (a spec's `short`), `--flag`/`--no-flag` for booleans. Every value is
 * checked against its spec; defaults fill flags not given. Throws a one-line
 * error naming the flag for anything else.
 */
export function parseFlags<S extends FlagSpecs>(argv: readonly string[], specs: S): FlagValues<S> {
  const out: Record<string, unknown> = {};
  const seen = new Set<string>();
  const shorts = new Map(
    Object.entries(specs).filter(([, s]) => s.short).map(([k, s]) => [s.short!, k]),
  );
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    let name: string | undefined;
    let value: string | undefined;
    if (arg.startsWith("--") && arg.length > 2) {
      const eq = arg.indexOf("=");
      name = eq < 0 ? arg.slice(2) : arg.slice(2, eq);
      value = eq < 0 ? undefined : arg.slice(eq + 1);
    } else if (/^-[A-Za-z]$/.test(arg)) {
      name = shorts.get(arg[1]);
      if (!name) throw new Error(`${arg}: unknown flag (see --help)`);
    } else {
      throw new Error(`unexpected argument ${got(arg)}: flags start with -- (see --help)`);
    }
    let spec = Object.hasOwn(specs, name) ? specs[name] : undefined;
    let negated = false;
    if (!spec && name.startsWith("no-") && Object.hasOwn(specs, name.slice(3))) {
      if (specs[name.slice(3)].type !== "boolean") {
        throw new Error(`--${name}: --${name.slice(3)} is not an on/off flag`);
      }
      name = name.slice(3);
      spec = specs[name];
      negated = true;
    }
    if (!spec) throw new Error(`--${name}: unknown flag (see --help)`);
    if (seen.has(name)) throw new Error(`--${name}: given more than once; give it once`);
    seen.add(name);
    if (spec.type === "boolean") {
      if (value !== undefined) {
        if (negated) throw new Error(`--no-${name}: takes no value, got ${got(value)}`);
        if (!/^(true|false)$/i.test(value)) {
          throw new Error(`--${name}: expected true or false, got ${got(value)}`);
        }
        out[name] = value.toLowerCase() === "true";
      } else out[name] = !negated;
      continue;
    }
    if (value === undefined) {
      const next = argv[i + 1];
      // A value may start with "-" only as a number (`--seed -1`); otherwise it is the next flag.
      if (next === undefined || (next.startsWith("-") && !NUMBER.test(next))) {
        throw new Error(`--${name}: expected a value after it (see --help)`);
      }
      value = next;
      i++;
    }
    out[name] = convert(name, spec, value);
  }
  for (const [name, spec] of Object.entries(specs)) {
    if (!(name in out) && spec.default !== undefined) out[name] = spec.default;
  }
  return out as FlagValues<S>;
}

/**
 * Refuse flags that make no sense together: for each pair given both, a
 * one-line error naming them and why (`reason`).
 *
 * @example
 * ```ts
 * import { rejectTogether } from "./flags.ts";
 * const pairs: [string, string, string][] = [["resume", "weights", "a resumed run has its own weights"]];
 * rejectTogether({ resume: "out/checkpoint-last" }, pairs); // fine: only one given
 * try {
 *   rejectTogether({ resume: "out/checkpoint-last", weights: "w.pth" }, pairs);
 * } catch (e) {
 *   console.log((e as Error).message); // --resume and --weights conflict: a resumed run has its own weights
 * }
 * ```
 */
export function rejectTogether(
  given: Record<string, unknown>,
  pairs: readonly [string, string, string][],
): void {
  for (const [a, b, reason] of pairs) {
    if (given[a] !== undefined && given[b] !== undefined) {
      throw new Error(`--${a} and --${b} conflict: ${reason}`);
    }
  }
}

/**
 * Read the text file a flag names, or fail with one line that names the flag,
 * the path and why (missing, a folder, unreadable, not UTF-8 text).
 *
 * @example
 * ```ts
 * import { readFlagFile } from "./flags.ts";
 * try {
 *   await readFlagFile("anchor", "/no/such/anchor.csv");
 * } catch (e) {
 *   console.log((e as Error).message); // --anchor: cannot read "/no/such/anchor.csv": no such file
 * }
 * ```
 */
export async function readFlagFile(flag: string, path: string): Promise<string> {
  try {
    return new TextDecoder("utf-8", { fatal: true }).decode(await Deno.readFile(path));
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? "no such file"
      : e instanceof Deno.errors.IsADirectory
      ? "it is a folder, expected a file"
      : e instanceof TypeError
      ? "not UTF-8 text"
      : (e as Error).message.split("\n")[0];
    throw new Error(`--${flag}: cannot read "${path}": ${why}`);
  }
}

/**
 * {@linkcode readFlagFile} then `JSON.parse`, with a one-line error naming the
 * flag when the text is not JSON.
 *
 * @example
 * ```ts
 * import { readFlagJson } from "./flags.ts";
 * const path = await Deno.makeTempFile({ suffix: ".json" });
 * await Deno.writeTextFile(path, "{oops");
 * await readFlagJson("tuned", path).catch((e) => console.log(e.message)); // --tuned: "…" is not JSON (…)
 * ```
 */
export async function readFlagJson(flag: string, path: string): Promise<unknown> {
  const text = await readFlagFile(flag, path);
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new Error(`--${flag}: "${path}" is not JSON (${(e as Error).message.split("\n")[0]})`);
  }
}
