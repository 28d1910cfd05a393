/**
 * The core in src/ runs in any JavaScript runtime: no Deno namespace, no
 * node: modules. (`deno task check` also type-checks it with DOM types only.)
 */
import { assertEquals } from "@std/assert";

Deno.test("src/ uses no Deno.* and imports no node:* module", async () => {
  const offenders: string[] = [];
  for await (const entry of Deno.readDir(new URL("../src/", import.meta.url))) {
    if (!entry.name.endsWith(".ts") || entry.name.endsWith("_test.ts")) {
      continue;
    }
    const text = await Deno.readTextFile(
      new URL(`../src/${entry.name}`, import.meta.url),
    );
    text.split("\n").forEach((line, i) => {
      if (/^\s*(\*|\/\/|\/\*)/.test(line)) return; // comments and doc examples
      if (/\bDeno\./.test(line) || /["']node:/.test(line)) {
        offenders.push(`src/${entry.name}:${i + 1}: ${line.trim()}`);
      }
    });
  }
  assertEquals(offenders, []);
});
