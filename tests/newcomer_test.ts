/**
 * The README, followed literally by a newcomer in a checkout (issue 16,
 * newcomer fixes): its first commands, the command-line block, the library
 * snippet and the Node.js/Bun snippet after `deno task bundle` all work as
 * written. The commands are read from README.md itself, so an edit that
 * breaks them fails here.
 *
 * The checkout is a fresh directory with the repository's files (small ones
 * copied, directories linked), so what the commands write lands there.
 */
import { assert, assertEquals } from "@std/assert";
import {
  expected,
  fixture,
  hasQemu,
  sha256File,
  tempDir,
} from "./_reference.ts";

const ROOT = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
const README = await Deno.readTextFile(`${ROOT}/README.md`);
const SAMPLE = expected["sample.qcow2"].sha256;
const DENO_DIR = Deno.execPath().replace(/\/[^/]*$/, "");

/** A checkout to try things in: the repository's entries, and disk.qcow2. */
async function checkout(): Promise<string> {
  const dir = await tempDir();
  for await (const e of Deno.readDir(ROOT)) {
    // (tests/: only the demo's sample, a file of its own: Deno's read
    // permission for it must not go through a link.)
    if ([".git", "dist", "node_modules", "tests"].includes(e.name)) continue;
    if (e.isDirectory) {
      await Deno.symlink(`${ROOT}/${e.name}`, `${dir}/${e.name}`);
    } else await Deno.copyFile(`${ROOT}/${e.name}`, `${dir}/${e.name}`);
  }
  await Deno.mkdir(`${dir}/tests/fixtures`, { recursive: true });
  await Deno.copyFile(
    fixture("sample.qcow2"),
    `${dir}/tests/fixtures/sample.qcow2`,
  );
  await Deno.copyFile(fixture("sample.qcow2"), `${dir}/disk.qcow2`);
  return dir;
}

/** Runs a shell command line as a user types it, in `cwd`. */
async function sh(line: string, cwd: string) {
  const out = await new Deno.Command("bash", {
    // A terminal has no INIT_CWD; `deno task test`, which runs this, set one
    // (and Deno keeps an INIT_CWD it finds, as npm does).
    args: ["-c", `unset INIT_CWD; set -o pipefail; ${line}`],
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { PATH: `${DENO_DIR}:${Deno.env.get("PATH")}`, NO_COLOR: "1" },
  }).output();
  const text = new TextDecoder();
  const r = {
    code: out.code,
    stdout: text.decode(out.stdout),
    stderr: text.decode(out.stderr),
  };
  assertEquals(r.code, 0, `${line}\n${r.stdout}${r.stderr}`);
  return r;
}

/** The first fenced block of `lang` after `heading` in the README. */
function block(heading: string, lang: string): string {
  const section = README.slice(README.indexOf(heading));
  assert(section.length < README.length, `no '${heading}' in the README`);
  const match = section.match(new RegExp("```" + lang + "\\n([\\s\\S]*?)```"));
  assert(match, `no ${lang} block after '${heading}'`);
  return match![1];
}

/** The commands of a shell block: comments dropped, continuations joined. */
function commands(text: string): string[] {
  return text.replace(/\\\n\s*/g, "").split("\n")
    .map((l) => l.replace(/\s+#.*$/, "").trim())
    .filter((l) => l && !l.startsWith("#"));
}

Deno.test("README: Try it, as written, in a checkout", async () => {
  const dir = await checkout();
  try {
    const demo = commands(block("## Try it", "sh"));
    assertEquals(demo, ["npx -y deno@2.9.6 task demo"]);
    // The same Deno from the npm registry, already here.
    await sh(demo[0].replace("npx -y deno@2.9.6", "deno"), dir);
    assertEquals(await sha256File(`${dir}/sample.raw`), SAMPLE);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README: the command-line block works from a checkout", async () => {
  const dir = await checkout();
  try {
    const lines = commands(block("## Command line", "sh"));
    assert(lines.length >= 5, lines.join("\n"));
    for (const line of lines) {
      assert(!line.includes("jsr:"), `a checkout command uses JSR: ${line}`);
      const r = await sh(line, dir);
      if (line.includes("| sha256sum")) assert(r.stdout.startsWith(SAMPLE));
      if (/ info disk\.qcow2$/.test(line)) {
        assert(r.stdout.startsWith("image: disk.qcow2\n"), r.stdout);
      }
    }
    assertEquals(await sha256File(`${dir}/disk.raw`), SAMPLE);
    // `deno task cli` below the checkout takes paths from where it runs.
    await Deno.mkdir(`${dir}/sub`);
    await Deno.copyFile(fixture("sample.qcow2"), `${dir}/sub/here.qcow2`);
    const r = await sh(
      "deno task cli convert here.qcow2 here.raw",
      `${dir}/sub`,
    );
    assertEquals(r.stdout, "");
    assertEquals(await sha256File(`${dir}/sub/here.raw`), SAMPLE);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README: the library snippet runs in a checkout", async () => {
  const dir = await checkout();
  try {
    const code = block("## Library", "ts ignore");
    assert(code.includes('from "./mod.ts"'), code);
    await Deno.writeTextFile(`${dir}/try.ts`, code);
    await sh("deno run --allow-read --allow-write try.ts", dir);
    assertEquals(await sha256File(`${dir}/disk.raw`), SAMPLE);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README: the Node.js and Bun snippet runs after deno task bundle", async () => {
  const dir = await checkout();
  try {
    assertEquals(commands(block("## In Node.js and Bun", "sh")), [
      "deno task bundle",
    ]);
    await sh("deno task bundle", dir);
    const code = block("## In Node.js and Bun", "js ignore");
    assert(code.includes('from "./dist/qcow2.mjs"'), code);
    await Deno.writeTextFile(`${dir}/convert.mjs`, code);
    for (const runtime of ["node", "bun"]) {
      await Deno.remove(`${dir}/disk.raw`).catch(() => {});
      const r = await sh(`${runtime} convert.mjs`, dir);
      assertEquals(r.stdout, "110592 bytes written\n");
      assertEquals(await sha256File(`${dir}/disk.raw`), SAMPLE);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README: a script outside the checkout imports mod.ts with --config, or the bundle", async () => {
  const dir = await checkout();
  const elsewhere = await tempDir();
  try {
    await Deno.copyFile(fixture("sample.qcow2"), `${elsewhere}/disk.qcow2`);
    const script = (from: string) =>
      `import { convert } from ${JSON.stringify(from)};\n` +
      `const s = await convert("disk.qcow2", new WritableStream());\n` +
      `console.log(s.virtualSize);\n`;
    await Deno.writeTextFile(`${elsewhere}/a.ts`, script(`${dir}/mod.ts`));
    const r = await sh(
      `deno run --allow-read --config ${dir}/deno.json a.ts`,
      elsewhere,
    );
    assertEquals(r.stdout, "8388608\n");
    await sh("deno task bundle", dir);
    await Deno.writeTextFile(
      `${elsewhere}/b.mjs`,
      script(`${dir}/dist/qcow2.mjs`),
    );
    for (const run of ["deno run --allow-read b.mjs", "node b.mjs"]) {
      assertEquals((await sh(run, elsewhere)).stdout, "8388608\n");
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
    await Deno.remove(elsewhere, { recursive: true });
  }
});

Deno.test("README: the writer's library snippet runs in a checkout", async () => {
  const dir = await checkout();
  try {
    await sh(
      "deno run --allow-read=disk.qcow2 --allow-write=disk.raw cli.ts convert disk.qcow2 disk.raw",
      dir,
    );
    await Deno.remove(`${dir}/disk.qcow2`); // the snippet creates its own
    const code = block("### Writing qcow2 images", "ts ignore");
    assert(code.includes('from "./mod.ts"'), code);
    await Deno.writeTextFile(`${dir}/write.ts`, code);
    await sh("deno run --allow-read --allow-write write.ts", dir);
    if (hasQemu) {
      await sh("qemu-img check -q small.qcow2", dir);
      await sh("qemu-img compare -q disk.raw small.qcow2", dir);
      await sh("qemu-img check -q disk.qcow2", dir);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("README: the read-write snippet runs in a checkout", async () => {
  const dir = await checkout();
  try {
    const code = block("### Writing to an image", "ts ignore");
    assert(code.includes('from "./mod.ts"'), code);
    await Deno.writeTextFile(`${dir}/rw.ts`, code);
    await sh("deno run --allow-read --allow-write rw.ts", dir);
    if (hasQemu) await sh("qemu-img check -q disk.qcow2", dir);
    const bytes = new Uint8Array(4096);
    const { openImage } = await import("@qcow2/qcow2");
    const image = await openImage(`${dir}/disk.qcow2`);
    await image.read(0x10000, bytes);
    assert(bytes.every((b) => b === 0xa5));
    image.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
