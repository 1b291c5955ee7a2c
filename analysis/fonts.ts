/**
 * Fonts for the PNG figures. sharp draws SVG text through fontconfig, which
 * finds no font on a machine that has none installed (minimal containers, the
 * H100 machines we benchmark on), and every letter becomes an empty box.
 * Matplotlib, which the official repos plot with, ships DejaVu Sans; so do we
 * (npm `dejavu-fonts-ttf`). {@linkcode useBundledFonts} points fontconfig at a
 * configuration that keeps the system's own (or the user's
 * `FONTCONFIG_FILE`) and adds the bundled fonts.
 *
 * @example
 * ```ts
 * import { useBundledFonts } from "./fonts.ts";
 * console.log(useBundledFonts()?.endsWith(".conf")); // true where the font package is installed
 * ```
 * @module
 */
// A static import puts the font package in the module graph, so Deno installs it with the rest.
import "dejavu-fonts-ttf/package.json" with { type: "json" };
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

let config: string | null | undefined;

/**
 * The folder of the bundled TrueType fonts, or null when the package is not installed.
 *
 * @example
 * ```ts
 * import { bundledFontDir } from "./fonts.ts";
 * console.log(bundledFontDir()?.endsWith("ttf")); // true
 * ```
 */
export function bundledFontDir(): string | null {
  try {
    const pkg = fileURLToPath(import.meta.resolve("dejavu-fonts-ttf/package.json"));
    const dir = join(dirname(pkg), "ttf");
    return Deno.statSync(join(dir, "DejaVuSans.ttf")).isFile ? dir : null;
  } catch {
    return null;
  }
}

/**
 * The fontconfig configuration {@linkcode useBundledFonts} writes: `system` first, then `fontDir`.
 *
 * @example
 * ```ts
 * import { fontConfigXml } from "./fonts.ts";
 * const xml = fontConfigXml("/etc/fonts/fonts.conf", "/opt/fonts", "/tmp/fc-cache");
 * console.log(xml.includes("<dir>/opt/fonts</dir>")); // true
 * ```
 */
export function fontConfigXml(system: string, fontDir: string, cacheDir: string): string {
  const esc = (s: string) =>
    s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");
  return `<?xml version="1.0"?>
<!DOCTYPE fontconfig SYSTEM "urn:fontconfig:fonts.dtd">
<fontconfig>
  <include ignore_missing="yes">${esc(system)}</include>
  <dir>${esc(fontDir)}</dir>
  <cachedir>${esc(cacheDir)}</cachedir>
</fontconfig>
`;
}

/**
 * Make fontconfig see the bundled fonts besides the system's: writes a
 * configuration under the temporary folder and sets `FONTCONFIG_FILE` to it
 * (once per process; fontconfig reads it when the first text is drawn, so
 * call this before). Returns the configuration's path, or null when the font
 * package is missing (text then falls back to whatever the system has).
 */
export function useBundledFonts(): string | null {
  if (config !== undefined) return config;
  config = null;
  const fontDir = bundledFontDir();
  if (!fontDir) return null;
  const system = Deno.env.get("FONTCONFIG_FILE") || "/etc/fonts/fonts.conf";
  const dir = join(tmpdir(), "largekernel-fonts");
  const xml = fontConfigXml(system, fontDir, join(dir, "cache"));
  // One file per content: processes with other system configurations do not overwrite it.
  let hash = 0x811c9dc5;
  for (let i = 0; i < xml.length; i++) hash = Math.imul(hash ^ xml.charCodeAt(i), 0x01000193);
  const path = join(dir, `fonts-${(hash >>> 0).toString(16)}.conf`);
  try {
    Deno.mkdirSync(dir, { recursive: true });
    let current = "";
    try {
      current = Deno.readTextFileSync(path);
    } catch { /* not written yet */ }
    if (current !== xml) {
      // Whole or not at all: another process may be reading it.
      const tmp = `${path}.${Deno.pid}.tmp`;
      Deno.writeTextFileSync(tmp, xml);
      Deno.renameSync(tmp, path);
    }
  } catch {
    return null;
  }
  Deno.env.set("FONTCONFIG_FILE", path);
  config = path;
  return path;
}
