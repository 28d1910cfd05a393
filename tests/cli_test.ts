/**
 * The command line, run as users run it: a separate `deno run` process with
 * permissions scoped to the files named and nothing else.
 */
import {
  assert,
  assertEquals,
  assertMatch,
  assertStringIncludes,
} from "@std/assert";
import { cli, expected, fixture, sha256File, tempDir } from "./_reference.ts";

Deno.test("cli convert runs with read of SRC and write of DST only", async () => {
  const dir = await tempDir();
  try {
    for (const name of ["v3_64k.qcow2", "zlib.qcow2", "zstd.qcow2"]) {
      const src = fixture(name);
      const dst = `${dir}/${name}.raw`;
      const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
        "convert",
        src,
        dst,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(r.stdout, "");
      assertEquals(r.stderr, "");
      assertEquals(await sha256File(dst), expected[name].sha256, name);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert to - streams the raw image to stdout", async () => {
  const src = fixture("odd_size.qcow2");
  const r = await cli([`--allow-read=${src}`], ["convert", src, "-"]);
  assertEquals(r.code, 0, r.stderr);
  const digest = await crypto.subtle.digest("SHA-256", r.bytes);
  assertEquals(
    Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0"))
      .join(""),
    expected["odd_size.qcow2"].sha256,
  );
});

Deno.test("cli info runs with read of IMAGE only", async () => {
  const src = fixture("v3_64k.qcow2");
  const text = await cli([`--allow-read=${src}`], ["info", src]);
  assertEquals(text.code, 0, text.stderr);
  assertStringIncludes(text.stdout, "file format: qcow2\n");
  assertStringIncludes(text.stdout, "virtual size: 4 MiB (4194304 bytes)\n");
  assertStringIncludes(text.stdout, "cluster_size: 65536\n");
  assertStringIncludes(text.stdout, "    compat: 1.1\n");
  const json = await cli([`--allow-read=${src}`], ["info", "--json", src]);
  assertEquals(json.code, 0, json.stderr);
  const report = JSON.parse(json.stdout);
  assertEquals(report["virtual-size"], 4194304);
  assertEquals(report.format, "qcow2");
  assertEquals(report["format-specific"].data.compat, "1.1");
});

Deno.test("cli: a missing permission is one line naming the flag", async () => {
  const src = fixture("v3_64k.qcow2");
  const r = await cli([], ["info", src]);
  assertEquals(r.code, 1);
  assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
  assertStringIncludes(r.stderr, `--allow-read=${src}`);
  const dir = await tempDir();
  try {
    const w = await cli([`--allow-read=${src}`], [
      "convert",
      src,
      `${dir}/out.raw`,
    ]);
    assertEquals(w.code, 1);
    assertStringIncludes(w.stderr, `--allow-write=${dir}/out.raw`);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: image and file errors exit 1 with one line, no stack", async () => {
  const dir = await tempDir();
  try {
    const notQcow2 = `${dir}/plain.txt`;
    await Deno.writeTextFile(notQcow2, "hello, not an image\n");
    for (const args of [["info", notQcow2], ["info", `${dir}/missing.qcow2`]]) {
      const r = await cli([`--allow-read=${dir}`], args);
      assertEquals(r.code, 1);
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      assertMatch(r.stderr, /^qcow2: /);
      assert(!r.stderr.includes("    at "), r.stderr);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: a failed convert leaves no output file", async () => {
  const dir = await tempDir();
  try {
    // A valid header whose L2 entry points past the end of the file.
    const bytes = await Deno.readFile(fixture("v3_64k.qcow2"));
    const src = `${dir}/bad.qcow2`;
    const { entryOffset } = await firstL2Entry(bytes);
    new DataView(bytes.buffer).setBigUint64(
      entryOffset,
      (1n << 63n) | 0x7fff0000n,
    );
    await Deno.writeFile(src, bytes);
    const dst = `${dir}/out.raw`;
    const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
      "convert",
      src,
      dst,
    ]);
    assertEquals(r.code, 1, r.stderr);
    assertStringIncludes(r.stderr, "past the end of the file");
    assertEquals(await Deno.stat(dst).then(() => true, () => false), false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert refuses to overwrite its source", async () => {
  const dir = await tempDir();
  try {
    const src = `${dir}/img.qcow2`;
    await Deno.copyFile(fixture("v3_64k.qcow2"), src);
    const before = await sha256File(src);
    for (const dst of [src, `${dir}/./img.qcow2`]) {
      const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
        "convert",
        src,
        dst,
      ]);
      assertEquals(r.code, 1);
      assertStringIncludes(r.stderr, "same file as the input");
    }
    assertEquals(await sha256File(src), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli usage errors exit 2; --help and --version exit 0", async () => {
  for (
    const args of [[], ["frobnicate"], ["info"], ["info", "--bogus", "x"], [
      "convert",
      "a",
    ], [
      "convert",
      "-O",
      "vmdk",
      "a",
      "b",
    ], ["convert", "-S", "1000", "a", "b"]]
  ) {
    const r = await cli([], args);
    assertEquals(r.code, 2, `${args.join(" ")}: ${r.stderr}`);
  }
  for (const args of [["--help"], ["info", "--help"], ["convert", "-h"]]) {
    const r = await cli([], args);
    assertEquals(r.code, 0);
    assertStringIncludes(r.stdout, "Usage:");
  }
  const v = await cli([], ["--version"]);
  assertMatch(v.stdout, /^qcow2 \d+\.\d+\.\d+/);
});

/** The file offset of the first allocated L2 entry of an image. */
async function firstL2Entry(bytes: Uint8Array) {
  const v = new DataView(bytes.buffer);
  const l1 = Number(v.getBigUint64(40));
  const l2 = Number(v.getBigUint64(l1) & 0x00fffffffffffe00n);
  for (let i = 0; i < 8192; i++) {
    if (v.getBigUint64(l2 + i * 8) !== 0n) return { entryOffset: l2 + i * 8 };
  }
  return await Promise.reject(new Error("no allocated cluster"));
}

Deno.test("cli convert writes beside DST and renames: a failure leaves the old DST", async () => {
  const dir = await tempDir();
  try {
    const bytes = await Deno.readFile(fixture("v3_64k.qcow2"));
    const { entryOffset } = await firstL2Entry(bytes);
    const good = fixture("v3_64k.qcow2");
    const bad = `${dir}/bad.qcow2`;
    const v = new DataView(bytes.buffer);
    // The last allocated entry points past the end: the failure comes late.
    let last = entryOffset;
    for (let at = entryOffset; at < entryOffset + 65536; at += 8) {
      if (v.getBigUint64(at) !== 0n) last = at;
    }
    v.setBigUint64(last, (1n << 63n) | 0x7fff0000n);
    await Deno.writeFile(bad, bytes);
    const dst = `${dir}/out.raw`;
    await Deno.writeTextFile(dst, "precious");
    // With write access to the directory, output goes to a temporary file.
    const r = await cli(
      [`--allow-read=${good},${dir}`, `--allow-write=${dir}`],
      ["convert", bad, dst],
    );
    assertEquals(r.code, 1, r.stderr);
    assertEquals(await Deno.readTextFile(dst), "precious");
    const left = [];
    for await (const e of Deno.readDir(dir)) left.push(e.name);
    assertEquals(left.sort(), ["bad.qcow2", "out.raw"]);
    const ok = await cli([
      `--allow-read=${good},${dir}`,
      `--allow-write=${dir}`,
    ], [
      "convert",
      good,
      dst,
    ]);
    assertEquals(ok.code, 0, ok.stderr);
    assertEquals(await sha256File(dst), expected["v3_64k.qcow2"].sha256);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert interrupted by Ctrl-C leaves the old DST and no partial file", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("sparse_4t.qcow2");
    const dst = `${dir}/out.raw`;
    await Deno.writeTextFile(dst, "precious");
    // -S 0 writes every byte of 4 TiB: long enough to interrupt.
    const child = new Deno.Command(Deno.execPath(), {
      args: [
        "run",
        "--no-prompt",
        `--allow-read=${src},${dir}`,
        `--allow-write=${dir}`,
        new URL("../cli.ts", import.meta.url).pathname,
        "convert",
        "-S",
        "0",
        src,
        dst,
      ],
      stdout: "null",
      stderr: "piped",
    }).spawn();
    // Wait until the temporary file exists, then interrupt.
    for (let i = 0; i < 100; i++) {
      const names: string[] = [];
      for await (const e of Deno.readDir(dir)) names.push(e.name);
      if (names.some((n) => n.endsWith(".partial"))) break;
      await new Promise((r) => setTimeout(r, 50));
    }
    child.kill("SIGINT");
    const { code, stderr } = await child.output();
    assertEquals(code, 1);
    assertStringIncludes(new TextDecoder().decode(stderr), "interrupted");
    assertEquals(await Deno.readTextFile(dst), "precious");
    const left: string[] = [];
    for await (const e of Deno.readDir(dir)) left.push(e.name);
    assertEquals(left, ["out.raw"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
