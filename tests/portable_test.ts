/**
 * The core in src/ runs in any JavaScript runtime: no Deno namespace, no
 * node: modules. (`deno task check` also type-checks it with DOM types only.)
 */
import { assertEquals } from "@std/assert";

Deno.test("src/ uses no Deno.* and imports no node:* module", async () => {
  const offenders: string[] = [];
  for await (const name of sourceFiles("")) {
    const text = await Deno.readTextFile(
      new URL(`../src/${name}`, import.meta.url),
    );
    text.split("\n").forEach((line, i) => {
      if (/^\s*(\*|\/\/|\/\*)/.test(line)) return; // comments and doc examples
      if (/\bDeno\./.test(line) || /["']node:/.test(line)) {
        offenders.push(`src/${name}:${i + 1}: ${line.trim()}`);
      }
    });
  }
  assertEquals(offenders, []);
});

/** Every non-test .ts file under src/, as paths relative to src/. */
async function* sourceFiles(dir: string): AsyncGenerator<string> {
  const url = new URL(`../src/${dir}`, import.meta.url);
  for await (const entry of Deno.readDir(url)) {
    const name = `${dir}${entry.name}`;
    if (entry.isDirectory) yield* sourceFiles(`${name}/`);
    else if (name.endsWith(".ts") && !name.endsWith("_test.ts")) yield name;
  }
}
