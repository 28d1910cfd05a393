/**
 * Writable images under Node.js and Bun: the library bundled as `deno task
 * bundle` makes it, then `tests/node/write.mjs` applies a seeded workload
 * to an image opened by path and through a `node:fs/promises` FileHandle;
 * `qemu-img check` must find it clean and `qemu-img compare` identical to
 * a copy written by qemu-io. Node is required (QCOW2_SKIP_NODE=1 skips);
 * Bun runs when installed (QCOW2_BUN names it).
 */
import { assert, assertEquals } from "@std/assert";
import { run, tempDir } from "./_reference.ts";
import { qemuIoScript, workload } from "./_workload.ts";
import denoJson from "../deno.json" with { type: "json" };

const ROOT = new URL("../", import.meta.url).pathname;
const SCRIPT = new URL("./node/write.mjs", import.meta.url).pathname;
const SKIP_NODE = Deno.env.get("QCOW2_SKIP_NODE") === "1";
const BUN = Deno.env.get("QCOW2_BUN") ?? "bun";

async function installed(exe: string): Promise<boolean> {
  try {
    const r = await new Deno.Command(exe, {
      args: ["--version"],
      stdout: "null",
      stderr: "null",
    }).output();
    return r.success;
  } catch {
    return false;
  }
}

async function bundle(dir: string): Promise<string> {
  const out = `${dir}/qcow2.mjs`;
  const task = denoJson.tasks.bundle.split(" ");
  const r = await new Deno.Command(Deno.execPath(), {
    args: task.slice(1).map((a) => a === "dist/qcow2.mjs" ? out : a),
    cwd: ROOT,
    stderr: "piped",
  }).output();
  assert(r.success, new TextDecoder().decode(r.stderr));
  return out;
}

async function writesLikeQemu(exe: string, t: Deno.TestContext) {
  const dir = await tempDir();
  try {
    const mod = await bundle(dir);
    for (const mode of ["path", "handle"]) {
      await t.step(`${exe}, opened by ${mode}`, async () => {
        await run("qemu-img", [
          "create",
          "-q",
          "-f",
          "qcow2",
          `${dir}/ours.qcow2`,
          "16M",
        ]);
        await run("cp", [`${dir}/ours.qcow2`, `${dir}/theirs.qcow2`]);
        const ops = workload(mode === "path" ? 11 : 12, {
          size: 16 * 1024 * 1024,
          clusterSize: 65536,
          count: 80,
        });
        await Deno.writeTextFile(`${dir}/ops.json`, JSON.stringify(ops));
        const r = await new Deno.Command(exe, {
          args: [SCRIPT, mod, mode, `${dir}/ours.qcow2`, `${dir}/ops.json`],
          stdout: "piped",
          stderr: "piped",
        }).output();
        const out = new TextDecoder().decode(r.stdout);
        assertEquals(r.code, 0, out + new TextDecoder().decode(r.stderr));
        assert(JSON.parse(out).ok);
        const script = qemuIoScript(ops);
        const child = new Deno.Command("qemu-io", {
          args: [`${dir}/theirs.qcow2`],
          stdin: "piped",
          stdout: "null",
        }).spawn();
        const w = child.stdin.getWriter();
        await w.write(new TextEncoder().encode(script));
        await w.close();
        assert((await child.status).success);
        await run("qemu-img", ["check", `${dir}/ours.qcow2`]);
        await run("qemu-img", [
          "compare",
          `${dir}/ours.qcow2`,
          `${dir}/theirs.qcow2`,
        ]);
      });
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test({
  name: "node: writable images under Node.js, by path and FileHandle",
  ignore: SKIP_NODE,
  async fn(t) {
    if (!await installed("node")) {
      throw new Error(
        "Node.js ('node') is not on the PATH (QCOW2_SKIP_NODE=1 skips)",
      );
    }
    await writesLikeQemu("node", t);
  },
});

Deno.test({
  name: "bun: writable images under Bun, by path and FileHandle",
  ignore: !await installed(BUN),
  async fn(t) {
    await writesLikeQemu(BUN, t);
  },
});
