/** Plots (SVG → PNG through sharp), CSV text and atomic writes; no GPU. */
import assert from "node:assert/strict";
import { appendLinesAtomic, parseCsv, toCsv, writeCsv, writeFileAtomic } from "../analysis/csv.ts";
import {
  type Chart,
  lineChartSvg,
  niceTicks,
  svgToPng,
  wrapLine,
  writeLineChart,
} from "../analysis/plot.ts";

const PNG_SIGNATURE = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];

/** Width and height from a PNG's IHDR chunk (big-endian at bytes 16 and 20). */
function pngSize(png: Uint8Array): [number, number] {
  const v = new DataView(png.buffer, png.byteOffset, png.byteLength);
  assert.equal(new TextDecoder().decode(png.subarray(12, 16)), "IHDR");
  return [v.getUint32(16), v.getUint32(20)];
}

const chart: Chart = {
  title: "Two panels <&> escaped",
  subtitle: "FLOPs = multiply-accumulates, fvcore rules",
  panels: [
    {
      title: "GFLOPs",
      xLabel: "kernel size",
      yLabel: "GFLOPs",
      series: [
        { name: "full", x: [7, 31, 51], y: [4.5, 6.1, 9.3] },
        { name: "decomposed", x: [7, 31, 51], y: [4.5, 5.0, NaN], dash: "6 3", markers: true },
      ],
      marks: [{ x: 51, y: 9.3, label: "k=51" }],
      lines: [{ y: 5, label: "budget" }],
    },
    { title: "Params", series: [{ name: "p", x: [1, 2], y: [3, 4] }], legend: "bottom-right" },
  ],
  panelWidth: 300,
  panelHeight: 220,
};

Deno.test("plot: a two-panel line chart becomes a valid PNG of the SVG's size × scale", async () => {
  const svg = lineChartSvg(chart);
  assert.match(svg, /^<svg [^>]*width="600" height="268"/);
  assert.match(svg, /Two panels &#60;&#38;&#62; escaped/);
  assert.equal((svg.match(/<path /g) ?? []).length, 3);
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/sub/chart.png`;
    await writeLineChart(path, chart, { scale: 1, keepSvg: true });
    const png = await Deno.readFile(path);
    assert.deepEqual([...png.subarray(0, 8)], PNG_SIGNATURE);
    assert.deepEqual(pngSize(png), [600, 268]);
    assert.ok(png.length > 2000, `PNG of ${png.length} bytes looks empty`);
    assert.equal(await Deno.readTextFile(`${dir}/sub/chart.svg`), svg);
    assert.deepEqual(pngSize(await svgToPng(svg)), [1200, 536]); // default scale 2
    // Only the two files: no temporary file left behind.
    assert.deepEqual([...Deno.readDirSync(`${dir}/sub`)].map((e) => e.name).sort(), [
      "chart.png",
      "chart.svg",
    ]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("plot: a long subtitle wraps at spaces onto lines that fit the figure", () => {
  assert.deepEqual(wrapLine("one two three", 7), ["one two", "three"]);
  assert.deepEqual(wrapLine("  spaced   words ", 80), ["spaced words"]);
  assert.deepEqual(wrapLine("unbreakable-word x", 5), ["unbreakable-word", "x"]);
  assert.deepEqual(wrapLine("", 10), []);
  const words = Array.from({ length: 60 }, (_, i) => `verdict${i};`).join(" ");
  const panel = { series: [{ name: "a", x: [0, 1], y: [0, 1] }] };
  const short = lineChartSvg({ title: "t", subtitle: "short", panels: [panel] });
  const long = lineChartSvg({ title: "t", subtitle: words, panels: [panel] });
  const lines = [...long.matchAll(/<text [^>]*fill="#555">([^<]*)<\/text>/g)].map((m) => m[1]);
  assert.ok(lines.length > 1, `${lines.length} subtitle lines`);
  assert.equal(lines.join(" "), words);
  const width = Number(long.match(/width="(\d+)"/)![1]);
  for (const l of lines) assert.ok(l.length * 6.6 <= width - 40, l);
  // The panels move down by the extra lines.
  const height = (svg: string) => Number(svg.match(/height="(\d+)"/)![1]);
  assert.equal(height(long) - height(short), 18 * (lines.length - 1));
});

Deno.test("plot: nice ticks cover the range with round steps", () => {
  assert.deepEqual(niceTicks(0, 9.31), [0, 2, 4, 6, 8, 10]);
  assert.deepEqual(niceTicks(7, 151), [0, 50, 100, 150, 200]);
  assert.deepEqual(niceTicks(0.0012, 0.0049), [0.001, 0.002, 0.003, 0.004, 0.005]);
  assert.deepEqual(niceTicks(-3, 3, 3), [-4, -2, 0, 2, 4]);
  assert.equal(niceTicks(5, 5).length > 1, true);
});

Deno.test("csv: parseCsv reads back what toCsv wrote, and hand-written CSV", () => {
  const rows = [
    { model: "a,b", note: 'say "hi"\nthere', ms: "1.5" },
    { model: "#not a comment", note: "", ms: "2" },
  ];
  assert.deepEqual(parseCsv(toCsv(rows, { comments: ["one", "two"] })), rows);
  assert.deepEqual(parseCsv("a,b\r\n1,2\r\n\r\n3\r\n"), [{ a: "1", b: "2" }, { a: "3", b: "" }]);
  assert.deepEqual(parseCsv('x,y\n"""",""\n " a" , b \n'), [{ x: '"', y: "" }, {
    x: " a",
    y: "b",
  }]);
  // A "#" cell is quoted on the way out, so the reader does not take its row for a comment.
  assert.equal(toCsv([{ x: "#1" }]), 'x\n"#1"\n');
  assert.deepEqual(parseCsv(""), []);
  assert.deepEqual(parseCsv("# only a comment\nh\n"), []);
});

Deno.test("csv: quoting, column union, comments; atomic write replaces the file", async () => {
  const rows = [{ a: 1, b: "x,y" }, { a: 2.5, c: 'say "hi"', b: null }, { b: "two\nlines" }];
  assert.equal(
    toCsv(rows, { comments: ["FLOPs = multiply-accumulates, fvcore rules"] }),
    '# FLOPs = multiply-accumulates, fvcore rules\na,b,c\n1,"x,y",\n2.5,,"say ""hi"""\n,"two\nlines",\n',
  );
  assert.equal(toCsv([{ a: 1, b: 2 }], { columns: ["b"] }), "b\n2\n");
  assert.equal(toCsv([]), "\n");
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/deep/er/t.csv`;
    await writeCsv(path, [{ x: 1 }]);
    await writeFileAtomic(path, "x\n2\n");
    assert.equal(await Deno.readTextFile(path), "x\n2\n");
    assert.deepEqual([...Deno.readDirSync(`${dir}/deep/er`)].map((e) => e.name), ["t.csv"]);
    await assert.rejects(() => writeFileAtomic(`${dir}/`, "x"), /names a folder/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("csv: appends are atomic; a header starts a new file; a torn last line is dropped", async () => {
  const dir = await Deno.makeTempDir();
  try {
    const path = `${dir}/sub/log.csv`;
    await appendLinesAtomic(path, "step,loss", ["1,0.5", "2,0.4"]);
    await appendLinesAtomic(path, "step,loss", ["3,0.3"]);
    assert.equal(await Deno.readTextFile(path), "step,loss\n1,0.5\n2,0.4\n3,0.3\n");
    // An older writer died mid-append: the partial row goes, the complete ones stay.
    await Deno.writeTextFile(path, "step,loss\n1,0.5\n2,0.");
    await appendLinesAtomic(path, "step,loss", ["2,0.4"]);
    assert.equal(await Deno.readTextFile(path), "step,loss\n1,0.5\n2,0.4\n");
    // An empty file gets the header; no temporary file is left beside it.
    await Deno.writeTextFile(path, "");
    await appendLinesAtomic(path, "step,loss", []);
    assert.equal(await Deno.readTextFile(path), "step,loss\n");
    assert.deepEqual([...Deno.readDirSync(`${dir}/sub`)].map((e) => e.name), ["log.csv"]);
    await assert.rejects(() => appendLinesAtomic(dir, "h", ["x"]), /directory|folder|Is a/i);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("text is drawn with the bundled font on a machine without fonts", async () => {
  // fontconfig reads FONTCONFIG_FILE once per process: each case runs in a fresh one, with a
  // configuration that knows no font at all, as on a bare container.
  const dir = await Deno.makeTempDir();
  const empty = `${dir}/empty.conf`;
  await Deno.writeTextFile(
    empty,
    `<?xml version="1.0"?><fontconfig><cachedir>${dir}/cache</cachedir></fontconfig>`,
  );
  // Prints whether two different words render to the same pixels (boxes do; letters do not).
  const script = (render: string) => `
    import sharp from "sharp";
    import { svgToPng } from "./analysis/plot.ts";
    const svg = (t) => '<svg xmlns="http://www.w3.org/2000/svg" width="120" height="30" ' +
      'font-family="DejaVu Sans, sans-serif"><rect width="120" height="30" fill="white"/>' +
      '<text x="4" y="22" font-size="18">' + t + '</text></svg>';
    const pixels = async (t) => [...(await sharp(${render}).raw().toBuffer())].join(",");
    console.log(JSON.stringify({ same: (await pixels("AAAA")) === (await pixels("BxBx")) }));`;
  const run = async (render: string) => {
    const out = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--ext=js", script(render)],
      cwd: new URL("..", import.meta.url),
      env: { FONTCONFIG_FILE: empty },
      stdout: "piped",
      stderr: "piped",
    }).output();
    const text = new TextDecoder().decode(out.stdout).trim();
    assert.ok(out.success, new TextDecoder().decode(out.stderr));
    return JSON.parse(text.split("\n").at(-1)!).same as boolean;
  };
  try {
    // Without the bundled font every letter is the same box: the case this test is about.
    assert.equal(await run("new TextEncoder().encode(svg(t))"), true);
    assert.equal(await run("await svgToPng(svg(t), { scale: 1 })"), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
