/**
 * DST is a file the input reads (issue 17, item 3): the refusal names the
 * input and says what DST is to it, and DST is left as it was.
 */
import { assertEquals } from "@std/assert";
import { cli, fixture, sha256File, tempDir } from "./_reference.ts";

Deno.test("cli convert: DST is the input, its backing file, a deeper layer or its data file", async () => {
  const dir = await tempDir();
  try {
    for (
      const name of [
        "chain_top.qcow2",
        "chain_mid.qcow2",
        "chain_base.qcow2",
        "ext_data.qcow2",
        "ext_data.data",
      ]
    ) await Deno.copyFile(fixture(`layouts/${name}`), `${dir}/${name}`);
    const cases: [string, string, string][] = [
      [
        "chain_top.qcow2",
        "chain_mid.qcow2",
        "it is the backing file of the input 'chain_top.qcow2'",
      ],
      [
        "chain_top.qcow2",
        "chain_base.qcow2",
        "it is a file of the backing chain of the input 'chain_top.qcow2' (the backing file of 'chain_mid.qcow2')",
      ],
      [
        "chain_top.qcow2",
        "./chain_top.qcow2",
        "it is the same file as the input 'chain_top.qcow2'",
      ],
      [
        "ext_data.qcow2",
        "ext_data.data",
        "it is the external data file of the input 'ext_data.qcow2'",
      ],
    ];
    for (const [src, dst, says] of cases) {
      const before = await sha256File(`${dir}/${dst}`);
      const { code, stdout, stderr } = await new Deno.Command(Deno.execPath(), {
        args: [
          "run",
          "--no-prompt",
          `--allow-read=${dir}`,
          `--allow-write=${dir}`,
          new URL("../cli.ts", import.meta.url).pathname,
          "convert",
          src,
          dst,
        ],
        cwd: dir,
        stdout: "piped",
        stderr: "piped",
      }).output();
      assertEquals(code, 1);
      assertEquals(stdout.length, 0);
      assertEquals(
        new TextDecoder().decode(stderr),
        `qcow2: refusing to write '${dst}': ${says}\n`,
      );
      assertEquals(await sha256File(`${dir}/${dst}`), before);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert and create: DST a FIFO or a link to a device is refused and left as it was", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("v3_64k.qcow2");
    const fifo = `${dir}/fifo`;
    const device = `${dir}/null`; // a link to /dev/null: it is never touched
    const mkfifo = await new Deno.Command("mkfifo", { args: [fifo] }).output();
    assertEquals(mkfifo.code, 0);
    await Deno.symlink("/dev/null", device);
    const commands = (dst: string) => [
      ["convert", "-O", "qcow2", src, dst],
      ["convert", src, dst],
      ["create", "-f", "qcow2", dst, "1M"],
    ];
    // With the directory: DST would be replaced by a regular file.
    for (const dst of [fifo, device]) {
      for (const args of commands(dst)) {
        const flags = [`--allow-read=${src},${dir}`, `--allow-write=${dir}`];
        const r = await cli(flags, args);
        assertEquals(r.code, 1, args.join(" "));
        assertEquals(
          r.stderr,
          `qcow2: Cannot write '${dst}': it is not a regular file (a device, a FIFO or a socket); give DST a file name\n`,
        );
      }
    }
    // With DST alone (written in place): it would be removed on failure.
    for (const args of commands(device)) {
      const r = await cli(
        [`--allow-read=${src}`, `--allow-write=${device}`],
        args,
      );
      assertEquals(r.code, 1, args.join(" "));
      assertEquals(
        r.stderr,
        `qcow2: Cannot write '${device}': it is not a regular file (a device, a FIFO or a socket); give DST a file name\n`,
      );
    }
    assertEquals((await Deno.lstat(fifo)).isFile, false);
    assertEquals((await Deno.lstat(fifo)).isSymlink, false);
    assertEquals(await Deno.readLink(device), "/dev/null");
    const left = [];
    for await (const entry of Deno.readDir(dir)) left.push(entry.name);
    assertEquals(left.sort(), ["fifo", "null"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert and create: a DST name of up to 255 bytes is written (its temporary name is cut to fit)", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("v3_64k.qcow2");
    const flags = [`--allow-read=${src},${dir}`, `--allow-write=${dir}`];
    // 255 bytes: ASCII, then 2-byte characters (a name is bytes).
    for (
      const base of ["a".repeat(249) + ".qcow2", "é".repeat(124) + ".qcow2"]
    ) {
      assertEquals(new TextEncoder().encode(base).length <= 255, true);
      const dst = `${dir}/${base}`;
      for (
        const args of [
          ["convert", "-O", "qcow2", src, dst],
          ["convert", src, dst],
          ["create", "-f", "qcow2", dst, "1M"],
        ]
      ) {
        const r = await cli(flags, args);
        assertEquals(r.code, 0, `${args[0]}: ${r.stderr}`);
        const left = [];
        for await (const entry of Deno.readDir(dir)) left.push(entry.name);
        assertEquals(left, [base]);
        await Deno.remove(dst);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert: DST a link to SRC, with write access to DST alone, is refused and SRC left whole", async () => {
  const dir = await tempDir();
  try {
    const src = `${dir}/disk.qcow2`;
    await Deno.copyFile(fixture("v3_64k.qcow2"), src);
    const before = await sha256File(src);
    await Deno.symlink("disk.qcow2", `${dir}/link.qcow2`);
    await Deno.link(src, `${dir}/hard.qcow2`);
    for (const dst of [`${dir}/link.qcow2`, `${dir}/hard.qcow2`]) {
      for (
        const args of [["convert", "-O", "qcow2"], ["convert"], [
          "convert",
          "-O",
          "qcow2",
          "-c",
        ]]
      ) {
        const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
          ...args,
          src,
          dst,
        ]);
        assertEquals(r.code, 1, `${args.join(" ")} ${dst}: ${r.stderr}`);
        assertEquals(
          r.stderr,
          `qcow2: refusing to write '${dst}': without read access to it, it cannot be told from the input '${src}', which has its size (a link to it?); allow reading it too (--allow-read=${dst}) or remove it first\n`,
        );
        assertEquals(await sha256File(src), before);
      }
    }
    // An earlier DST of another size is written over, in place, as before.
    const dst = `${dir}/out.qcow2`;
    await Deno.writeTextFile(dst, "an earlier file");
    const r = await cli([`--allow-read=${src}`, `--allow-write=${dst}`], [
      "convert",
      "-O",
      "qcow2",
      src,
      dst,
    ]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals(
      Array.from((await Deno.readFile(dst)).subarray(0, 4)),
      [0x51, 0x46, 0x49, 0xfb], // the qcow2 magic
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
