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
import { writeOutput } from "../native/output.ts";
import { explain } from "../native/explain.ts";
import { pathOf } from "../native/fs_errors.ts";

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

Deno.test("cli convert -O qcow2 runs with read of SRC and write of DST only", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("v3_64k.qcow2");
    // Write of DST alone (written in place), then of its directory (a
    // temporary file renamed); with and without -c (the writing worker).
    for (const c of [[], ["-c"]]) {
      for (const scope of ["file", "dir"]) {
        const dst = `${dir}/${scope}${c.length}.qcow2`;
        const flags = [
          `--allow-read=${src}${scope === "dir" ? `,${dir}` : ""}`,
          `--allow-write=${scope === "dir" ? dir : dst}`,
        ];
        const r = await cli(flags, ["convert", "-O", "qcow2", ...c, src, dst]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(r.stderr, "");
        const back = await cli([`--allow-read=${dst}`], ["convert", dst, "-"]);
        const digest = new Uint8Array(
          await crypto.subtle.digest("SHA-256", back.bytes),
        );
        assertEquals(
          Array.from(digest, (b) => b.toString(16).padStart(2, "0")).join(""),
          expected["v3_64k.qcow2"].sha256,
        );
      }
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
    ]]
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

Deno.test("cli convert --json prints a summary on stdout and nothing else", async () => {
  const dir = await tempDir();
  try {
    const layouts = fixture("layouts/");
    const src = `${layouts}chain_top.qcow2`;
    const dst = `${dir}/out.raw`;
    const r = await cli([`--allow-read=${layouts}`, `--allow-write=${dst}`], [
      "convert",
      "--json",
      src,
      dst,
    ]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(r.stderr, "");
    const summary = JSON.parse(r.stdout);
    assertEquals(Object.keys(summary), [
      "source",
      "destination",
      "format",
      "virtual-size",
      "bytes-written",
      "bytes-skipped",
      "sparse-size",
      "snapshot",
      "top-only",
      "files-read",
      "duration-ms",
    ]);
    assertEquals(summary.source, src);
    assertEquals(summary.destination, dst);
    assertEquals(summary.format, "raw");
    assertEquals(summary["virtual-size"], 4 * 1024 * 1024);
    assertEquals(
      summary["bytes-written"] + summary["bytes-skipped"],
      summary["virtual-size"],
    );
    assert(summary["bytes-written"] > 0);
    assertEquals(summary["sparse-size"], 4096);
    assertEquals(summary.snapshot, null);
    assertEquals(summary["top-only"], false);
    assertEquals(summary["files-read"], [
      src,
      `${layouts}chain_mid.qcow2`,
      `${layouts}chain_base.qcow2`,
    ]);
    assert(Number.isInteger(summary["duration-ms"]));
    // The summary tells what was written: the file is the same as qemu-img's.
    const layoutDigests = JSON.parse(
      await Deno.readTextFile(`${layouts}expected.json`),
    );
    assertEquals(
      await sha256File(dst),
      layoutDigests["chain_top.qcow2"].sha256,
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * The keys `convert --help` lists for --json: those of every summary, and
 * those of -O raw and of -O qcow2 (what is in parentheses is not a key).
 */
function helpJsonKeys(help: string) {
  const section = help.slice(
    help.indexOf("with the keys"),
    help.indexOf("\n  -U"),
  ).replace(/\([^)]*\)/gs, "");
  const [common, raw, qcow2] = section.split(/with -O (?:raw|qcow2):/);
  const keys = (text: string): string[] =>
    text.replace("with the keys", "").match(/[a-z][a-z0-9-]*/g) ?? [];
  return { common: keys(common), raw: keys(raw), qcow2: keys(qcow2) };
}

Deno.test("cli convert --help lists the keys --json prints, for -O raw and -O qcow2", async () => {
  const dir = await tempDir();
  try {
    const help = helpJsonKeys((await cli([], ["convert", "--help"])).stdout);
    assert(help.common.includes("virtual-size"), help.common.join());
    const src = fixture("v3_64k.qcow2");
    for (const format of ["raw", "qcow2"] as const) {
      const dst = `${dir}/out.${format}`;
      const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
        "convert",
        "--json",
        "-O",
        format,
        src,
        dst,
      ]);
      assertEquals(r.code, 0, r.stderr);
      const printed = Object.keys(JSON.parse(r.stdout)).sort();
      // image-virtual-size: only with -l on an image resized since.
      const listed = [...help.common, ...help[format]]
        .filter((k) => k !== "image-virtual-size").sort();
      assertEquals(printed, listed, format);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert -q prints nothing, even with -p; errors still do", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("zlib.qcow2");
    const dst = `${dir}/out.raw`;
    for (const flags of [["-q"], ["--quiet"], ["-q", "-p"], ["-pq"]]) {
      const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
        "convert",
        ...flags,
        src,
        dst,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals([r.stdout, r.stderr], ["", ""], flags.join(" "));
      assertEquals(await sha256File(dst), expected["zlib.qcow2"].sha256);
    }
    const bad = await cli([`--allow-read=${dir}`, `--allow-write=${dst}`], [
      "convert",
      "-q",
      `${dir}/missing.qcow2`,
      dst,
    ]);
    assertEquals(bad.code, 1);
    assertStringIncludes(bad.stderr, "does not exist");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli info -q prints nothing and tells by its exit status", async () => {
  const dir = await tempDir();
  try {
    const good = await cli([`--allow-read=${fixture("")}`], [
      "info",
      "-q",
      fixture("v3_64k.qcow2"),
    ]);
    assertEquals([good.code, good.stdout, good.stderr], [0, "", ""]);
    const notImage = `${dir}/plain.txt`;
    await Deno.writeTextFile(notImage, "hello\n");
    const bad = await cli([`--allow-read=${dir}`], ["info", "-q", notImage]);
    assertEquals(bad.code, 1);
    assertEquals(bad.stdout, "");
    assertStringIncludes(bad.stderr, "qcow2 magic");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli -p draws nothing when stderr is not a terminal", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("zlib.qcow2");
    const dst = `${dir}/out.raw`;
    const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
      "convert",
      "-p",
      src,
      dst,
    ]);
    assertEquals([r.code, r.stdout, r.stderr], [0, "", ""]);
    const piped = await cli([`--allow-read=${src}`], [
      "convert",
      "-p",
      src,
      "-",
    ]);
    assertEquals(piped.code, 0);
    assertEquals(piped.stderr, "");
    assertEquals(piped.bytes.length, expected["zlib.qcow2"].virtualSize);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/**
 * Runs the CLI on a pseudo-terminal with util-linux `script` (Linux only):
 * `shell` is a `sh` command line after `deno run --no-prompt FLAGS cli.ts`.
 * Resolves to the exit status and what the terminal showed.
 */
async function cliOnTerminal(flags: string[], shell: string) {
  const cliPath = new URL("../cli.ts", import.meta.url).pathname;
  const command = [Deno.execPath(), "run", "--no-prompt", ...flags, cliPath]
    .map((word) => `'${word}'`).join(" ");
  const { code, stdout } = await new Deno.Command("script", {
    args: ["-qec", `${command} ${shell}`, "/dev/null"],
    stdin: "null",
    stdout: "piped",
    stderr: "inherit",
    env: { NO_COLOR: "1" },
  }).output().catch((e) => {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
    throw new Error("These tests need util-linux 'script' (a pseudo-terminal)");
  });
  return { code, screen: new TextDecoder().decode(stdout) };
}

const onLinux = Deno.build.os === "linux";

Deno.test({
  name:
    "cli -p on a terminal: a bar redrawn with \\r, ended at 100% with a newline",
  ignore: !onLinux,
  fn: async () => {
    const dir = await tempDir();
    try {
      const src = fixture("zlib.qcow2");
      const dst = `${dir}/out.raw`;
      const flags = [`--allow-read=${src}`, `--allow-write=${dst}`];
      const r = await cliOnTerminal(flags, `convert -p '${src}' '${dst}'`);
      assertEquals(r.code, 0, r.screen);
      // The terminal turns "\n" into "\r\n".
      const draws = r.screen.replace(/\r\n$/, "").split("\r").slice(1);
      assert(draws.length >= 1, JSON.stringify(r.screen));
      assert(r.screen.endsWith("\r\n"), JSON.stringify(r.screen));
      for (const draw of draws) {
        assertMatch(draw, /^\[[#-]+\] +\d+\.\d%  +[\d.]+ [KMG]?i?B \/ /);
        assertEquals(draw.length, draws[0].length);
      }
      const last = draws.at(-1)!;
      assertMatch(last, /^\[#+\] 100\.0% +2\.0 MiB \/ +2\.0 MiB .* in \d\.\ds/);
      assertEquals(await sha256File(dst), expected["zlib.qcow2"].sha256);
      // -q wins over -p; without -p nothing is drawn either.
      for (const quiet of ["-q -p", ""]) {
        const q = await cliOnTerminal(
          flags,
          `convert ${quiet} '${src}' '${dst}'`,
        );
        assertEquals([q.code, q.screen], [0, ""], quiet);
      }
      // Stderr redirected away from the terminal: nothing.
      const away = await cliOnTerminal(
        flags,
        `convert -p '${src}' '${dst}' 2>/dev/null`,
      );
      assertEquals([away.code, away.screen], [0, ""]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "cli convert SRC - refuses to write the image to a terminal",
  ignore: !onLinux,
  fn: async () => {
    const src = fixture("zlib.qcow2");
    const r = await cliOnTerminal(
      [`--allow-read=${src}`],
      `convert '${src}' -`,
    );
    assertEquals(r.code, 2, r.screen);
    assertStringIncludes(
      r.screen,
      "refusing to write a raw disk image to a terminal",
    );
    assertStringIncludes(r.screen, "> disk.raw");
  },
});

Deno.test("cli convert SRC - stops quietly when the reader goes away", async () => {
  const src = fixture("sparse_4t.qcow2");
  // -S 0 to stdout streams 4 TiB: the reader leaves after the first chunk.
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--no-prompt",
      `--allow-read=${src}`,
      new URL("../cli.ts", import.meta.url).pathname,
      "convert",
      "-S",
      "0",
      src,
      "-",
    ],
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const stderr = new Response(child.stderr).text();
  const reader = child.stdout.getReader();
  await reader.read();
  await reader.cancel();
  assertEquals((await child.status).code, 141);
  assertEquals(await stderr, "");
});

Deno.test("cli --json and -q: usage errors where they cannot apply", async () => {
  const src = fixture("v3_64k.qcow2");
  for (
    const [args, says] of [
      [["convert", "--json", src, "-"], "DST '-'"],
      [["convert", "-q", "--json", src, "out.raw"], "choose one"],
      [["info", "-q", "--json", src], "choose one"],
    ] as const
  ) {
    const r = await cli([`--allow-read=${src}`], [...args]);
    assertEquals(r.code, 2, r.stderr);
    assertStringIncludes(r.stderr, says);
    assertStringIncludes(r.stderr, `Try 'qcow2 ${args[0]} --help'.`);
  }
});

Deno.test("cli errors say what is wrong and what to do", async () => {
  const dir = await tempDir();
  try {
    const good = fixture("v3_64k.qcow2");
    await Deno.writeTextFile(`${dir}/plain.txt`, "hello\n");
    await Deno.mkdir(`${dir}/sub`);
    await Deno.copyFile(
      fixture("layouts/chain_top.qcow2"),
      `${dir}/top.qcow2`,
    );
    const all = [`--allow-read=${dir},${good}`, `--allow-write=${dir}`];
    const cases: [string[], string[], number, string][] = [
      [
        all,
        ["info", `${dir}/nope.qcow2`],
        1,
        `'${dir}/nope.qcow2' does not exist`,
      ],
      [
        all,
        ["convert", `${dir}/nope.qcow2`, `${dir}/o.raw`],
        1,
        `'${dir}/nope.qcow2' does not exist`,
      ],
      [
        all,
        ["convert", `${dir}/sub`, `${dir}/o.raw`],
        1,
        `${dir}/sub: it is a directory, not an image file`,
      ],
      [
        all,
        ["convert", good, `${dir}/sub`],
        1,
        `Cannot write '${dir}/sub': it is a directory; give DST a file name, such as '${dir}/sub/disk.raw'`,
      ],
      [
        all,
        ["convert", good, `${dir}/none/o.raw`],
        1,
        `Cannot write '${dir}/none/o.raw': its directory '${dir}/none' does not exist; create it first`,
      ],
      // qemu-img: "Could not create '': No such file or directory" and, for
      // a name ending in '/' whose directory is missing, "Is a directory".
      [
        all,
        ["convert", good, ""],
        1,
        "Cannot write '': the file name is empty; give a file name, such as 'disk.raw'",
      ],
      [
        all,
        ["convert", "-O", "qcow2", good, `${dir}/none/`],
        1,
        `Cannot write '${dir}/none/': there is no directory '${dir}/none' (the name ends in '/'); create it, or give DST a file name such as '${dir}/none'`,
      ],
      [
        all,
        ["convert", good, `${dir}/plain.txt/`],
        1,
        `Cannot write '${dir}/plain.txt/': '${dir}/plain.txt' is a file, not a directory (the name ends in '/')`,
      ],
      // -f naming a format the file is not in (qemu-img: "Image is not in
      // qcow2 format"): what it reads as, and what to give instead.
      [
        all,
        ["convert", "-f", "qcow2", `${dir}/plain.txt`, `${dir}/o.raw`],
        1,
        `${dir}/plain.txt: Cannot read qcow2 image: it is not in qcow2 format: it has no qcow or qcow2 magic, so it reads as a raw image; give -f raw\n`,
      ],
      [
        all,
        [
          "convert",
          "-f",
          "qcow2",
          "-O",
          "qcow2",
          `${dir}/plain.txt`,
          `${dir}/o.qcow2`,
        ],
        1,
        `${dir}/plain.txt: Cannot read qcow2 image: it is not in qcow2 format: it has no qcow or qcow2 magic, so it reads as a raw image; give -f raw or leave -f out\n`,
      ],
      [
        all,
        ["convert", `${dir}/plain.txt`, `${dir}/o.raw`],
        1,
        `${dir}/plain.txt: Cannot read qcow2 image: the file does not start with the qcow2 magic 'QFI\\xfb'; if it is a raw image, it needs no conversion (-f raw copies it)\n`,
      ],
      ...[[], ["-f", "qcow2"]].map((
        f,
      ): [string[], string[], number, string] => [
        all,
        ["info", ...f, `${dir}/plain.txt`],
        1,
        `${dir}/plain.txt: Cannot read qcow2 image: the file does not start with the qcow2 magic 'QFI\\xfb', so it reads as a raw image; give -f raw to describe it as one\n`,
      ]),
      [
        all,
        ["convert", `${dir}/top.qcow2`, `${dir}/o.raw`],
        1,
        `Cannot open backing file '${dir}/chain_mid.qcow2' (named by '${dir}/top.qcow2'): '${dir}/chain_mid.qcow2' does not exist; --top converts the top layer alone`,
      ],
      [
        all,
        ["info", "--backing-chain", `${dir}/top.qcow2`],
        1,
        `Cannot open backing file '${dir}/chain_mid.qcow2' (named by '${dir}/top.qcow2'): '${dir}/chain_mid.qcow2' does not exist`,
      ],
      [
        [`--allow-read=${good}`],
        ["convert", good, `${dir}/o.raw`],
        1,
        `no permission for '${dir}/o.raw': run deno with --allow-write=${dir}/o.raw`,
      ],
      [
        [],
        ["convert", "-S", "4x", good, "o.raw"],
        1,
        "Invalid buffer size for sparse output specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
      ],
      [
        [],
        ["convert", "--frob", good, "o.raw"],
        2,
        "unknown option '--frob'\nTry 'qcow2 convert --help'.",
      ],
      [[], ["convert", good], 2, "convert takes SRC and DST (1 given)"],
      [
        [],
        ["frob"],
        2,
        // (the list grows with every command)
        "unknown command 'frob'; the commands are 'info', 'convert', ",
      ],
    ];
    for (const [flags, args, code, message] of cases) {
      const r = await cli(flags, args);
      assertEquals(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      assertStringIncludes(r.stderr, `qcow2: ${message}`);
      assertEquals(r.stdout, "");
      const lines = r.stderr.trim().split("\n").length;
      assertEquals(lines, code === 2 ? 2 : 1, r.stderr);
    }
    // Nothing was left behind by the failed conversions.
    const left: string[] = [];
    for await (const e of Deno.readDir(dir)) left.push(e.name);
    assertEquals(left.sort(), ["plain.txt", "sub", "top.qcow2"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert -S: sizes and refusals as qemu-img's (exit 1, its words)", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("v3_64k.qcow2");
    const dst = `${dir}/o.raw`;
    const perms = [`--allow-read=${src},${dir}`, `--allow-write=${dir}`];
    const suffixes =
      "You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.";
    const multiples =
      "Valid sizes are multiples of 512 up to 16777216. Select 0 to disable sparse detection (fully allocates output).";
    const cases: [string, number, string][] = [
      ["1.5k", 0, ""],
      ["+4k", 0, ""],
      ["0x1000", 0, ""],
      ["512.0", 0, ""],
      ["16M", 0, ""],
      ["-1", 1, suffixes],
      ["", 1, suffixes],
      ["1e3", 1, suffixes],
      ["4kB", 1, suffixes],
      ["1.5", 1, suffixes],
      ["100", 1, multiples],
      ["17M", 1, multiples],
      ["1E", 1, multiples],
      ["8E", 1, "Must be between 0 and 9223372036854775807."],
    ];
    for (const [value, code, says] of cases) {
      const r = await cli(perms, ["convert", "-S", value, src, dst]);
      assertEquals(r.code, code, `-S ${value}: ${r.stderr}`);
      assertEquals(
        r.stderr,
        code === 0
          ? ""
          : `qcow2: Invalid buffer size for sparse output specified. ${says}\n`,
        `-S ${value}`,
      );
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli: a full disk names the file being written (DST, or standard output)", async () => {
  const dir = await tempDir();
  try {
    // A write refused for want of room, as Deno throws it: no path in it.
    const full = () =>
      Object.assign(new Error("No space left on device (os error 28)"), {
        code: "ENOSPC",
      });
    const dst = `${dir}/out.raw`;
    const e = await writeOutput(dst, [], () => Promise.reject(full()))
      .catch((e) => e);
    assertEquals(
      explain(e, "convert"),
      `Cannot write '${dst}': no space left on the device`,
    );
    // Under an image error too (the writer's), and only once named.
    const wrapped = await writeOutput(
      dst,
      [],
      () => Promise.reject(new Error("writing failed", { cause: full() })),
    ).catch((e) => e);
    assertEquals(pathOf(wrapped.cause), dst);
    // Nothing is left behind.
    assertEquals([...Deno.readDirSync(dir)], []);
    // Standard output, full: /dev/full takes no byte.
    if (Deno.build.os === "linux") {
      const src = fixture("v3_64k.qcow2");
      for (const format of ["raw", "qcow2"]) {
        const r = await new Deno.Command("sh", {
          args: [
            "-c",
            `"$0" run --no-prompt --allow-read=${src} cli.ts convert -O ${format} ${src} - > /dev/full`,
            Deno.execPath(),
          ],
          cwd: new URL("..", import.meta.url).pathname,
          stderr: "piped",
          env: { NO_COLOR: "1" },
        }).output();
        assertEquals(
          [r.code, new TextDecoder().decode(r.stderr)],
          [
            1,
            "qcow2: Cannot write standard output: no space left on the device\n",
          ],
          format,
        );
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli --help lists every flag of each command", async () => {
  const top = await cli([], ["--help"]);
  for (const word of ["info", "convert", "-q", "--json", "-p", "--version"]) {
    assertStringIncludes(top.stdout, word);
  }
  const convertHelp = await cli([], ["convert", "--help"]);
  for (
    const flag of ["-O", "-S", "-l", "--top", "-p", "-q, --quiet", "--json"]
  ) {
    assertStringIncludes(convertHelp.stdout, flag);
  }
  const infoHelp = await cli([], ["info", "-h"]);
  for (const flag of ["--json", "--backing-chain", "-q, --quiet"]) {
    assertStringIncludes(infoHelp.stdout, flag);
  }
});

Deno.test("cli convert: SRC a pipe or a character device is refused in one line (it read as an empty disk)", async () => {
  const dir = await tempDir();
  try {
    const raw = await Deno.readFile(fixture("v3_64k.qcow2"));
    for (
      const [src, args] of [
        ["/dev/stdin", ["-O", "qcow2"]],
        ["/dev/stdin", ["-f", "raw", "-O", "qcow2"]],
        ["/dev/stdin", ["-f", "raw"]],
        ["/dev/zero", ["-O", "qcow2"]],
      ] as const
    ) {
      const dst = `${dir}/out.img`;
      const child = new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-prompt",
          // (Deno asks for every access to open /dev/stdin.)
          "--allow-all",
          new URL("../cli.ts", import.meta.url).pathname,
          "convert",
          ...args,
          src,
          dst,
        ],
        stdin: "piped",
        stdout: "piped",
        stderr: "piped",
        env: { NO_COLOR: "1" },
      }).spawn();
      // Standard input is a pipe with an image in it.
      const writer = child.stdin.getWriter();
      await writer.write(raw).catch(() => {});
      await writer.close().catch(() => {});
      const { code, stderr } = await child.output();
      const said = new TextDecoder().decode(stderr);
      assertEquals(code, 1, `${args.join(" ")} ${src}: ${said}`);
      assertMatch(
        said,
        /^qcow2: Cannot read '.*': it is a pipe, a socket or a character device: an image is read at any offset; give a file or a block device\n$/,
      );
      const left: string[] = [];
      for await (const e of Deno.readDir(dir)) left.push(e.name);
      assertEquals(left, []);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
