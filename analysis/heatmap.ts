/**
 * Heatmaps of matrices in [0, 1] (e.g. ERF maps) as PNG: one matrix, or
 * several side by side with titles and a shared colour bar.
 *
 * @example
 * ```ts
 * import { writeHeatmapFigure } from "./heatmap.ts";
 * const m = Float64Array.from({ length: 64 * 64 }, (_, i) => (i % 64) / 63);
 * await writeHeatmapFigure("out/demo.png", [{ title: "ramp", data: m, height: 64, width: 64 }]);
 * ```
 * @module
 */
import sharp from "sharp";
import { escapeXml, svgToPng } from "./plot.ts";
import { writeFileAtomic } from "./csv.ts";
import { encodeBase64 } from "./base64.ts";

/** A colour map: value in [0, 1] → [r, g, b] in [0, 1]. */
export type Colormap = (v: number) => [number, number, number];

const clamp01 = (v: number) => Math.min(1, Math.max(0, v));

/**
 * matplotlib's `hot`.
 *
 * @example
 * ```ts
 * import { hot } from "./heatmap.ts";
 * console.log(hot(0), hot(1)); // [0, 0, 0] [1, 1, 1]
 * ```
 */
export const hot: Colormap = (v) => {
  const x = clamp01(v);
  return [
    clamp01(x / 0.365079),
    clamp01((x - 0.365079) / (0.746032 - 0.365079)),
    clamp01((x - 0.746032) / (1 - 0.746032)),
  ];
};

/**
 * matplotlib's `pink` (sqrt of (2·gray + hot)/3), the map of SLaK's ERF figure.
 *
 * @example
 * ```ts
 * import { pink } from "./heatmap.ts";
 * console.log(pink(1)); // [1, 1, 1]
 * ```
 */
export const pink: Colormap = (v) => {
  const x = clamp01(v);
  const h = hot(x);
  return [
    Math.sqrt((2 * x + h[0]) / 3),
    Math.sqrt((2 * x + h[1]) / 3),
    Math.sqrt((2 * x + h[2]) / 3),
  ];
};

/**
 * RGB bytes of a matrix (values clamped to [0, 1]).
 *
 * @example
 * ```ts
 * import { heatmapRgb, hot } from "./heatmap.ts";
 * console.log(heatmapRgb([0, 1], 1, 2, hot)); // Uint8Array [0, 0, 0, 255, 255, 255]
 * ```
 */
export function heatmapRgb(
  data: ArrayLike<number>,
  height: number,
  width: number,
  cmap: Colormap = pink,
): Uint8Array {
  const out = new Uint8Array(height * width * 3);
  for (let i = 0; i < height * width; i++) {
    const [r, g, b] = cmap(data[i]);
    out[3 * i] = Math.round(r * 255);
    out[3 * i + 1] = Math.round(g * 255);
    out[3 * i + 2] = Math.round(b * 255);
  }
  return out;
}

/**
 * PNG bytes of a matrix, resized (nearest: cells stay crisp) to `side` pixels.
 *
 * @example
 * ```ts
 * import { heatmapPng } from "./heatmap.ts";
 * const png = await heatmapPng([0, 0.5, 0.5, 1], 2, 2, { side: 64 });
 * console.log(png.subarray(1, 4)); // the bytes of "PNG"
 * ```
 */
export async function heatmapPng(
  data: ArrayLike<number>,
  height: number,
  width: number,
  opts: { side?: number; cmap?: Colormap } = {},
): Promise<Uint8Array> {
  let img = sharp(heatmapRgb(data, height, width, opts.cmap), {
    raw: { width, height, channels: 3 },
  });
  if (opts.side) img = img.resize(opts.side, opts.side, { kernel: "nearest", fit: "fill" });
  const buf = await img.png().toBuffer();
  return new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
}

/** One panel of a heatmap figure. */
export interface HeatmapPanel {
  title: string;
  subtitle?: string;
  data: ArrayLike<number>;
  height: number;
  width: number;
}

/**
 * Write a figure of heatmaps side by side, each titled, with a colour bar at
 * the right (values 0–1), as a PNG written atomically.
 */
export async function writeHeatmapFigure(
  path: string,
  panels: readonly HeatmapPanel[],
  opts: { title?: string; caption?: string; side?: number; cmap?: Colormap } = {},
): Promise<void> {
  const side = opts.side ?? 320;
  const cmap = opts.cmap ?? pink;
  const gap = 24, left = 20, top = opts.title ? 64 : 40, barW = 16;
  const width = left + panels.length * (side + gap) + barW + 60;
  const height = top + side + (opts.caption ? 48 : 24) + 20;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" xmlns:xlink="http://www.w3.org/1999/xlink" width="${width}" height="${height}" font-family="DejaVu Sans, sans-serif">`,
    `<rect width="100%" height="100%" fill="white"/>`,
  ];
  if (opts.title) {
    parts.push(
      `<text x="${width / 2}" y="28" text-anchor="middle" font-size="18" font-weight="bold">${
        escapeXml(opts.title)
      }</text>`,
    );
  }
  for (const [i, p] of panels.entries()) {
    const x = left + i * (side + gap);
    const png = await heatmapPng(p.data, p.height, p.width, { side, cmap });
    parts.push(
      `<text x="${x + side / 2}" y="${top - 10}" text-anchor="middle" font-size="14">${
        escapeXml(p.title)
      }</text>`,
    );
    parts.push(
      `<image x="${x}" y="${top}" width="${side}" height="${side}" xlink:href="data:image/png;base64,${
        encodeBase64(png)
      }"/>`,
    );
    parts.push(
      `<rect x="${x}" y="${top}" width="${side}" height="${side}" fill="none" stroke="#444"/>`,
    );
    if (p.subtitle) {
      parts.push(
        `<text x="${x + side / 2}" y="${
          top + side + 18
        }" text-anchor="middle" font-size="12" fill="#333">${escapeXml(p.subtitle)}</text>`,
      );
    }
  }
  // Colour bar: a vertical gradient sampled from the colour map.
  const bx = left + panels.length * (side + gap);
  const stops = Array.from({ length: 11 }, (_, k) => {
    const [r, g, b] = cmap(1 - k / 10).map((c) => Math.round(c * 255));
    return `<stop offset="${k * 10}%" stop-color="rgb(${r},${g},${b})"/>`;
  }).join("");
  parts.push(
    `<defs><linearGradient id="cbar" x1="0" y1="0" x2="0" y2="1">${stops}</linearGradient></defs>`,
  );
  parts.push(
    `<rect x="${bx}" y="${top}" width="${barW}" height="${side}" fill="url(#cbar)" stroke="#444"/>`,
  );
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    const y = top + side * (1 - v);
    parts.push(`<line x1="${bx + barW}" x2="${bx + barW + 4}" y1="${y}" y2="${y}" stroke="#444"/>`);
    parts.push(`<text x="${bx + barW + 7}" y="${y + 4}" font-size="11">${v.toFixed(2)}</text>`);
  }
  if (opts.caption) {
    parts.push(
      `<text x="${left}" y="${height - 14}" font-size="12" fill="#333">${
        escapeXml(opts.caption)
      }</text>`,
    );
  }
  parts.push("</svg>");
  await writeFileAtomic(path, await svgToPng(parts.join("\n"), { scale: 1 }));
}
