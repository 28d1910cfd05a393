/**
 * The README's recipes that can run offline: `deno task install` (a global
 * `qcow2` command from a checkout), the `cli` task, and the `jsr:` entry
 * point's `import.meta.main`. (`deno task compile` downloads Deno's runtime
 * once, which this machine cannot; `deno task check` type-checks cli.ts and
 * runs `deno publish --dry-run`.)
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import denoJson from "../deno.json" with { type: "json" };
import { expected, fixture, sha256File, tempDir } from "./_reference.ts";

const ROOT = new URL("../", import.meta.url).pathname;
const DENO_DIR = Deno.execPath().slice(0, Deno.execPath().lastIndexOf("/"));

/** A task's command line, with `deno` as this Deno and `extra` after it. */
function task(name: keyof typeof denoJson.tasks, extra: string[] = []) {
  const words = denoJson.tasks[name].split(" ");
  assertEquals(words[0], "deno");
  return [words[1], ...extra, ...words.slice(2)];
}

Deno.test("deno task install: a global qcow2 command that converts", async () => {
  const root = await tempDir();
  try {
    const install = await new Deno.Command(Deno.execPath(), {
      args: task("install", ["--root", root]),
      cwd: ROOT,
      stdout: "piped",
      stderr: "piped",
    }).output();
    assert(install.success, new TextDecoder().decode(install.stderr));
    // The installed shim runs `deno` by name.
    const env = { PATH: `${DENO_DIR}:${Deno.env.get("PATH") ?? ""}` };
    const run = async (args: string[]) => {
      const r = await new Deno.Command(`${root}/bin/qcow2`, {
        args,
        cwd: root,
        env,
        stdout: "piped",
        stderr: "piped",
      }).output();
      return {
        code: r.code,
        stdout: new TextDecoder().decode(r.stdout),
        stderr: new TextDecoder().decode(r.stderr),
      };
    };
    const version = await run(["--version"]);
    assertEquals(version.code, 0, version.stderr);
    assertEquals(version.stdout.trim(), `qcow2 ${denoJson.version}`);
    const src = fixture("zlib.qcow2");
    const converted = await run(["convert", src, `${root}/out.raw`]);
    assertEquals(converted.code, 0, converted.stderr);
    assertEquals(
      await sha256File(`${root}/out.raw`),
      expected["zlib.qcow2"].sha256,
    );
  } finally {
    await Deno.remove(root, { recursive: true });
  }
});

Deno.test("deno task cli runs the command line from a checkout", async () => {
  const r = await new Deno.Command(Deno.execPath(), {
    args: ["task", "cli", "info", fixture("v3_64k.qcow2")],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    // As Deno sets it when run from ROOT (an enclosing task's stays).
    env: { INIT_CWD: ROOT },
  }).output();
  assert(r.success, new TextDecoder().decode(r.stderr));
  assertStringIncludes(
    new TextDecoder().decode(r.stdout),
    "virtual size: 4 MiB (4194304 bytes)",
  );
});

Deno.test("the ./cli export runs as a program and exports main", async () => {
  assertEquals(denoJson.exports["./cli"], "./cli.ts");
  const text = await Deno.readTextFile(new URL("../cli.ts", import.meta.url));
  assertStringIncludes(text, "if (import.meta.main) {");
  const { main } = await import("../cli.ts");
  assertEquals(typeof main, "function");
  for (const name of ["compile", "install"] as const) {
    assert(denoJson.tasks[name].endsWith(" cli.ts"), name);
    assertStringIncludes(denoJson.tasks[name], "--allow-read --allow-write");
  }
});
