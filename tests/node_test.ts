/**
 * The library under Node.js (and Bun, when installed): `mod.ts` bundled to
 * one ESM file as `deno task bundle` does (node:* imports left to the
 * runtime), then
 * `tests/node/convert.mjs` run on committed fixtures, through
 * `node:fs/promises` FileHandles.
 *
 * Without Node.js the Node test fails (Deno's own `node` shim, which Deno
 * puts on a subprocess's PATH when there is no `node`, does not count); set
 * QCOW2_SKIP_NODE=1 to skip it (reported as ignored). Likewise the Bun test
 * fails without Bun (`bun` on the PATH, or the path QCOW2_BUN names; CI
 * installs the npm package `bun`, see .ci/run); set QCOW2_SKIP_BUN=1 to skip
 * it.
 */
import { assert, assertEquals } from "@std/assert";
import { expected, fixture, hasQemu, tempDir } from "./_reference.ts";
import { startServer } from "./_http_server.ts";
import { spreadImage, tablesImage } from "./_spread.ts";
import denoJson from "../deno.json" with { type: "json" };

const SKIP_NODE = Deno.env.get("QCOW2_SKIP_NODE") === "1";
const ROOT = new URL("../", import.meta.url).pathname;
const MOD = new URL("../mod.ts", import.meta.url).pathname;
const SCRIPT = new URL("./node/convert.mjs", import.meta.url).pathname;
const IN_FLIGHT = new URL("./node/in_flight.mjs", import.meta.url).pathname;
/** The exit status of the scripts on an unhandled rejection. */
const UNHANDLED = 70;
const layouts: Record<string, { sha256: string }> = JSON.parse(
  await Deno.readTextFile(fixture("layouts/expected.json")),
);

const NO_NODE =
  "Node.js ('node') is not on the PATH: install it, or set QCOW2_SKIP_NODE=1 to skip the Node.js tests";

/** Runs `exe ARGS`; undefined if `exe` is not installed. */
async function exec(exe: string, args: string[]) {
  try {
    const out = await new Deno.Command(exe, {
      args,
      stdout: "piped",
      stderr: "piped",
    }).output();
    return {
      code: out.code,
      stdout: new TextDecoder().decode(out.stdout),
      stderr: new TextDecoder().decode(out.stderr),
    };
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return undefined;
    throw e;
  }
}

/** The runtime's version and whether its node:zlib has zstd. */
async function probe(exe: string) {
  const r = await exec(exe, [
    "-e",
    "const z = require('node:zlib'); process.stdout.write(JSON.stringify({" +
    "deno: typeof Deno, bun: typeof Bun, node: process.version," +
    "version: typeof Bun === 'object' ? Bun.version : process.version," +
    "zstd: typeof z.zstdDecompressSync === 'function' }))",
  ]);
  if (!r) return undefined;
  assertEquals(r.code, 0, r.stderr);
  return JSON.parse(r.stdout) as {
    deno: string;
    bun: string;
    node: string;
    version: string;
    zstd: boolean;
  };
}

/**
 * Bundles mod.ts into `dir` as `deno task bundle` does, checking node:*
 * stays external (imported at run time).
 */
async function bundle(dir: string): Promise<string> {
  const out = `${dir}/qcow2.mjs`;
  const task = denoJson.tasks.bundle.split(" ");
  assertEquals(task[0], "deno");
  const r = await new Deno.Command(Deno.execPath(), {
    args: task.slice(1).map((a) => a === "dist/qcow2.mjs" ? out : a),
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(r.success, new TextDecoder().decode(r.stderr));
  const text = await Deno.readTextFile(out);
  // Node built-ins are imported at run time, by a name built then (see
  // native/node_builtin.ts), so a bundler leaves them alone. `Deno.*`
  // appears only behind `typeof Deno` checks: running under Node proves it.
  assert(
    text.includes("import(`node:${"),
    "node built-ins should stay run-time imports",
  );
  assert(!/from "node:/.test(text), "no static node: import is expected");
  return out;
}

/** Converts the fixtures with `exe` running `convert.mjs` on `mod`. */
async function convertFixtures(
  t: Deno.TestContext,
  exe: string,
  mod: string,
  dir: string,
  zstd: boolean,
) {
  const run = async (
    mode: "handle" | "path" | "url" | "portable",
    name: string,
  ) => {
    const src = mode === "url" ? name : fixture(name);
    const r = await exec(exe, [SCRIPT, mod, mode, src, `${dir}/out`]);
    if (!r) throw new Error(`${exe} is not installed`);
    assert(r.code !== UNHANDLED, `unhandled rejection: ${r.stdout}`);
    return { code: r.code, result: JSON.parse(r.stdout || "null"), r };
  };
  for (const name of ["v3_64k.qcow2", "zlib.qcow2", "odd_size_zlib.qcow2"]) {
    await t.step(`${name} through FileHandles`, async () => {
      const { code, result, r } = await run("handle", name);
      assertEquals(code, 0, r.stdout + r.stderr);
      assertEquals(result.file, expected[name].sha256);
      assertEquals(result.stream, expected[name].sha256);
      assertEquals(result.virtualSize, expected[name].virtualSize);
    });
  }
  await t.step("a backing chain opened by path (openPath)", async () => {
    const { code, result, r } = await run("path", "layouts/chain_top.qcow2");
    assertEquals(code, 0, r.stdout + r.stderr);
    assertEquals(result.file, layouts["chain_top.qcow2"].sha256);
    assertEquals(result.stream, layouts["chain_top.qcow2"].sha256);
  });
  // (A character device's stat size is 0; a pipe or a block device's too.)
  for (
    const [mode, how, named] of [
      ["handle", "through a FileHandle", "it"],
      ["path", "by path", "'/dev/zero'"],
    ]
  ) {
    await t.step(
      `a character device ${how}: refused, not an empty disk`,
      async () => {
        const r = await exec(exe, [
          SCRIPT,
          mod,
          mode,
          "/dev/zero",
          `${dir}/out`,
        ]);
        if (!r) throw new Error(`${exe} is not installed`);
        const result = JSON.parse(r.stdout || "null");
        assertEquals(
          result?.error?.message,
          `Cannot read ${named}: it is a pipe, a socket or a character device: an image is read at any offset; give a file or a block device`,
          r.stdout + r.stderr,
        );
      },
    );
  }
  await t.step(
    `zstd.qcow2 (node:zlib ${zstd ? "has" : "lacks"} zstd here)`,
    async () => {
      // Without zstd in node:zlib, nodeCodecs falls back to the portable
      // WebAssembly decoder: a zstd image reads on every runtime.
      const { code, result, r } = await run("handle", "zstd.qcow2");
      assertEquals(code, 0, r.stdout + r.stderr);
      assertEquals(result.file, expected["zstd.qcow2"].sha256);
      assertEquals(result.stream, expected["zstd.qcow2"].sha256);
    },
  );
  await t.step("zlib.qcow2 over HTTP (httpSource, fetch)", async () => {
    const server = startServer({
      "zlib.qcow2": await Deno.readFile(fixture("zlib.qcow2")),
    });
    try {
      const { code, result, r } = await run("url", server.url("zlib.qcow2"));
      assertEquals(code, 0, r.stdout + r.stderr);
      assertEquals(result.file, expected["zlib.qcow2"].sha256);
      assertEquals(result.stream, expected["zlib.qcow2"].sha256);
      assert(server.ranges.length > 0);
    } finally {
      await server.close();
    }
  });
  for (const name of ["zstd.qcow2", "zlib.qcow2"]) {
    await t.step(`${name} with the portable codecs (webCodecs)`, async () => {
      const { code, result, r } = await run("portable", name);
      assertEquals(code, 0, r.stdout + r.stderr);
      assertEquals(result.file, expected[name].sha256);
      assertEquals(result.stream, expected[name].sha256);
    });
  }
  await t.step({
    name: "every error path with many reads in flight, none unhandled",
    ignore: !hasQemu,
    fn: async () => {
      const r = await exec(exe, [
        IN_FLIGHT,
        mod,
        await spreadImage(dir, "zstd"),
        await spreadImage(dir, "zlib"),
        await tablesImage(dir),
      ]);
      if (!r) throw new Error(`${exe} is not installed`);
      assertEquals(r.code, 0, r.stdout + r.stderr);
      const results = JSON.parse(r.stdout);
      const code = (name: string) => results[name].code;
      assertEquals(
        code("no zstd decompressor, FileHandle"),
        "UNSUPPORTED_COMPRESSION",
      );
      assertEquals(code("no zlib decompressor"), "UNSUPPORTED_COMPRESSION");
      // Without zstd in node:zlib, the portable decoder reads it.
      assertEquals(code("corrupt zstd data"), "BAD_COMPRESSED_DATA");
      assertEquals(code("corrupt zlib data"), "BAD_COMPRESSED_DATA");
      assertEquals(
        code("corrupt zlib data, portable codecs"),
        "BAD_COMPRESSED_DATA",
      );
      assertEquals(results["failing data reads"].message, "injected");
      assertEquals(results["failing sink"].message, "disk full");
      assertEquals(results["erroring stream"].message, "stream broke");
      assertEquals(results["abort"].message, "interrupted");
    },
  });
}

Deno.test({
  name: "node: the bundled library converts fixtures under Node.js",
  ignore: SKIP_NODE,
  fn: async (t) => {
    const node = await probe("node");
    if (!node) throw new Error(NO_NODE);
    // Deno's `node` shim has `Deno`; the real Node.js has not.
    if (node.deno !== "undefined") {
      throw new Error(`${NO_NODE} (found Deno's shim)`);
    }
    const dir = await tempDir();
    try {
      await t.step(`Node.js ${node.node}`, async (t) => {
        await convertFixtures(t, "node", await bundle(dir), dir, node.zstd);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

const SKIP_BUN = Deno.env.get("QCOW2_SKIP_BUN") === "1";
const BUN = Deno.env.get("QCOW2_BUN") ?? "bun";
const NO_BUN =
  `Bun ('${BUN}') is not installed: 'npm install -g bun' (as .ci/run does), set QCOW2_BUN to its path, or set QCOW2_SKIP_BUN=1 to skip the Bun tests`;

Deno.test({
  name: "bun: the bundled library and mod.ts itself convert fixtures under Bun",
  ignore: SKIP_BUN,
  fn: async (t) => {
    const bun = await probe(BUN);
    if (bun?.bun !== "object") throw new Error(NO_BUN);
    const dir = await tempDir();
    try {
      await t.step(`Bun ${bun!.version}: the bundle`, async (t) => {
        await convertFixtures(t, BUN, await bundle(dir), dir, bun!.zstd);
      });
      // Bun runs TypeScript, so the published sources run as they are.
      await t.step(`Bun ${bun!.version}: mod.ts`, async (t) => {
        await convertFixtures(t, BUN, MOD, dir, bun!.zstd);
      });
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
