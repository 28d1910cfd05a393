/**
 * Start-up time of the CLI (issue 4): `qcow2 info` and `qcow2 convert` to
 * raw load only the modules they use. What a command does not need (the
 * AES of @noble/ciphers and the LUKS code, pako, the zstd WebAssembly, the
 * qcow2 writer, HTTP, the other commands) is loaded by `import()` when it is
 * used. Here, the
 * modules each entry point loads before running (its static imports, from
 * `deno info --json`) must not include them. Figures: bench/README.md.
 */
import { assert, assertEquals } from "@std/assert";

interface Dependency {
  specifier: string;
  code?: { specifier?: string };
  isDynamic?: boolean;
}
interface ModuleInfo {
  specifier: string;
  dependencies?: Dependency[];
}

/** The modules `entry` loads eagerly: its static, non-type imports. */
async function eagerGraph(entry: string): Promise<string[]> {
  const path = new URL(`../${entry}`, import.meta.url).pathname;
  const { stdout, success } = await new Deno.Command(Deno.execPath(), {
    args: ["info", "--json", path],
    stdout: "piped",
    stderr: "inherit",
  }).output();
  assert(success, `deno info ${entry}`);
  const info = JSON.parse(new TextDecoder().decode(stdout)) as {
    roots: string[];
    modules: ModuleInfo[];
    redirects: Record<string, string>;
  };
  const bySpecifier = new Map(info.modules.map((m) => [m.specifier, m]));
  const seen = new Set<string>();
  const todo = [info.roots[0]];
  while (todo.length > 0) {
    const specifier = todo.pop()!;
    if (seen.has(specifier)) continue;
    seen.add(specifier);
    for (const dep of bySpecifier.get(specifier)?.dependencies ?? []) {
      const target = dep.code?.specifier;
      if (dep.isDynamic || !target) continue;
      todo.push(info.redirects[target] ?? target);
    }
  }
  const root = new URL("../", import.meta.url).href;
  return [...seen].map((s) => s.startsWith(root) ? s.slice(root.length) : s);
}

/** What `info` and `convert` to raw must not load before they run. */
const LAZY = [
  /@noble\/ciphers/,
  /pako/,
  /zstddec/,
  /wasm-zstd/,
  /^src\/codecs\/deflate\.ts$/,
  /^src\/crypto\/(encryption|sector_cipher|luks_header|afsplit)\.ts$/,
  /^src\/qcow2\/writable\.ts$/,
  /^src\/qcow2\/open_writable\.ts$/,
  /^src\/ops\/convert_qcow2\.ts$/,
  /^src\/io\/http\.ts$/,
  /^cli\/_convert_qcow2\.ts$/,
  /^cli\/(check|create|map|measure|compare)\.ts$/,
  /^mod\.ts$/,
  /^web\.ts$/,
];

for (const entry of ["cli/info.ts", "cli/convert.ts"]) {
  Deno.test(`${entry} loads no module it does not use`, async () => {
    const graph = await eagerGraph(entry);
    assert(graph.includes("native/open_path.ts"), graph.join(" "));
    assertEquals(graph.filter((m) => LAZY.some((re) => re.test(m))), []);
  });
}

Deno.test("cli/_convert_qcow2.ts (convert -O qcow2) loads neither mod.ts nor what it does not use", async () => {
  const graph = await eagerGraph("cli/_convert_qcow2.ts");
  assert(graph.includes("native/compress_pool.ts"), graph.join(" "));
  assertEquals(
    graph.filter((m) =>
      m !== "cli/_convert_qcow2.ts" && LAZY.some((re) => re.test(m))
    ),
    [],
  );
  // The LUKS options come with encrypt.* alone.
  assertEquals(graph.filter((m) => /^cli\/_encrypt\.ts$/.test(m)), []);
});

Deno.test("cli.ts loads its commands only when they run", async () => {
  const graph = await eagerGraph("cli.ts");
  assertEquals(graph.filter((m) => /^cli\/[a-z]+\.ts$/.test(m)), []);
  // Only the errors and the size parser the option parser reads `-S` with
  // (a few lines, no imports of its own).
  assertEquals(graph.filter((m) => /^(src|mod\.ts|web\.ts)/.test(m)).sort(), [
    "src/errors.ts",
    "src/size.ts",
  ]);
});
