/**
 * Small SVG line charts (several series per panel, several panels per
 * figure, axes with ticks, axis labels, legends, titles) and SVG → PNG
 * conversion with sharp (librsvg). The pieces (`niceTicks`, `linearScale`,
 * `axesSvg`, `svgToPng`, `writeSvgPng`) are exported for other figures
 * (heatmaps, training curves).
 *
 * Converting to PNG loads sharp's native library: run with `-A` (or
 * `--allow-ffi --allow-read --allow-env --allow-sys`).
 *
 * @example
 * ```ts
 * import { lineChartSvg, writeLineChart } from "./plot.ts";
 * const chart = {
 *   title: "y = x² and y = 2x",
 *   panels: [{
 *     xLabel: "x",
 *     yLabel: "y",
 *     series: [
 *       { name: "x²", x: [0, 1, 2, 3], y: [0, 1, 4, 9] },
 *       { name: "2x", x: [0, 1, 2, 3], y: [0, 2, 4, 6], dash: "6 3" },
 *     ],
 *   }],
 * };
 * console.log(lineChartSvg(chart).startsWith("<svg")); // true
 * await writeLineChart(await Deno.makeTempFile({ suffix: ".png" }), chart);
 * ```
 * @module
 */
// Pinned inline so the first run (or `deno install`) fetches it without an import map entry.
import sharp from "sharp";
import { useBundledFonts } from "./fonts.ts";
import { writeFileAtomic } from "./csv.ts";

/** Colour-blind-safe series colours (Okabe–Ito). */
export const PALETTE: readonly string[] = [
  "#0072B2",
  "#D55E00",
  "#009E73",
  "#CC79A7",
  "#E69F00",
  "#56B4E9",
  "#000000",
  "#F0E442",
];

const FONT = "DejaVu Sans, Helvetica, Arial, sans-serif";

/** One line: points (x[i], y[i]); a non-finite y breaks the line. */
export interface Series {
  name: string;
  x: readonly number[];
  y: readonly number[];
  color?: string;
  /** SVG stroke-dasharray, e.g. "6 3". */
  dash?: string;
  /** Draw a dot at every point. */
  markers?: boolean;
}

/** A labelled point drawn over the lines (to call out a value). */
export interface Mark {
  x: number;
  y: number;
  label?: string;
  color?: string;
  /** Put the label under the point instead of above it. */
  below?: boolean;
}

/** A horizontal (`y`) or vertical (`x`) reference line. */
export interface RefLine {
  x?: number;
  y?: number;
  label?: string;
  color?: string;
  dash?: string;
}

/** One panel: axes, series, legend. */
export interface Panel {
  title?: string;
  xLabel?: string;
  yLabel?: string;
  series: readonly Series[];
  /** Axis ranges; by default x spans the data and y the data widened to round ticks. */
  xDomain?: [number, number];
  yDomain?: [number, number];
  /** Explicit tick positions. */
  xTicks?: readonly number[];
  yTicks?: readonly number[];
  /** Start the y axis at 0 (default true when all y ≥ 0). */
  yFromZero?: boolean;
  marks?: readonly Mark[];
  lines?: readonly RefLine[];
  legend?: "top-left" | "top-right" | "bottom-left" | "bottom-right" | "none";
}

/** A figure: panels on a grid, with a title and subtitle. */
export interface Chart {
  title?: string;
  subtitle?: string;
  panels: readonly Panel[];
  /** Panels per row (default: all in one row). */
  columns?: number;
  panelWidth?: number;
  panelHeight?: number;
}

/**
 * Escape text for SVG.
 *
 * @example
 * ```ts
 * import { escapeXml } from "./plot.ts";
 * console.log(escapeXml("a<b & c")); // a&#60;b &#38; c
 * ```
 */
export function escapeXml(s: string): string {
  return s.replace(/[<>&"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

/**
 * About `count` round tick values covering [lo, hi] (steps 1, 2, 2.5, 5 × 10ⁿ).
 *
 * @example
 * ```ts
 * import { niceTicks } from "./plot.ts";
 * console.log(niceTicks(0, 87)); // [0, 20, 40, 60, 80, 100]
 * ```
 */
export function niceTicks(lo: number, hi: number, count = 5): number[] {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return [];
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) {
    const pad = Math.abs(lo) > 0 ? Math.abs(lo) * 0.1 : 1;
    [lo, hi] = [lo - pad, hi + pad];
  }
  const raw = (hi - lo) / Math.max(count, 1);
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((s) => s >= raw) ?? 10 * mag;
  const ticks: number[] = [];
  const last = Math.ceil(hi / step - 1e-9);
  for (let i = Math.floor(lo / step + 1e-9); i <= last; i++) {
    ticks.push(Number((i * step).toPrecision(12)));
  }
  return ticks;
}

/**
 * A tick label: short, no float noise (1e4 → "10k" style is left to callers).
 *
 * @example
 * ```ts
 * import { formatTick } from "./plot.ts";
 * console.log(formatTick(0.1 + 0.2), formatTick(250000)); // 0.3 2.5e+5
 * ```
 */
export function formatTick(v: number): string {
  if (v === 0) return "0";
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(1);
  return String(Number(v.toPrecision(6)));
}

/**
 * Linear map from a data range to a pixel range.
 *
 * @example
 * ```ts
 * import { linearScale } from "./plot.ts";
 * const y = linearScale([0, 100], [200, 0]); // data up, pixels down
 * console.log(y(0), y(25), y(100)); // 200 150 0
 * ```
 */
export function linearScale(
  [d0, d1]: readonly [number, number],
  [r0, r1]: readonly [number, number],
): (v: number) => number {
  const k = d1 === d0 ? 0 : (r1 - r0) / (d1 - d0);
  return (v) => r0 + (v - d0) * k;
}

/** A plot area in pixels. */
export interface Frame {
  left: number;
  top: number;
  width: number;
  height: number;
}

/**
 * Axes of a frame: box, grid lines, ticks with labels, axis labels and an
 * optional title above.
 *
 * @example
 * ```ts
 * import { axesSvg, linearScale } from "./plot.ts";
 * const frame = { left: 40, top: 20, width: 200, height: 100 };
 * const x = { ticks: [0, 5, 10], scale: linearScale([0, 10], [40, 240]), label: "epoch" };
 * const y = { ticks: [0, 50, 100], scale: linearScale([0, 100], [120, 20]), label: "top-1 %" };
 * console.log(axesSvg(frame, x, y, "demo").startsWith("<")); // true: SVG elements
 * ```
 */
export function axesSvg(
  f: Frame,
  x: { ticks: readonly number[]; scale: (v: number) => number; label?: string },
  y: { ticks: readonly number[]; scale: (v: number) => number; label?: string },
  title?: string,
): string {
  const out: string[] = [];
  const bottom = f.top + f.height;
  const right = f.left + f.width;
  for (const t of x.ticks) {
    const px = x.scale(t);
    out.push(
      `<line x1="${px}" y1="${f.top}" x2="${px}" y2="${bottom}" stroke="#e5e5e5"/>`,
      `<line x1="${px}" y1="${bottom}" x2="${px}" y2="${bottom + 5}" stroke="#333"/>`,
      `<text x="${px}" y="${bottom + 18}" text-anchor="middle" font-size="11">${
        escapeXml(formatTick(t))
      }</text>`,
    );
  }
  for (const t of y.ticks) {
    const py = y.scale(t);
    out.push(
      `<line x1="${f.left}" y1="${py}" x2="${right}" y2="${py}" stroke="#e5e5e5"/>`,
      `<line x1="${f.left - 5}" y1="${py}" x2="${f.left}" y2="${py}" stroke="#333"/>`,
      `<text x="${f.left - 8}" y="${py + 4}" text-anchor="end" font-size="11">${
        escapeXml(formatTick(t))
      }</text>`,
    );
  }
  out.push(
    `<rect x="${f.left}" y="${f.top}" width="${f.width}" height="${f.height}" fill="none" stroke="#333"/>`,
  );
  if (x.label) {
    out.push(
      `<text x="${f.left + f.width / 2}" y="${bottom + 38}" text-anchor="middle" font-size="13">${
        escapeXml(x.label)
      }</text>`,
    );
  }
  if (y.label) {
    const cx = f.left - 48;
    const cy = f.top + f.height / 2;
    out.push(
      `<text x="${cx}" y="${cy}" text-anchor="middle" font-size="13" transform="rotate(-90 ${cx} ${cy})">${
        escapeXml(y.label)
      }</text>`,
    );
  }
  if (title) {
    out.push(
      `<text x="${f.left + f.width / 2}" y="${
        f.top - 10
      }" text-anchor="middle" font-size="14" font-weight="bold">${escapeXml(title)}</text>`,
    );
  }
  return out.join("\n");
}

function extent(values: number[]): [number, number] {
  const finite = values.filter(Number.isFinite);
  return finite.length ? [Math.min(...finite), Math.max(...finite)] : [0, 1];
}

/** Domain and ticks: the given domain, or the data's widened to its outer ticks. */
function axis(
  data: number[],
  domain: [number, number] | undefined,
  ticks: readonly number[] | undefined,
  fromZero: boolean,
  tight: boolean,
): { domain: [number, number]; ticks: number[] } {
  if (domain) {
    return { domain, ticks: [...(ticks ?? niceTicks(domain[0], domain[1]))] };
  }
  let [lo, hi] = extent(data);
  if (fromZero) lo = Math.min(lo, 0);
  const t = [...(ticks ?? niceTicks(lo, hi))];
  if (tight && hi > lo) return { domain: [lo, hi], ticks: t };
  return { domain: [Math.min(lo, t[0] ?? lo), Math.max(hi, t.at(-1) ?? hi)], ticks: t };
}

function panelSvg(p: Panel, f: Frame): string {
  const xs = p.series.flatMap((s) => [...s.x]);
  const ys = p.series.flatMap((s) => [...s.y]);
  const fromZero = p.yFromZero ?? ys.filter(Number.isFinite).every((v) => v >= 0);
  const ax = axis(xs, p.xDomain, p.xTicks, false, true);
  const ay = axis(ys, p.yDomain, p.yTicks, fromZero, false);
  const sx = linearScale(ax.domain, [f.left, f.left + f.width]);
  const sy = linearScale(ay.domain, [f.top + f.height, f.top]);
  const inX = (t: number) => t >= ax.domain[0] - 1e-9 && t <= ax.domain[1] + 1e-9;
  const inY = (t: number) => t >= ay.domain[0] - 1e-9 && t <= ay.domain[1] + 1e-9;
  const out = [
    axesSvg(
      f,
      { ticks: ax.ticks.filter(inX), scale: sx, label: p.xLabel },
      { ticks: ay.ticks.filter(inY), scale: sy, label: p.yLabel },
      p.title,
    ),
  ];
  const clip = `clip${Math.round(f.left)}x${Math.round(f.top)}`;
  out.push(
    `<clipPath id="${clip}"><rect x="${f.left}" y="${f.top}" width="${f.width}" height="${f.height}"/></clipPath>`,
    `<g clip-path="url(#${clip})">`,
  );
  for (const l of p.lines ?? []) {
    const color = l.color ?? "#777";
    const dash = l.dash ?? "4 3";
    if (l.y !== undefined) {
      const py = sy(l.y);
      out.push(
        `<line x1="${f.left}" y1="${py}" x2="${
          f.left + f.width
        }" y2="${py}" stroke="${color}" stroke-dasharray="${dash}"/>`,
      );
      if (l.label) {
        out.push(
          `<text x="${f.left + 4}" y="${py - 4}" font-size="10" fill="${color}">${
            escapeXml(l.label)
          }</text>`,
        );
      }
    }
    if (l.x !== undefined) {
      const px = sx(l.x);
      out.push(
        `<line x1="${px}" y1="${f.top}" x2="${px}" y2="${
          f.top + f.height
        }" stroke="${color}" stroke-dasharray="${dash}"/>`,
      );
      if (l.label) {
        out.push(
          `<text x="${px + 4}" y="${f.top + 12}" font-size="10" fill="${color}">${
            escapeXml(l.label)
          }</text>`,
        );
      }
    }
  }
  p.series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    let d = "";
    let pen = false;
    for (let j = 0; j < Math.min(s.x.length, s.y.length); j++) {
      if (!Number.isFinite(s.x[j]) || !Number.isFinite(s.y[j])) {
        pen = false;
        continue;
      }
      d += `${pen ? "L" : "M"}${sx(s.x[j]).toFixed(2)},${sy(s.y[j]).toFixed(2)}`;
      pen = true;
    }
    const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
    out.push(
      `<path d="${d}" fill="none" stroke="${color}" stroke-width="2" stroke-linejoin="round"${dash}/>`,
    );
    if (s.markers) {
      for (let j = 0; j < s.x.length; j++) {
        if (Number.isFinite(s.x[j]) && Number.isFinite(s.y[j])) {
          out.push(`<circle cx="${sx(s.x[j])}" cy="${sy(s.y[j])}" r="2.5" fill="${color}"/>`);
        }
      }
    }
  });
  out.push("</g>");
  for (const m of p.marks ?? []) {
    const [px, py] = [sx(m.x), sy(m.y)];
    const color = m.color ?? "#000";
    out.push(
      `<circle cx="${px}" cy="${py}" r="4.5" fill="none" stroke="${color}" stroke-width="1.5"/>`,
    );
    if (m.label) {
      const leftSide = px > f.left + f.width * 0.6;
      out.push(
        `<text x="${px + (leftSide ? -8 : 8)}" y="${
          py + (m.below ? 17 : -8)
        }" font-size="10" fill="${color}" text-anchor="${leftSide ? "end" : "start"}">${
          escapeXml(m.label)
        }</text>`,
      );
    }
  }
  const where = p.legend ?? "top-left";
  if (where !== "none" && p.series.length) out.push(legendSvg(p.series, f, where));
  return out.join("\n");
}

function legendSvg(series: readonly Series[], f: Frame, where: string): string {
  const rowH = 16;
  const w = 36 + 7 * Math.max(...series.map((s) => s.name.length));
  const h = rowH * series.length + 8;
  const x = where.endsWith("left") ? f.left + 8 : f.left + f.width - w - 8;
  const y = where.startsWith("top") ? f.top + 8 : f.top + f.height - h - 8;
  const out = [
    `<rect x="${x}" y="${y}" width="${w}" height="${h}" fill="#fff" fill-opacity="0.85" stroke="#bbb"/>`,
  ];
  series.forEach((s, i) => {
    const color = s.color ?? PALETTE[i % PALETTE.length];
    const cy = y + 4 + rowH * i + rowH / 2;
    const dash = s.dash ? ` stroke-dasharray="${s.dash}"` : "";
    out.push(
      `<line x1="${x + 6}" y1="${cy}" x2="${
        x + 24
      }" y2="${cy}" stroke="${color}" stroke-width="2"${dash}/>`,
      `<text x="${x + 29}" y="${cy + 4}" font-size="11">${escapeXml(s.name)}</text>`,
    );
  });
  return out.join("\n");
}

/**
 * Break `text` into lines of at most `max` characters at spaces (a word
 * longer than `max` keeps a line of its own), so a long subtitle stays
 * inside the figure instead of running off both edges.
 *
 * @example
 * ```ts
 * import { wrapLine } from "./plot.ts";
 * console.log(wrapLine("a verdict; another verdict", 12)); // ["a verdict;", "another", "verdict"]
 * ```
 */
export function wrapLine(text: string, max: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ").filter((w) => w !== "")) {
    if (line && line.length + 1 + word.length > max) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

/** The chart as an SVG document (white background, sizes in pixels). */
export function lineChartSvg(chart: Chart): string {
  const pw = chart.panelWidth ?? 460;
  const ph = chart.panelHeight ?? 340;
  const cols = Math.max(1, Math.min(chart.columns ?? chart.panels.length, chart.panels.length));
  const rows = Math.ceil(chart.panels.length / cols);
  const width = cols * pw;
  const subtitle = chart.subtitle ? wrapLine(chart.subtitle, Math.floor((width - 40) / 6.6)) : [];
  const head = (chart.title ? 30 : 6) + 18 * subtitle.length;
  const height = head + rows * ph;
  const out = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="${FONT}" fill="#222">`,
    `<rect width="${width}" height="${height}" fill="#fff"/>`,
  ];
  if (chart.title) {
    out.push(
      `<text x="${width / 2}" y="22" text-anchor="middle" font-size="17" font-weight="bold">${
        escapeXml(chart.title)
      }</text>`,
    );
  }
  subtitle.forEach((line, i) => {
    out.push(
      `<text x="${width / 2}" y="${
        (chart.title ? 42 : 16) + 18 * i
      }" text-anchor="middle" font-size="12" fill="#555">${escapeXml(line)}</text>`,
    );
  });
  chart.panels.forEach((p, i) => {
    const [c, r] = [i % cols, Math.floor(i / cols)];
    const frame = { left: c * pw + 70, top: head + r * ph + 30, width: pw - 90, height: ph - 80 };
    out.push(panelSvg(p, frame));
  });
  out.push("</svg>");
  return out.join("\n");
}

/**
 * Render an SVG document to PNG bytes (`scale` 2 = twice the SVG's pixel size).
 *
 * @example
 * ```ts
 * import { svgToPng } from "./plot.ts";
 * const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect width="20" height="10"/></svg>';
 * const png = await svgToPng(svg, { scale: 1 });
 * console.log(png.subarray(1, 4)); // the bytes of "PNG"
 * ```
 */
export async function svgToPng(svg: string, opts: { scale?: number } = {}): Promise<Uint8Array> {
  // Text needs a font even where the system has none.
  useBundledFonts();
  const density = 72 * (opts.scale ?? 2);
  const buf = await sharp(new TextEncoder().encode(svg), { density }).png().toBuffer();
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/**
 * Render `svg` to a PNG at `path` (written atomically); with `keepSvg`, also `path` with `.svg`.
 *
 * @example
 * ```ts
 * import { writeSvgPng } from "./plot.ts";
 * const dir = await Deno.makeTempDir();
 * const svg = '<svg xmlns="http://www.w3.org/2000/svg" width="20" height="10"><rect width="20" height="10"/></svg>';
 * await writeSvgPng(`${dir}/box.png`, svg, { keepSvg: true });
 * console.log([...Deno.readDirSync(dir)].map((e) => e.name).sort()); // ["box.png", "box.svg"]
 * ```
 */
export async function writeSvgPng(
  path: string,
  svg: string,
  opts: { scale?: number; keepSvg?: boolean } = {},
): Promise<void> {
  await writeFileAtomic(path, await svgToPng(svg, opts));
  if (opts.keepSvg) await writeFileAtomic(path.replace(/\.png$/i, "") + ".svg", svg);
}

/** {@linkcode lineChartSvg} rendered to a PNG file. */
export async function writeLineChart(
  path: string,
  chart: Chart,
  opts: { scale?: number; keepSvg?: boolean } = {},
): Promise<void> {
  await writeSvgPng(path, lineChartSvg(chart), opts);
}
