/**
 * `deno task publish:prepare` (issue 16, newcomer fixes): the package for
 * JSR depends on `jsr:@std/*`, not on the npm repackaging the checkout uses
 * offline, and carries no dev-only entries. Checked against independent
 * sources: the module graph `deno info` resolves for each export, and the
 * file list of `deno publish --dry-run`.
 */
import { assert, assertEquals } from "@std/assert";
import denoJson from "../deno.json" with { type: "json" };
import { tempDir } from "./_reference.ts";
import { bareImports, stdTarget } from "../tools/publish_prepare.ts";

const ROOT = new URL("..", import.meta.url).pathname;

async function run(args: string[], cwd = ROOT) {
  const r = await new Deno.Command(Deno.execPath(), {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  assert(r.success, text.decode(r.stderr));
  return text.decode(r.stdout) + text.decode(r.stderr);
}

/** The npm packages (name@version) in the module graph of `entry`. */
async function npmGraph(entry: string): Promise<string[]> {
  const info = JSON.parse(await run(["info", "--json", entry]));
  return (info.modules as { specifier: string }[])
    .map((m) => m.specifier)
    .filter((s) => s.startsWith("npm:/"))
    .map((s) => s.slice("npm:/".length).match(/^(@[^/]+\/[^/]+|[^/]+)/)![1]);
}

Deno.test("publish:prepare writes deno.json for JSR: jsr:@std, no dev-only entries", async () => {
  const out = await tempDir();
  try {
    await run(["task", "publish:prepare", "--out", out]);
    const published = JSON.parse(await Deno.readTextFile(`${out}/deno.json`));
    assertEquals(Object.keys(published), [
      "name",
      "version",
      "description",
      "license",
      "exports",
      "imports",
    ]);
    assertEquals(published.name, denoJson.name);
    assertEquals(published.version, denoJson.version);
    assertEquals(published.exports, denoJson.exports);
    const imports: Record<string, string> = published.imports;
    // @std from JSR; nothing of the offline npm repackaging, nothing dev-only.
    for (const [key, target] of Object.entries(imports)) {
      if (key.startsWith("@std/")) {
        assert(
          target.startsWith(`jsr:${key.split("/").slice(0, 2).join("/")}@`),
          target,
        );
      }
      assert(!target.includes("deno-std"), target);
    }
    assertEquals(
      imports["@std/cli/parse-args"],
      "jsr:@std/cli@^1.0.0/parse-args",
    );
    for (const dev of ["@std/assert", "playwright-core", "@qcow2/qcow2"]) {
      assertEquals(imports[dev], undefined, dev);
    }

    // Every npm package in the exports' module graph is published as the
    // checkout pins it (deno-std as jsr:@std), and no other.
    const graph = new Set<string>();
    for (const entry of Object.values(denoJson.exports)) {
      for (const p of await npmGraph(entry)) graph.add(p);
    }
    const npmTargets = new Set(
      Object.values(imports).filter((t) => t.startsWith("npm:"))
        // The package (name@version), without a subpath such as /aes.js.
        .map((t) => t.slice("npm:".length).match(/^(@[^/]+\/[^/]+|[^/]+)/)![1]),
    );
    assertEquals(
      npmTargets,
      new Set([...graph].filter((p) => !p.startsWith("deno-std@"))),
    );
    assert([...graph].some((p) => p.startsWith("deno-std@")));

    // The files: those `deno publish --dry-run` lists, deno.json aside.
    const dry = await run(["publish", "--dry-run", "--allow-dirty"]);
    const listed = [...dry.matchAll(/file:\/\/(\S+)/g)]
      .map(([, path]) => path.slice(ROOT.length))
      .filter((p) => p !== "deno.json")
      .sort();
    const copied: string[] = [];
    const walk = async (dir: string) => {
      for await (const e of Deno.readDir(`${out}/${dir}`)) {
        const path = dir ? `${dir}/${e.name}` : e.name;
        if (e.isDirectory) await walk(path);
        else if (path !== "deno.json") copied.push(path);
      }
    };
    await walk("");
    assertEquals(copied.sort(), listed);
    // And every bare import of those files is mapped.
    for (const file of copied.filter((f) => f.endsWith(".ts"))) {
      for (const s of bareImports(await Deno.readTextFile(`${out}/${file}`))) {
        assert(s in imports, `${file} imports '${s}', unmapped`);
      }
    }
  } finally {
    await Deno.remove(out, { recursive: true });
  }
});

Deno.test("publish:prepare: bare imports and @std targets", () => {
  assertEquals(
    bareImports(
      'import { a } from "./a.ts";\nimport type { B } from "pako";\n' +
        'const z = import("zstddec");\nimport "x/side";\n' +
        'export { c } from "@std/cli/parse-args";\nimport("node:zlib");\n' +
        '/** ```ts\n * import { assert } from "@std/assert";\n * ``` */',
    ),
    ["@std/cli/parse-args", "pako", "x/side", "zstddec"],
  );
  assertEquals(stdTarget("@std/assert"), "jsr:@std/assert@^1.0.0");
});
