/**
 * The library under Node.js: `mod.ts` bundled to one ESM file by
 * `deno bundle` (node:* imports left to Node), then `tests/node/convert.mjs`
 * run by the machine's `node` on committed fixtures, through
 * `node:fs/promises` FileHandles. Without Node.js this fails (Deno's own
 * `node` shim, which Deno puts on a subprocess's PATH when there is no
 * `node`, does not count); set QCOW2_SKIP_NODE=1 to skip it (reported as
 * ignored).
 */
import { assert, assertEquals } from "@std/assert";
import { expected, fixture, tempDir } from "./_reference.ts";

const SKIP = Deno.env.get("QCOW2_SKIP_NODE") === "1";
const MOD = new URL("../mod.ts", import.meta.url).pathname;
const SCRIPT = new URL("./node/convert.mjs", import.meta.url).pathname;
const layouts: Record<string, { sha256: string }> = JSON.parse(
  await Deno.readTextFile(fixture("layouts/expected.json")),
);

const NO_NODE =
  "Node.js ('node') is not on the PATH: install it, or set QCOW2_SKIP_NODE=1 to skip the Node.js tests";

/** Runs `node ARGS`, failing with a hint when Node.js is not installed. */
async function node(args: string[]) {
  try {
    const out = await new Deno.Command("node", {
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
    if (e instanceof Deno.errors.NotFound) throw new Error(NO_NODE);
    throw e;
  }
}

/** Bundles mod.ts for Node into `dir`, checking node:* stays external. */
async function bundle(dir: string): Promise<string> {
  const out = `${dir}/qcow2.mjs`;
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["bundle", "--quiet", "--platform", "deno", "-o", out, MOD],
    stdout: "piped",
    stderr: "piped",
  }).output();
  assert(r.success, new TextDecoder().decode(r.stderr));
  const text = await Deno.readTextFile(out);
  assert(/from "node:zlib"/.test(text), "node:zlib should stay an import");
  assert(!/\bDeno\./.test(text), "the bundle should not touch Deno.*");
  return out;
}

Deno.test({
  name: "node: the bundled library converts fixtures under Node.js",
  ignore: SKIP,
  fn: async (t) => {
    // Deno's `node` shim has `Deno`; the real Node.js has not.
    const probe = await node(["-p", "typeof Deno + ' ' + process.version"]);
    assertEquals(probe.code, 0, probe.stderr);
    const [deno, version] = probe.stdout.trim().split(" ");
    if (deno !== "undefined") throw new Error(`${NO_NODE} (found Deno's shim)`);
    const hasZstd = (await node([
      "-e",
      "process.stdout.write(typeof require('node:zlib').zstdDecompressSync)",
    ])).stdout === "function";
    const dir = await tempDir();
    try {
      const mod = await bundle(dir);
      const run = async (mode: "handle" | "path", name: string) => {
        const r = await node([SCRIPT, mod, mode, fixture(name), `${dir}/out`]);
        return { code: r.code, result: JSON.parse(r.stdout || "null"), r };
      };
      for (
        const name of ["v3_64k.qcow2", "zlib.qcow2", "odd_size_zlib.qcow2"]
      ) {
        await t.step(`${name} through FileHandles`, async () => {
          const { code, result, r } = await run("handle", name);
          assertEquals(code, 0, r.stdout + r.stderr);
          assertEquals(result.file, expected[name].sha256);
          assertEquals(result.stream, expected[name].sha256);
          assertEquals(result.virtualSize, expected[name].virtualSize);
        });
      }
      await t.step("a backing chain opened by path (openPath)", async () => {
        const { code, result, r } = await run(
          "path",
          "layouts/chain_top.qcow2",
        );
        assertEquals(code, 0, r.stdout + r.stderr);
        assertEquals(result.file, layouts["chain_top.qcow2"].sha256);
        assertEquals(result.stream, layouts["chain_top.qcow2"].sha256);
      });
      await t.step(
        `zstd.qcow2 (node:zlib ${
          hasZstd ? "has" : "lacks"
        } zstd in Node ${version})`,
        async () => {
          const { code, result, r } = await run("handle", "zstd.qcow2");
          if (hasZstd) {
            assertEquals(code, 0, r.stdout + r.stderr);
            assertEquals(result.file, expected["zstd.qcow2"].sha256);
          } else {
            assertEquals(code, 1, r.stdout + r.stderr);
            assertEquals(result.error.qcow2Error, true);
            assertEquals(result.error.code, "UNSUPPORTED_COMPRESSION");
            assert(/zstd/.test(result.error.message), result.error.message);
          }
        },
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
