/**
 * `create` against `qemu-img create -f qcow2`: the same bytes for each
 * option class where QEMU's layout is ours, a clean `check` and the options
 * asked for in `info` everywhere, qemu-io writes that keep `check` clean, and
 * qemu-img's refusals. Without qemu-img, the digests of qemu-img's images
 * (tests/fixtures/create_digests.json, made by make_create_digests.sh).
 */

import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import {
  createImage,
  memoryTarget,
  openImage,
  optionsFromText,
  parseSize,
  resolveCreateOptions,
  splitOptions,
} from "../mod.ts";
import {
  cli,
  createDigests,
  hasQemu,
  hex,
  run,
  tempDir,
} from "./_reference.ts";

/** `-o` text, size, and whether our file is qemu-img's byte for byte. */
const CASES: [string, string, boolean][] = [
  ["", "1G", true],
  ["", "1000", true],
  ["cluster_size=512", "1M", true],
  ["cluster_size=512", "1G", false], // refcount blocks before the L1, not after
  ["cluster_size=4k", "1G", true],
  ["cluster_size=2M", "4T", true],
  ["compat=0.10", "1G", true],
  ["compat=v2,cluster_size=4k", "100M", true],
  ["refcount_bits=1", "1G", true],
  ["refcount_bits=64", "4T", true],
  ["extended_l2=on", "1G", true],
  ["extended_l2=on,cluster_size=2M", "1G", true],
  ["compression_type=zstd", "1G", true],
  ["lazy_refcounts=on", "1G", true],
  ["", "4T", true],
  ["", "2047M", true],
  ["preallocation=metadata", "100M", true],
  ["preallocation=metadata,cluster_size=4k", "3M", true],
  ["preallocation=metadata,extended_l2=on", "1000", true],
  // More than one refcount block: QEMU places each after the allocation
  // that first uses its range, and so do we.
  ["preallocation=metadata,cluster_size=4k", "64M", true],
  ["preallocation=metadata,cluster_size=512", "4M", true],
  ["preallocation=metadata,cluster_size=4k,refcount_bits=64", "20M", true],
  ["preallocation=metadata,cluster_size=1k", "8M", true],
  // The refcount table fills: QEMU moves it (qcow2_refcount_area), and so
  // do we, leaving the old tables' bytes where QEMU leaves them.
  ["preallocation=metadata,cluster_size=512", "16M", true],
  [
    "preallocation=metadata,cluster_size=512,refcount_bits=64",
    "23702016",
    true,
  ],
  // QEMU's truncate: the refcounts after the L1 table, the data in one run,
  // L2 tables in the old table's cluster and after the data.
  ["preallocation=falloc", "1M", true],
  ["preallocation=full,cluster_size=4k", "300k", true],
  ["preallocation=falloc,cluster_size=4k", "64M", true],
  ["preallocation=full,cluster_size=512", "16M", true],
  ["preallocation=falloc,extended_l2=on,cluster_size=16k", "1000000", true],
  // A disk of 0 bytes: no L1 table (offset 0), nothing counted for one.
  ["", "0", true],
  ["compat=0.10,cluster_size=512", "0", true],
  ["preallocation=metadata", "0", true],
  // The table QEMU created first stays in cluster 1: no L2 table took it.
  ["preallocation=falloc", "0", true],
  ["preallocation=full,cluster_size=512,refcount_bits=64", "0", true],
];

const digests = await createDigests();

async function ours(options: string, size: string): Promise<Uint8Array> {
  const target = memoryTarget();
  await createImage(target, {
    ...optionsFromText(splitOptions(options ? [options] : [])),
    size: parseSize(size),
  });
  return target.bytes();
}

Deno.test("create -o preallocation=falloc|full, size 0: the metadata alone, check clean", async () => {
  for (const preallocation of ["falloc", "full"] as const) {
    const target = memoryTarget();
    await createImage(target, { size: 0, preallocation });
    const bytes = target.bytes();
    // The refcount table lies inside the file (it did not, once).
    const view = new DataView(bytes.buffer);
    const tableOffset = Number(view.getBigUint64(48));
    assert(tableOffset + 65536 <= bytes.length, `${preallocation}`);
    if (!hasQemu) continue;
    const dir = await tempDir();
    try {
      await Deno.writeFile(`${dir}/w.qcow2`, bytes);
      await run("qemu-img", ["check", `${dir}/w.qcow2`]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  }
});

for (const [options, size, identical] of CASES) {
  Deno.test(`create -o '${options}' ${size}: ${identical ? "qemu-img's bytes" : "clean"}`, async () => {
    const bytes = await ours(options, size);
    const key = `${options} ${size}`;
    if (!hasQemu) {
      if (identical) {
        assertEquals(
          hex(await crypto.subtle.digest("SHA-256", bytes.slice())),
          digests[key],
        );
      }
      return;
    }
    const dir = await tempDir();
    try {
      const theirs = `${dir}/q.qcow2`;
      const mine = `${dir}/w.qcow2`;
      await run("qemu-img", [
        "create",
        "-q",
        "-f",
        "qcow2",
        ...(options ? ["-o", options] : []),
        theirs,
        size,
      ]);
      await Deno.writeFile(mine, bytes);
      if (identical) assertEquals(bytes, await Deno.readFile(theirs));
      await run("qemu-img", ["check", mine]);
      const info = JSON.parse(
        await run("qemu-img", ["info", "--output=json", mine]),
      );
      const resolved = resolveCreateOptions({
        ...optionsFromText(splitOptions(options ? [options] : [])),
        size: parseSize(size),
      });
      assertEquals(info["virtual-size"], resolved.size);
      assertEquals(info["cluster-size"], resolved.clusterSize);
      const data = info["format-specific"].data;
      assertEquals(data.compat, resolved.compat);
      assertEquals(data["refcount-bits"], resolved.refcountBits);
      assertEquals(data["compression-type"], resolved.compressionType);
      if (resolved.compat === "1.1") {
        assertEquals(data["extended-l2"], resolved.extendedL2);
        assertEquals(data["lazy-refcounts"], resolved.lazyRefcounts);
      }
      // QEMU writes into it, and it stays clean. A disk of 0 bytes is
      // grown first: with no L1 table, the resize makes one (an L1 cluster
      // counted without a table once leaked here).
      let grown = resolved.size;
      if (grown === 0) {
        grown = 3 * 2 ** 20;
        await run("qemu-img", ["resize", "-q", mine, `${grown}`]);
      }
      const tail = Math.min(70000, grown - 65536);
      await run("qemu-io", [
        "-c",
        `write -P 0x5a 0 ${Math.min(65536, grown)}`,
        ...(tail > 0 ? ["-c", `write -P 0xa5 ${grown - tail} ${tail}`] : []),
        mine,
      ]);
      await run("qemu-img", ["check", mine]);
      const image = await openImage(mine);
      const sector = new Uint8Array(Math.min(512, grown));
      await image.read(0, sector);
      image.close();
      assert(sector.every((b) => b === 0x5a));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("create: refusals as qemu-img's, naming the option", () => {
  const refused: [string, string][] = [
    ["compat=0.10,extended_l2=on", "extended_l2"],
    ["compat=0.10,compression_type=zstd", "compression_type"],
    ["compat=0.10,lazy_refcounts=on", "lazy_refcounts"],
    ["compat=0.10,refcount_bits=8", "refcount_bits"],
    ["extended_l2=on,cluster_size=8k", "extended_l2"],
    ["cluster_size=3k", "cluster_size"],
    ["cluster_size=4M", "cluster_size"],
    ["cluster_size=256", "cluster_size"],
    ["refcount_bits=3", "refcount_bits"],
    ["refcount_bits=128", "refcount_bits"],
    ["compression_type=lz4", "compression_type"],
    ["preallocation=some", "preallocation"],
    ["backing_file=b.qcow2", "backing_fmt"],
    [
      "backing_file=b,backing_fmt=qcow2,preallocation=metadata",
      "preallocation",
    ],
    ["encrypt.format=luks,encrypt.key-secret=sec0", "encrypt.format"],
  ];
  for (const [text, name] of refused) {
    const e = assertThrows(
      () =>
        resolveCreateOptions({
          ...optionsFromText(splitOptions([text])),
          size: 1 << 20,
        }),
      RangeError,
    );
    assert(e.message.includes(name), `${text}: ${e.message}`);
  }
  assertThrows(() => splitOptions(["foo=1"]), RangeError, "foo");
  assertThrows(() => splitOptions(["cluster_size"]), RangeError, "name=value");
  assertThrows(
    () => optionsFromText(splitOptions(["extended_l2=maybe"])),
    RangeError,
    "'on' or 'off'",
  );
  assertThrows(
    () => optionsFromText(splitOptions(["cluster_size=abc"])),
    RangeError,
    "cluster_size",
  );
  assertThrows(
    () => resolveCreateOptions({ size: parseSize("4P") }),
    RangeError,
    "too large",
  );
  resolveCreateOptions({ size: parseSize("2P") }); // the largest at 64 KiB
  assertThrows(
    () => resolveCreateOptions({ size: parseSize("1T"), clusterSize: 512 }),
    RangeError,
    "too large",
  );
});

Deno.test("create: sizes as qemu-img reads them", () => {
  assertEquals(parseSize("1000"), 1000);
  assertEquals(parseSize("1k"), 1024);
  assertEquals(parseSize("1K"), 1024);
  assertEquals(parseSize("1b"), 1);
  assertEquals(parseSize("1.5G"), 1610612736);
  assertEquals(parseSize("64T"), 70368744177664);
  // qemu_strtosz: leading blanks and '+', hex (with a suffix in 7.2),
  // "1." and "1.0", fractions rounded to the nearest byte.
  assertEquals(parseSize("+5M"), 5242880);
  assertEquals(parseSize(" 5M"), 5242880);
  assertEquals(parseSize("0x10"), 16);
  assertEquals(parseSize("0x1k"), 1024);
  assertEquals(parseSize("1."), 1);
  assertEquals(parseSize("1.0"), 1);
  assertEquals(parseSize("1.0004883k"), 1025);
  assertEquals(parseSize("1.000488k"), 1024);
  for (
    const bad of [
      "-1",
      "abc",
      "1e3",
      "4E-1",
      "1.5e3k",
      "1M5",
      "",
      "5M ",
      "4kB",
      "0x1.8k",
      "8E",
      "16E",
      "1.5",
      "8P", // 2^53: more than this library handles
    ]
  ) {
    assertThrows(() => parseSize(bad), RangeError, undefined, bad);
  }
  assertEquals(resolveCreateOptions({ size: 513 }).size, 1024);
});

/**
 * SIZE and -o size= as qemu-img 7.2 takes them: [options, SIZE, exit
 * status, the size of the Formatting line (none: not printed), what stderr
 * says]; the last item says that qemu-img's exit status differs (0: it
 * makes images of 2^53 bytes and more, which we do not).
 */
const SIZE_CASES: [string[], string | undefined, number, string, string][] = [
  [
    [],
    "1E",
    1,
    "1152921504606846976",
    "The image size is too large for file format 'qcow2' (try using a larger cluster size)",
  ],
  [
    [],
    "8E",
    1,
    "",
    "Invalid image size '8E' specified. Must be between 0 and 9223372036854775807.",
  ],
  [[], "+5M", 0, "5242880", ""],
  [[], "1e3", 1, "", "Invalid image size '1e3'"],
  [[], "4E-1", 1, "", "Invalid image size '4E-1'"],
  [[], "0x10", 0, "16", ""],
  [[], "5M ", 1, "", "Invalid image size '5M '"],
  [[], "1.0004883k", 0, "1025", ""],
  [
    ["-o", "size=1E"],
    undefined,
    1,
    "1152921504606846976",
    "The image size is too large for file format 'qcow2'",
  ],
  [
    ["-o", "size=16E"],
    undefined,
    1,
    "",
    "Value '16E' is out of range for parameter 'size'",
  ],
  [
    ["-o", "size=1e3"],
    undefined,
    1,
    "",
    "Parameter 'size' expects a non-negative number",
  ],
  [["-o", "size=+5M"], undefined, 0, "5242880", ""],
  [
    ["-o", "size=1M"],
    "2M",
    1,
    "",
    "The image size must be specified only once",
  ],
  [
    ["-o", "size=1M"],
    "1M",
    1,
    "",
    "The image size must be specified only once",
  ],
  [["-o", "size=1M,size=2M"], undefined, 0, "2097152", ""],
];

Deno.test("create: SIZE and -o size= read, refused and said as qemu-img does", async () => {
  const dir = await tempDir();
  try {
    const perms = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    const file = `${dir}/s.qcow2`;
    const cases = [
      ...SIZE_CASES.map((c) => [...c, undefined] as const),
      // qemu-img makes this one (exit 0); 2^60 bytes are beyond us.
      [
        ["-o", "cluster_size=2M"],
        "1E",
        1,
        "1152921504606846976",
        "is more than this implementation handles",
        0,
      ] as const,
    ];
    for (const [options, size, code, shown, says, qemuCode] of cases) {
      const args = [...options, file, ...(size === undefined ? [] : [size])];
      const what = `create ${args.join(" ")}`;
      const ours = await cli(perms, ["create", ...args]);
      assertEquals(ours.code, code, `${what}: ${ours.stderr}`);
      const size_ = ours.stdout.match(/ size=(\d+) /)?.[1] ?? "";
      assertEquals(size_, shown, `${what}: ${ours.stdout}`);
      assert(ours.stderr.includes(says), `${what}: ${ours.stderr}`);
      assertEquals(ours.stderr.split("\n").length, code === 0 ? 1 : 2, what);
      await Deno.remove(file).catch(() => {});
      if (!hasQemu) continue;
      const theirs = await new Deno.Command("qemu-img", {
        args: ["create", "-f", "qcow2", ...args],
      }).output();
      const theirSize =
        new TextDecoder().decode(theirs.stdout).match(/ size=(\d+) /)?.[1] ??
          "";
      assertEquals(theirs.code, qemuCode ?? code, `qemu-img ${what}`);
      assertEquals(theirSize, shown, `qemu-img ${what}`);
      await Deno.remove(file).catch(() => {});
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("create: the CLI prints qemu-img's Formatting line, makes the file, and refuses in one line", async () => {
  const dir = await tempDir();
  try {
    const perms = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    const made = await cli(perms, [
      "create",
      "-o",
      "cluster_size=4k,compat=v2",
      `${dir}/a.qcow2`,
      "100M",
    ]);
    assertEquals(made.code, 0, made.stderr);
    assertEquals(
      made.stdout,
      `Formatting '${dir}/a.qcow2', fmt=qcow2 cluster_size=4096 extended_l2=off compression_type=zlib size=104857600 compat=v2 lazy_refcounts=off refcount_bits=16\n`,
    );
    // -b without SIZE: the backing file's size; the name is relative to FILE.
    const over = await cli(perms, [
      "create",
      "-q",
      "-b",
      "a.qcow2",
      "-F",
      "qcow2",
      `${dir}/b.qcow2`,
    ]);
    assertEquals([over.code, over.stdout, over.stderr], [0, "", ""]);
    const image = await openImage(`${dir}/b.qcow2`, {
      openFile: async (p) =>
        await Deno.open(p).then((f) => ({
          size: f.statSync().size,
          readAt: async (pos: number, buf: Uint8Array) => {
            await f.seek(pos, Deno.SeekMode.Start);
            return (await f.read(buf)) ?? 0;
          },
          close: () => f.close(),
        })),
    });
    assertEquals(image.size, 100 * 1024 * 1024);
    image.close();
    if (hasQemu) {
      const info = JSON.parse(
        await run("qemu-img", ["info", "--output=json", `${dir}/b.qcow2`]),
      );
      assertEquals(info["backing-filename"], "a.qcow2");
      assertEquals(info["backing-filename-format"], "qcow2");
    }
    const fails: [string[], number, string][] = [
      [
        ["-b", "missing.qcow2", "-F", "qcow2", `${dir}/c.qcow2`],
        1,
        "missing.qcow2",
      ],
      [["-b", "a.qcow2", `${dir}/c.qcow2`, "1M"], 1, "backing format"],
      [["-b", "m.qcow2", "-F", "qcow2", "-u", `${dir}/c.qcow2`], 2, "size"],
      [
        ["-o", "compat=0.10,lazy_refcounts=on", `${dir}/c.qcow2`, "1M"],
        1,
        "lazy_refcounts",
      ],
      [["-o", "bogus=1", `${dir}/c.qcow2`, "1M"], 1, "bogus"],
      [[`${dir}/c.qcow2`, "12Q"], 1, "Invalid image size"],
      // A negative size, not an unknown option '-5' (exit 1, qemu-img's).
      [[`${dir}/c.qcow2`, "-5"], 1, "Invalid image size '-5'"],
      [["-5k", `${dir}/c.qcow2`], 1, "Invalid image size '-5k'"],
      [[`${dir}/c.qcow2`, "4P"], 1, "too large"],
      [["-f", "vmdk", `${dir}/c.qcow2`, "1M"], 2, "vmdk"],
      [["-b", "a.qcow2", "-F", "qcow2", `${dir}/a.qcow2`], 1, "same file"],
    ];
    for (const [args, code, says] of fails) {
      const r = await cli(perms, ["create", "-q", ...args]);
      assertEquals(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      assert(r.stderr.includes(says), `${args.join(" ")}: ${r.stderr}`);
      assert(!r.stderr.includes("    at "), r.stderr);
      assertEquals(r.stderr.trim().split("\n")[0].startsWith("qcow2: "), true);
    }
    // Nothing left behind by the failures; the refused DST is untouched.
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(names, ["a.qcow2", "b.qcow2"]);
    const help = await cli(perms, ["create", "-o", "help"]);
    assert(help.stdout.includes("refcount_bits=<num>"));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("create: a seekable file is emptied first", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/x.qcow2`;
    await Deno.writeFile(path, new Uint8Array(1 << 20).fill(1));
    using file = await Deno.open(path, { write: true, read: true });
    const made = await createImage(file, { size: 1 << 20 });
    assertEquals((await Deno.stat(path)).size, made.fileSize);
    await assertRejects(
      () => createImage(file, { size: -1 }),
      RangeError,
      "Invalid image size",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
