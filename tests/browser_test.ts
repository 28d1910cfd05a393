/**
 * The page in web/ in a real browser: builds the bundle (`deno task
 * web:build`), serves web/ on a free localhost port, and drives Debian's
 * Chromium, headless, with playwright-core. For each fixture it picks the
 * file (and the files it names), then checks what the page shows against
 * qemu-img: header fields, feature names, snapshots, every cell of the
 * allocation map (read back from the canvas's pixels), and the SHA-256 of
 * the raw image the download button saves.
 *
 * Needs Chromium at /usr/bin/chromium (or QCOW2_CHROMIUM); without it the
 * test fails, unless QCOW2_SKIP_BROWSER=1 says to skip it.
 */
import { cryptoFixture, PASSWORD } from "./_crypto.ts";
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { Buffer } from "node:buffer";
import type { Page } from "playwright-core";
import { openImage, type Qcow2Image } from "../mod.ts";
import { serveWeb } from "../web/serve.ts";
import { hasQemu, hex, run } from "./_reference.ts";
import { startServer } from "./_http_server.ts";

const ROOT = new URL("../", import.meta.url);
const FIXTURES = new URL("./fixtures/", import.meta.url);
const CHROMIUM = Deno.env.get("QCOW2_CHROMIUM") ?? "/usr/bin/chromium";
const SKIP = Deno.env.get("QCOW2_SKIP_BROWSER") === "1";

/** Flags for a headless Chromium that makes no connection of its own. */
const CHROMIUM_ARGS = [
  "--headless",
  "--no-sandbox",
  "--disable-gpu",
  "--disable-quic",
  "--no-first-run",
  "--disable-background-networking",
  "--disable-component-update",
  "--disable-sync",
];

interface Case {
  /** The image, under tests/fixtures/. */
  image: string;
  /** Files it names, picked with it. */
  extra?: string[];
  version: string;
  incompatible: string;
  compatible: string;
  autoclear: string;
  snapshots: string[];
  /** Kinds the map must show at least one cell of. */
  kinds: string[];
  /** The compression type shown (zlib when absent). */
  compression?: string;
}

const CASES: Case[] = [
  {
    image: "layouts/snap.qcow2",
    version: "3 (compat 1.1)",
    incompatible: "none",
    compatible: "none",
    autoclear: "none",
    snapshots: ["first", "second"],
    kinds: ["data", "zero", "unallocated"],
  },
  {
    image: "zlib.qcow2",
    version: "3 (compat 1.1)",
    incompatible: "none",
    compatible: "none",
    autoclear: "none",
    snapshots: [],
    kinds: ["data", "compressed", "unallocated"],
  },
  {
    image: "zstd.qcow2",
    version: "3 (compat 1.1)",
    incompatible: "compression type",
    compatible: "none",
    autoclear: "none",
    snapshots: [],
    kinds: ["data", "compressed", "unallocated"],
    compression: "zstd",
  },
  {
    image: "layouts/ext_raw.qcow2",
    extra: ["layouts/ext_raw.data"],
    version: "3 (compat 1.1)",
    incompatible: "external data file",
    compatible: "none",
    autoclear: "raw external data",
    snapshots: [],
    kinds: ["data"],
  },
  {
    image: "layouts/chain_top.qcow2",
    extra: ["layouts/chain_mid.qcow2", "layouts/chain_base.qcow2"],
    version: "3 (compat 1.1)",
    incompatible: "none",
    compatible: "none",
    autoclear: "none",
    snapshots: [],
    kinds: ["data", "zero", "unallocated"],
  },
  {
    image: "lazy.qcow2",
    version: "3 (compat 1.1)",
    incompatible: "none",
    compatible: "lazy refcounts",
    autoclear: "none",
    snapshots: [],
    kinds: ["data", "unallocated"],
  },
  {
    image: "v2_64k.qcow2",
    version: "2 (compat 0.10)",
    incompatible: "none",
    compatible: "none",
    autoclear: "none",
    snapshots: [],
    kinds: ["data", "unallocated"],
  },
];

interface Expected {
  sha256: string;
  virtualSize: number;
  info: { "cluster-size": number; [key: string]: unknown };
}

async function expectedOf(image: string): Promise<Expected> {
  const dir = image.includes("/")
    ? image.slice(0, image.lastIndexOf("/") + 1)
    : "";
  const table = JSON.parse(
    await Deno.readTextFile(new URL(`${dir}expected.json`, FIXTURES)),
  );
  return table[image.slice(dir.length)];
}

interface Run {
  start: number;
  length: number;
  kind: string;
}

/** The guest's extents as `qemu-img map` reports them (compressed data has no offset there). */
async function qemuMap(path: string): Promise<Run[]> {
  const dir = path.slice(0, path.lastIndexOf("/"));
  const map = JSON.parse(
    await run("qemu-img", ["map", "--output=json", path], dir),
  ) as {
    start: number;
    length: number;
    present: boolean;
    zero: boolean;
    data: boolean;
    offset?: number;
  }[];
  return map.map((e) => ({
    start: e.start,
    length: e.length,
    kind: !e.present
      ? "unallocated"
      : e.data
      ? (e.offset === undefined ? "compressed" : "data")
      : "zero",
  }));
}

/** The extents as this library reports them, for machines without qemu-img. */
async function ourMap(path: string): Promise<Run[]> {
  const image = await openImage(path);
  try {
    return await Array.fromAsync(image.extents());
  } finally {
    image.close();
  }
}

const LETTER: Record<string, string> = {
  data: "D",
  compressed: "C",
  zero: "Z",
  unallocated: ".",
};
const RANK = ["unallocated", "zero", "compressed", "data"];

/** One letter per cell: the most allocated kind in it, as the page draws it. */
function cells(runs: Run[], size: number, cellBytes: number): string {
  const rank = new Array<number>(Math.ceil(size / cellBytes)).fill(0);
  for (const r of runs) {
    const last = Math.floor((r.start + r.length - 1) / cellBytes);
    for (let i = Math.floor(r.start / cellBytes); i <= last; i++) {
      rank[i] = Math.max(rank[i], RANK.indexOf(r.kind));
    }
  }
  return rank.map((k) => LETTER[RANK[k]]).join("");
}

/** The parts of a canvas element read in the page (the test has no DOM types). */
interface CanvasLike {
  dataset: Record<string, string | undefined>;
  width: number;
  height: number;
  getContext(type: "2d"): {
    getImageData(x: number, y: number, w: number, h: number): {
      data: Uint8ClampedArray;
    };
  };
}

/** Reads the map back from the canvas: the color at each cell's center. */
async function pageCells(page: Page): Promise<string> {
  const legend = await page.$$eval(
    "#legend li",
    (items) => items.map((i) => [i.dataset.color!, i.dataset.kind!]),
  );
  const kinds = new Map(legend.map(([color, kind]) => [color, kind]));
  const centers = await page.$eval("#map", (element) => {
    const canvas = element as unknown as CanvasLike;
    const count = Number(canvas.dataset.cells);
    const columns = Number(canvas.dataset.columns);
    const pixels = Number(canvas.dataset.cellPixels);
    const { data } = canvas.getContext("2d").getImageData(
      0,
      0,
      canvas.width,
      canvas.height,
    );
    const out: string[] = [];
    for (let i = 0; i < count; i++) {
      const x = (i % columns) * pixels + (pixels >> 1) - 1;
      const y = Math.floor(i / columns) * pixels + (pixels >> 1) - 1;
      const p = (y * canvas.width + x) * 4;
      out.push(
        "#" + [data[p], data[p + 1], data[p + 2]]
          .map((v) => v.toString(16).padStart(2, "0")).join(""),
      );
    }
    return out;
  });
  return centers.map((color) => LETTER[kinds.get(color) ?? ""] ?? "?").join(
    "",
  );
}

/** Waits until the page has finished with the file picked. */
async function settled(page: Page): Promise<string> {
  await page.waitForFunction("document.body.dataset.state !== 'loading'");
  return await page.getAttribute("body", "data-state") ?? "";
}

const field = (page: Page, name: string) =>
  page.textContent(`[data-field="${name}"]`).then((t) => t ?? "");

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

/**
 * Chromium's File System Access save picker is a native dialog that a test
 * cannot drive: this stands in for it, giving a file in the origin private
 * file system (OPFS), whose handle writes as a picked file's does. Setting
 * `globalThis.__picker = "none"` makes the page see a browser without it.
 */
const PICKER_STUB = `(() => {
  globalThis.__picker = "opfs";
  const picker = async ({ suggestedName }) => {
    const dir = await navigator.storage.getDirectory();
    return await dir.getFileHandle(suggestedName, { create: true });
  };
  Object.defineProperty(globalThis, "showSaveFilePicker", {
    configurable: true,
    get: () => (globalThis.__picker === "opfs" ? picker : undefined),
  });
})();`;

/** SHA-256 (hex) and length of a file the page saved through the stub. */
function opfsFile(page: Page, name: string) {
  return page.evaluate(`(async () => {
    const dir = await navigator.storage.getDirectory();
    const file = await (await dir.getFileHandle(${
    JSON.stringify(name)
  })).getFile();
    const digest = await crypto.subtle.digest("SHA-256", await file.arrayBuffer());
    await dir.removeEntry(${JSON.stringify(name)});
    return {
      length: file.size,
      sha256: [...new Uint8Array(digest)].map((b) => b.toString(16).padStart(2, "0")).join(""),
    };
  })()`) as Promise<{ length: number; sha256: string }>;
}

/** Sets whether the page sees a save picker. */
const setPicker = (page: Page, on: boolean) =>
  page.evaluate(
    `globalThis.__picker = ${JSON.stringify(on ? "opfs" : "none")}`,
  );

async function buildBundle(): Promise<void> {
  const { success, stderr } = await new Deno.Command(Deno.execPath(), {
    args: ["task", "web:build"],
    cwd: ROOT.pathname,
    stdout: "null",
    stderr: "piped",
  }).output();
  assert(
    success,
    `deno task web:build failed: ${new TextDecoder().decode(stderr)}`,
  );
}

Deno.test({
  name:
    "web page in headless Chromium: header, features, snapshots, map and raw download",
  ignore: SKIP,
  async fn(t) {
    if (!await exists(CHROMIUM)) {
      throw new Error(
        `${CHROMIUM} is missing: install Chromium (apt-get install chromium), point QCOW2_CHROMIUM at one, or set QCOW2_SKIP_BROWSER=1 to skip this test`,
      );
    }
    // Loaded here, so that a skipped run needs neither the package nor
    // --allow-sys. Its is-wsl dependency probes /proc/sys when loaded,
    // which Deno allows only with --allow-all; is-wsl's own switch defers
    // the probe (only its URL opener, unused here, would run it).
    Deno.env.set("__IS_WSL_TEST__", "1");
    const { chromium } = await import("playwright-core");
    await buildBundle();
    const stop = new AbortController();
    const server = serveWeb(new URL("web/", ROOT), { signal: stop.signal });
    const browser = await chromium.launch({
      executablePath: CHROMIUM,
      args: CHROMIUM_ARGS,
    }).catch(async (e) => {
      stop.abort();
      await server.finished;
      throw e;
    });
    try {
      const page = await browser.newPage();
      const errors: string[] = [];
      page.on("pageerror", (e) => errors.push(e.message));
      page.on("console", (m) => {
        if (m.type() === "error") errors.push(m.text());
      });
      await page.addInitScript(PICKER_STUB);
      await page.goto(`http://127.0.0.1:${server.addr.port}/`);
      await page.waitForSelector("#image:not([disabled])");

      await t.step("an encrypted image asks for its password", async () => {
        const path = await cryptoFixture("luks_aes128_cbc_plain64_sha1.qcow2");
        let asked = 0;
        const answer = (dialog: { accept(text: string): Promise<void> }) => {
          asked++;
          return dialog.accept(asked === 1 ? "wrong" : PASSWORD);
        };
        page.on("dialog", answer);
        try {
          await page.setInputFiles("#extra", []);
          await page.setInputFiles("#image", path);
          assertEquals(
            await settled(page),
            "done",
            await page.textContent("#status") ?? "",
          );
        } finally {
          page.off("dialog", answer);
        }
        assertEquals(asked, 2); // no password, then a wrong one
        assertEquals(
          await page.textContent("#status"),
          `${path.split("/").pop()}: read.`,
        );
      });

      for (const c of CASES) {
        await t.step(c.image, async () => {
          const path = new URL(c.image, FIXTURES).pathname;
          const expected = await expectedOf(c.image);
          await page.setInputFiles(
            "#extra",
            (c.extra ?? []).map((e) => new URL(e, FIXTURES).pathname),
          );
          await page.setInputFiles("#image", path);
          assertEquals(
            await settled(page),
            "done",
            await page.textContent("#status") ?? "",
          );
          assertEquals(
            await page.textContent("#status"),
            `${path.split("/").pop()}: read.`,
          );

          // Header and features.
          const size = expected.virtualSize;
          const clusterSize = expected.info["cluster-size"];
          assertEquals(await field(page, "format"), "qcow2");
          assertEquals(await field(page, "version"), c.version);
          assertStringIncludes(
            await field(page, "virtual-size"),
            `(${size} bytes)`,
          );
          assertStringIncludes(
            await field(page, "cluster-size"),
            `(${clusterSize} bytes)`,
          );
          assertEquals(
            await field(page, "compression-type"),
            c.compression ?? "zlib",
          );
          assertEquals(
            await field(page, "incompatible-features"),
            c.incompatible,
          );
          assertEquals(await field(page, "compatible-features"), c.compatible);
          assertEquals(await field(page, "autoclear-features"), c.autoclear);

          // Snapshots.
          const names = await page.$$eval(
            "#snapshots tbody tr",
            (rows) =>
              rows.map((r) =>
                r.children.length > 1 ? r.children[1].textContent : "none"
              ),
          );
          assertEquals(names, c.snapshots.length ? c.snapshots : ["none"]);

          // The allocation map, cell by cell: one cell per cluster here.
          assertEquals(
            await page.getAttribute("#map", "data-cell-bytes"),
            String(clusterSize),
          );
          const runs = hasQemu ? await qemuMap(path) : await ourMap(path);
          const want = cells(runs, size, clusterSize);
          const got = await pageCells(page);
          assertEquals(got, want);
          for (const kind of c.kinds) {
            assert(got.includes(LETTER[kind]), `no ${kind} cell`);
          }
          const top = await openImage(path) as Qcow2Image;
          const dataBytes = (await Array.fromAsync(top.extents()))
            .filter((e) => e.kind === "data")
            .reduce((n, e) => n + e.length, 0);
          top.close();
          assertEquals(
            await page.getAttribute('#legend [data-kind="data"]', "data-bytes"),
            String(dataBytes),
          );

          // The raw image, streamed to the file picked (File System Access).
          await setPicker(page, true);
          const rawName = path.split("/").pop()!.replace(/\.qcow2$/, ".raw");
          await page.click("#download");
          assertEquals(await settled(page), "done");
          assertStringIncludes(
            await page.textContent("#status") ?? "",
            "written to the file as it was converted",
          );
          assertEquals(await opfsFile(page, rawName), {
            length: size,
            sha256: expected.sha256,
          });

          // Without the API: built in memory and downloaded.
          await setPicker(page, false);
          const [download] = await Promise.all([
            page.waitForEvent("download"),
            page.click("#download"),
          ]);
          assertEquals(download.suggestedFilename(), rawName);
          const raw = await Deno.readFile(await download.path());
          assertEquals(raw.length, size);
          assertEquals(
            hex(await crypto.subtle.digest("SHA-256", raw)),
            expected.sha256,
          );
          await download.delete();
          assertEquals(await settled(page), "done");

          // A compressed qcow2 image built in the page: qemu-img finds it
          // clean and equal to the source.
          const [packed] = await Promise.all([
            page.waitForEvent("download"),
            page.click("#save-qcow2"),
          ]);
          assertEquals(
            packed.suggestedFilename(),
            rawName.replace(/\.raw$/, ".compressed.qcow2"),
          );
          const saved = await packed.path();
          const fixtureDir = path.slice(0, path.lastIndexOf("/"));
          await run("qemu-img", ["check", saved]);
          await run("qemu-img", [
            "compare",
            "-f",
            "qcow2",
            "-F",
            "qcow2",
            saved,
            path,
          ], fixtureDir);
          const info = JSON.parse(
            await run("qemu-img", ["info", "--output=json", saved]),
          );
          assertEquals(info["backing-filename"], undefined);
          assertEquals(info["virtual-size"], size);
          if (c.kinds.includes("data")) {
            const packedMap = await qemuMap(saved);
            assert(
              packedMap.some((r) => r.kind === "compressed"),
              "no compressed cluster in the saved image",
            );
          }
          await packed.delete();
          assertEquals(await settled(page), "done");
        });
      }

      await t.step(
        "a file that is not an image: an error on the page",
        async () => {
          await page.setInputFiles("#extra", []);
          await page.setInputFiles("#image", {
            name: "notes.txt",
            mimeType: "text/plain",
            buffer: Buffer.from("not a disk image"),
          });
          assertEquals(await settled(page), "error");
          assertStringIncludes(
            await page.textContent("#status") ?? "",
            "not a qcow2 or qcow image",
          );
        },
      );

      await t.step(
        "a backing file not picked: the top layer alone, said so",
        async () => {
          await page.setInputFiles(
            "#image",
            new URL("layouts/chain_top.qcow2", FIXTURES).pathname,
          );
          assertEquals(await settled(page), "done");
          assertEquals(
            await page.textContent("#status"),
            "chain_top.qcow2: read (top layer only).",
          );
          // The reason stands at the top, by the status.
          assertEquals(await page.isVisible("#layer-note"), true);
          assertStringIncludes(
            await page.textContent("#layer-note") ?? "",
            "chain_mid.qcow2",
          );
        },
      );

      await t.step(
        "an image URL: read with Range requests, its backing file by URL",
        async () => {
          const files: Record<string, Uint8Array> = {};
          for (
            const n of [
              "chain_top.qcow2",
              "chain_mid.qcow2",
              "chain_base.qcow2",
            ]
          ) {
            files[`vm/${n}`] = await Deno.readFile(
              new URL(`layouts/${n}`, FIXTURES),
            );
          }
          files["zstd.qcow2"] = await Deno.readFile(
            new URL("zstd.qcow2", FIXTURES),
          );
          const remote = startServer(files, { cors: true });
          try {
            for (const name of ["vm/chain_top.qcow2", "zstd.qcow2"]) {
              await page.fill("#url", remote.url(name));
              await page.click("#open-url");
              assertEquals(
                await settled(page),
                "done",
                await page.textContent("#status") ?? "",
              );
              const base = name.split("/").pop()!;
              assertEquals(await page.textContent("#status"), `${base}: read.`);
              assertEquals(await page.isVisible("#layer-note"), false);
              const local = new URL(
                name.startsWith("vm/") ? `layouts/${base}` : base,
                FIXTURES,
              ).pathname;
              const expected = await expectedOf(
                name.startsWith("vm/") ? `layouts/${base}` : base,
              );
              const clusterSize = expected.info["cluster-size"];
              const runs = hasQemu ? await qemuMap(local) : await ourMap(local);
              assertEquals(
                await pageCells(page),
                cells(runs, expected.virtualSize, clusterSize),
              );
              // Streamed to a file, through the picker.
              await setPicker(page, true);
              await page.click("#download");
              assertEquals(await settled(page), "done");
              assertEquals(
                await opfsFile(page, base.replace(/\.qcow2$/, ".raw")),
                { length: expected.virtualSize, sha256: expected.sha256 },
              );
            }
            // Only byte ranges were asked for, and the backing files by URL.
            assert(remote.ranges.some((r) => r.name === "vm/chain_base.qcow2"));
            assert(remote.ranges.every((r) => r.to - r.from < 4 << 20));
            // A URL that is not there: one line on the page (and the
            // browser's own console line about the 404, expected).
            const before = errors.length;
            await page.fill("#url", remote.url("missing.qcow2"));
            await page.click("#open-url");
            assertEquals(await settled(page), "error");
            assertStringIncludes(
              await page.textContent("#status") ?? "",
              `Cannot read '${
                remote.url("missing.qcow2")
              }': the server answered 404`,
            );
            assert(
              errors.slice(before).every((e) => e.includes("404")),
              errors.join("\n"),
            );
            errors.length = before;
          } finally {
            await remote.close();
          }
        },
      );

      await t.step(
        "the map says which guest offsets a cell covers, and scales",
        async () => {
          // 4 TiB, mostly holes: at most 65,536 cells of 64 MiB.
          await setPicker(page, false);
          await page.setInputFiles("#extra", []);
          await page.setInputFiles(
            "#image",
            new URL("sparse_4t.qcow2", FIXTURES).pathname,
          );
          assertEquals(
            await settled(page),
            "done",
            await page.textContent("#status") ?? "",
          );
          const size = 4 * 2 ** 40;
          const cellBytes = Number(
            await page.getAttribute("#map", "data-cell-bytes"),
          );
          const count = Number(await page.getAttribute("#map", "data-cells"));
          assert(count <= 65536, `${count} cells`);
          assertEquals(cellBytes * count, size);
          const columns = Number(
            await page.getAttribute("#map", "data-columns"),
          );
          const pixels = Number(
            await page.getAttribute("#map", "data-cell-pixels"),
          );
          const hoverCell = async (i: number) => {
            await page.hover("#map", {
              position: {
                x: (i % columns) * pixels + pixels / 2,
                y: Math.floor(i / columns) * pixels + pixels / 2,
              },
            });
            return {
              start: Number(
                await page.getAttribute("#cell-info", "data-start"),
              ),
              end: Number(await page.getAttribute("#cell-info", "data-end")),
              text: await page.textContent("#cell-info") ?? "",
            };
          };
          assertEquals((await hoverCell(0)).start, 0);
          const last = await hoverCell(count - 1);
          assertEquals([last.start, last.end], [size - cellBytes, size]);
          assertStringIncludes(last.text, `0x${(size - 1).toString(16)}`);
          const some = await hoverCell(columns + 3);
          assertEquals(some.start, (columns + 3) * cellBytes);
          // A click pins it: moving away leaves it.
          await page.click("#map", {
            position: { x: pixels / 2, y: pixels / 2 },
          });
          await hoverCell(5);
          assertEquals(
            Number(await page.getAttribute("#cell-info", "data-start")),
            0,
          );
          await page.click("#map", {
            position: { x: pixels / 2, y: pixels / 2 },
          });
          // Too large to build in memory without the File System Access API,
          // and the page says so.
          assertEquals(await page.isDisabled("#download"), true);
          assertStringIncludes(
            await page.textContent("#download-note") ?? "",
            "1 GiB",
          );
          await setPicker(page, true);
        },
      );

      assertEquals(errors, []);
    } finally {
      await browser.close();
      stop.abort();
      await server.finished;
    }
  },
});
