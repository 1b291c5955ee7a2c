/**
 * CSV text from rows of values and back, and an atomic file write, so that a
 * table or log that a script or the trainer rewrites is never seen
 * half-written.
 *
 * @example
 * ```ts
 * import { toCsv, writeFileAtomic } from "./csv.ts";
 * const csv = toCsv([{ model: "convnext_tiny", params_M: 28.59 }, { model: "a,b", note: 'say "hi"' }]);
 * console.log(csv);
 * // model,params_M,note
 * // convnext_tiny,28.59,
 * // "a,b",,"say ""hi"""
 * await writeFileAtomic(await Deno.makeTempFile({ suffix: ".csv" }), csv);
 * ```
 * @module
 */

/** A cell: numbers and booleans print as JavaScript does, null/undefined as empty. */
export type Cell = string | number | boolean | null | undefined;

/** Options of {@linkcode toCsv}. */
export interface CsvOptions {
  /** Column order; by default every key in first-seen order over all rows. */
  columns?: string[];
  /** Lines written before the header, each prefixed with `# ` (read with `comment="#"` in pandas). */
  comments?: string[];
}

/**
 * RFC 4180 CSV (LF line ends, trailing newline): a header row, then one line
 * per row. Cells holding a comma, quote or line break are quoted.
 */
export function toCsv(rows: readonly Record<string, Cell>[], opts: CsvOptions = {}): string {
  const columns = opts.columns ?? [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const lines = (opts.comments ?? []).map((c) => `# ${c.replace(/[\r\n]+/g, " ")}`);
  lines.push(columns.map(csvCell).join(","));
  for (const r of rows) lines.push(columns.map((c) => csvCell(r[c])).join(","));
  return lines.join("\n") + "\n";
}

function csvCell(v: Cell): string {
  if (v === null || v === undefined) return "";
  const s = String(v);
  // A leading "#" is quoted too, so that a reader skipping comment lines keeps the row.
  return /[",\r\n]|^#/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/** A CSV row as read: column name → cell text. */
export type CsvRow = Record<string, string>;

/**
 * Rows of CSV text (RFC 4180; LF or CRLF line ends), as {@linkcode toCsv}
 * writes it or another tool does: the first record is the header, each later
 * one a row keyed by it (a cell the row lacks is ""). Blank lines and lines
 * starting with `#` (comments) are skipped, and so is a later record equal to
 * the header (CSV outputs written one after the other). Quoted cells may
 * hold commas, quotes and line breaks and are kept verbatim; unquoted cells
 * are trimmed.
 *
 * @example
 * ```ts
 * import { parseCsv, toCsv } from "./csv.ts";
 * const text = toCsv([{ model: "a,b", ms: 1.5 }], { comments: ["measured on llvmpipe"] });
 * console.log(parseCsv(text)); // [ { model: "a,b", ms: "1.5" } ]
 * console.log(parseCsv("a,b\n1\na,b\n3,4\n")); // [ { a: "1", b: "" }, { a: "3", b: "4" } ]
 * ```
 */
export function parseCsv(text: string): CsvRow[] {
  const records = csvRecords(text);
  if (!records.length) return [];
  const [head, ...rows] = records;
  const isHeader = (r: string[]) => r.length === head.length && r.every((v, k) => v === head[k]);
  return rows.filter((r) => !isHeader(r)).map((r) =>
    Object.fromEntries(head.map((name, k) => [name, r[k] ?? ""]))
  );
}

/** The records of CSV text as arrays of cells, without blank and `#` comment lines. */
function csvRecords(text: string): string[][] {
  const records: string[][] = [];
  let i = 0;
  while (i < text.length) {
    const lineEnd = text.indexOf("\n", i) < 0 ? text.length : text.indexOf("\n", i);
    if (text[i] === "#" || text.slice(i, lineEnd).trim() === "") {
      i = lineEnd + 1;
      continue;
    }
    const cells: string[] = [];
    let cell = "";
    let quoted = false;
    for (;; i++) {
      const c = text[i];
      if (c === '"' && cell.trim() === "" && !quoted) {
        // A quoted cell: up to the quote not followed by another quote.
        cell = "";
        for (i++; i < text.length && !(text[i] === '"' && text[i + 1] !== '"'); i++) {
          cell += text[i];
          if (text[i] === '"') i++;
        }
        quoted = true;
      } else if (c === undefined || c === "\n" || c === ",") {
        cells.push(quoted ? cell : cell.trim());
        cell = "";
        quoted = false;
        if (c !== ",") {
          i++;
          break;
        }
      } else if (!quoted) cell += c;
    }
    records.push(cells);
  }
  return records;
}

/**
 * Write `data` to `path` atomically: write a temporary file in the same
 * folder (creating the folder), then rename it over `path`, so readers see
 * the old file or the new one, never a partial one.
 */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const slash = path.lastIndexOf("/");
  const dir = slash >= 0 ? path.slice(0, slash) || "/" : ".";
  const base = path.slice(slash + 1);
  if (!base) throw new Error(`writeFileAtomic: "${path}" names a folder, not a file`);
  await Deno.mkdir(dir, { recursive: true });
  const tmp = `${dir}/.${base}.${Deno.pid}.${crypto.randomUUID().slice(0, 8)}.tmp`;
  const bytes = typeof data === "string" ? new TextEncoder().encode(data) : data;
  try {
    await Deno.writeFile(tmp, bytes);
    await Deno.rename(tmp, path);
  } catch (e) {
    await Deno.remove(tmp).catch(() => {});
    throw e;
  }
}

/**
 * Append `lines` to the text file at `path` without ever leaving it torn:
 * the old content plus the new lines are written with
 * {@linkcode writeFileAtomic}, so a crash leaves the file as it was before or
 * after the append. `header` starts a file that does not exist yet; a last
 * line without its newline (torn by an older writer) is dropped.
 *
 * @example
 * ```ts
 * import { appendLinesAtomic } from "./csv.ts";
 * const path = `${await Deno.makeTempDir()}/log.csv`;
 * await appendLinesAtomic(path, "step,loss", ["1,0.5"]);
 * await appendLinesAtomic(path, "step,loss", ["2,0.25"]);
 * console.log(await Deno.readTextFile(path)); // step,loss / 1,0.5 / 2,0.25
 * ```
 */
export async function appendLinesAtomic(
  path: string,
  header: string,
  lines: readonly string[],
): Promise<void> {
  let old = await Deno.readTextFile(path).catch((e) => {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  });
  if (old !== null && old !== "" && !old.endsWith("\n")) {
    old = old.slice(0, old.lastIndexOf("\n") + 1);
  }
  const start = old === null || old === "" ? header + "\n" : old;
  await writeFileAtomic(path, start + lines.map((l) => l + "\n").join(""));
}

/**
 * {@linkcode toCsv} then {@linkcode writeFileAtomic}.
 *
 * @example
 * ```ts
 * import { writeCsv } from "./csv.ts";
 * const path = await Deno.makeTempFile({ suffix: ".csv" });
 * await writeCsv(path, [{ epoch: 1, top1: 41.5 }, { epoch: 2, top1: 57 }]);
 * console.log(await Deno.readTextFile(path)); // epoch,top1 / 1,41.5 / 2,57
 * ```
 */
export async function writeCsv(
  path: string,
  rows: readonly Record<string, Cell>[],
  opts: CsvOptions = {},
): Promise<void> {
  await writeFileAtomic(path, toCsv(rows, opts));
}
