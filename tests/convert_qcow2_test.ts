/**
 * `convert -O qcow2` against qemu-img: for each source kind and option
 * class, the output passes `qemu-img check` (0 errors, 0 leaks), `compare`
 * finds it identical to its source, `info` shows the options asked for, and
 * QEMU can write into it. Then `-B`, the stream to stdout, reproducibility
 * with any number of workers, compressed size against qemu-img's, a random
 * round trip, and the refusals.
 */

import { assert, assertEquals, assertRejects } from "@std/assert";
import {
  convertToQcow2,
  type ConvertToQcow2Options,
  memoryTarget,
  openImage,
  optionsFromText,
  Qcow2Error,
  splitOptions,
} from "../mod.ts";
import { workerCompressors } from "../native/compress_pool.ts";
import {
  cli,
  convertToFileAndStream,
  createDigests,
  fixture,
  hasQemu,
  hex,
  run,
  tempDir,
} from "./_reference.ts";
import { prng } from "./_synth.ts";

/**
 * In `dir`: `base.qcow2` (`size`, every byte `pattern`; made once) and a
 * new `top.qcow2` over it by its relative name (`options` for its create),
 * written with qemu-io's `writes`. Returns top's path.
 */
async function backedTop(
  dir: string,
  writes: string[] = [],
  { size = "4M", pattern = "0x33", options = [] as string[] } = {},
): Promise<string> {
  const base = `${dir}/base.qcow2`;
  const top = `${dir}/top.qcow2`;
  if (!(await Deno.stat(base).then(() => true, () => false))) {
    await run("qemu-img", ["create", "-q", "-f", "qcow2", base, size]);
    await run("qemu-io", ["-c", `write -P ${pattern} 0 ${size}`, base]);
  }
  await run("qemu-img", [
    "create",
    "-q",
    "-f",
    "qcow2",
    ...options,
    "-b",
    "base.qcow2",
    "-F",
    "qcow2",
    top,
  ]);
  if (writes.length > 0) {
    await run("qemu-io", [...writes.flatMap((w) => ["-c", w]), top]);
  }
  return top;
}

/** Source fixtures, and the snapshot to read (`-l`). */
const SOURCES: [string, string?][] = [
  ["v3_64k.qcow2"],
  ["zlib.qcow2"],
  ["zstd.qcow2"],
  ["odd_size.qcow2"],
  ["c512.qcow2"],
  ["layouts/chain_top.qcow2"],
  ["layouts/snap.qcow2", "first"],
  ["sparse_4t.qcow2"],
];

/** `-o` text and conversion options, by name. */
const OPTION_SETS: [string, string, ConvertToQcow2Options][] = [
  ["defaults", "", {}],
  ["512 B clusters", "cluster_size=512", {}],
  ["4 KiB clusters", "cluster_size=4k", {}],
  ["2 MiB clusters, extended L2", "cluster_size=2M,extended_l2=on", {}],
  ["compat 0.10", "compat=0.10", {}],
  ["refcount_bits 1", "refcount_bits=1", {}],
  ["refcount_bits 64", "refcount_bits=64", {}],
  ["extended L2", "extended_l2=on", {}],
  ["-c zlib", "", { compress: true }],
  ["-c zstd, 4 KiB clusters", "compression_type=zstd,cluster_size=4k", {
    compress: true,
  }],
  ["-c, refcount_bits 1", "refcount_bits=1", { compress: true }],
  ["-S 0", "", { sparseSize: 0 }],
  ["lazy refcounts", "lazy_refcounts=on", {}],
];

/** The reference raw image of a source (a snapshot's state with -l). */
async function reference(
  dir: string,
  src: string,
  snapshot?: string,
): Promise<string> {
  if (!snapshot) return src;
  const raw = `${dir}/ref.raw`;
  await run("qemu-img", [
    "convert",
    "-l",
    `snapshot.name=${snapshot}`,
    "-O",
    "raw",
    src,
    raw,
  ]);
  return raw;
}

/** Checks what qemu-img says of `out`: clean, identical to `ref`, the options shown. */
async function verify(
  out: string,
  ref: string,
  options: ConvertToQcow2Options,
): Promise<void> {
  await run("qemu-img", ["check", out]);
  const compare = await run("qemu-img", ["compare", ref, out]);
  assertEquals(compare.trim(), "Images are identical.");
  const info = JSON.parse(
    await run("qemu-img", ["info", "--output=json", out]),
  );
  assertEquals(info["cluster-size"], options.clusterSize ?? 65536);
  const data = info["format-specific"].data;
  assertEquals(data.compat, options.compat ?? "1.1");
  assertEquals(data["refcount-bits"], options.refcountBits ?? 16);
  assertEquals(data["compression-type"], options.compressionType ?? "zlib");
  if ((options.compat ?? "1.1") === "1.1") {
    assertEquals(data["extended-l2"], options.extendedL2 ?? false);
    assertEquals(data["lazy-refcounts"], options.lazyRefcounts ?? false);
  }
}

for (const [name, snapshot] of SOURCES) {
  for (const [label, text, extra] of OPTION_SETS) {
    if (name === "sparse_4t.qcow2" && /512|-S 0/.test(label)) continue;
    Deno.test({
      name: `convert -O qcow2 ${name}${
        snapshot ? ` -l ${snapshot}` : ""
      }, ${label}`,
      ignore: !hasQemu,
      fn: async () => {
        const dir = await tempDir();
        try {
          const options: ConvertToQcow2Options = {
            ...optionsFromText(splitOptions(text ? [text] : [])),
            ...extra,
          };
          const out = `${dir}/out.qcow2`;
          {
            using file = await Deno.open(out, {
              write: true,
              create: true,
              read: true,
            });
            await convertToQcow2(fixture(name), file, { ...options, snapshot });
          }
          await verify(
            out,
            await reference(dir, fixture(name), snapshot),
            options,
          );
        } finally {
          await Deno.remove(dir, { recursive: true });
        }
      },
    });
  }
}

Deno.test({
  name: "convert -O qcow2: QEMU writes into our images and check stays clean",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      for (
        const [text, extra] of [
          ["", { compress: true }],
          ["cluster_size=512,refcount_bits=1", {}],
          ["extended_l2=on", {}],
          ["compat=0.10", { compress: true }],
        ] as [string, ConvertToQcow2Options][]
      ) {
        const out = `${dir}/w.qcow2`;
        {
          using file = await Deno.open(out, {
            write: true,
            create: true,
            read: true,
            truncate: true,
          });
          await convertToQcow2(fixture("zlib.qcow2"), file, {
            ...optionsFromText(splitOptions(text ? [text] : [])),
            ...extra,
          });
        }
        await run("qemu-io", [
          "-c",
          "write -P 0x11 4096 200k",
          "-c",
          "write -z 1m 64k",
          "-c",
          "discard 0 4k",
          out,
        ]);
        await run("qemu-img", ["check", out]);
        const image = await openImage(out);
        const bytes = new Uint8Array(4096);
        await image.read(8192, bytes);
        image.close();
        assert(bytes.every((b) => b === 0x11), text);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "convert -O qcow2 -B with clusters larger than the source's: a cluster the top layer zeroes in part keeps the backing file's bytes around them",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      // 64 KiB of zero clusters inside the second 2 MiB cluster, nothing
      // else there in the top layer: the rest shows the backing file.
      await backedTop(dir, ["write -z 2m 64k"]);
      for (const extra of [[], ["-o", "compat=0.10"], ["-c"]]) {
        const ours = `${dir}/ours.qcow2`;
        const r = await cli([`--allow-read=${dir}`, `--allow-write=${dir}`], [
          "convert",
          "-O",
          "qcow2",
          "-o",
          "cluster_size=2M",
          ...extra,
          "-B",
          "base.qcow2",
          "-F",
          "qcow2",
          `${dir}/top.qcow2`,
          ours,
        ]);
        assertEquals(r.code, 0, r.stderr);
        await run("qemu-img", ["check", ours]);
        assertEquals(
          (await run("qemu-img", ["compare", `${dir}/top.qcow2`, ours])).trim(),
          "Images are identical.",
          extra.join(" "),
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "convert -O qcow2 -B with extended L2: only the subclusters the top layer touches, its zeros as zero subclusters; size and map as qemu-img's",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      const sh = (args: string[]) => run(args[0], args.slice(1));
      // Tops: extended L2 like the output, then plain 64 KiB clusters.
      const tops: [string[], string[]][] = [
        [["-o", "extended_l2=on"], [
          "write -P 0x22 4k 4k",
          "write -z 128k 8k", // zero subclusters alone: no host cluster
          "write -P 0x33 1M 100k", // the file ends in the middle of a cluster
          "write -z 2M 64k",
          "write -z 3M 1k", // part of a subcluster: read and written whole
        ]],
        [[], [
          "write -P 0x44 64k 64k",
          "write -z 512k 128k",
          "write -P 0x55 5M 64k",
        ]],
      ];
      for (const [createOptions, writes] of tops) {
        const top = await backedTop(dir, writes, {
          size: "8M",
          pattern: "0x11",
          options: createOptions,
        });
        for (const extra of [[], ["-o", "cluster_size=2M"], ["-c"]]) {
          const args = [
            "convert",
            "-O",
            "qcow2",
            "-o",
            "extended_l2=on",
            ...extra,
            "-B",
            "base.qcow2",
            "-F",
            "qcow2",
            top,
          ];
          const ours = `${dir}/ours.qcow2`;
          const theirs = `${dir}/theirs.qcow2`;
          const r = await cli([`--allow-read=${dir}`, `--allow-write=${dir}`], [
            ...args,
            ours,
          ]);
          assertEquals(r.code, 0, r.stderr);
          await sh(["qemu-img", ...args, theirs]);
          const what = `${createOptions.join(" ")} ${extra.join(" ")}`;
          await sh(["qemu-img", "check", ours]);
          assertEquals(
            (await sh(["qemu-img", "compare", top, ours])).trim(),
            "Images are identical.",
            what,
          );
          assertEquals(
            (await Deno.stat(ours)).size,
            (await Deno.stat(theirs)).size,
            what,
          );
          if (extra[0] !== "-c") {
            assertEquals(
              await sh(["qemu-img", "map", "--output=json", ours]),
              await sh(["qemu-img", "map", "--output=json", theirs]),
              what,
            );
          }
          // The same image streamed to standard output (-B by its full
          // name: there is no DST directory to resolve it from).
          const streamed = await cli(
            [`--allow-read=${dir}`],
            args.map((a) => a === "base.qcow2" ? `${dir}/base.qcow2` : a)
              .concat("-"),
          );
          assertEquals(streamed.code, 0, streamed.stderr);
          const stream = `${dir}/streamed.qcow2`;
          await Deno.writeFile(stream, streamed.bytes);
          await sh(["qemu-img", "check", stream]);
          assertEquals(
            streamed.bytes.length,
            (await Deno.stat(ours)).size,
            what,
          );
          assertEquals(
            await sh(["qemu-img", "map", "--output=json", stream]),
            await sh(["qemu-img", "map", "--output=json", ours]),
            what,
          );
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "convert -O qcow2 -B -S 0: the top layer's zeros are written as data, as qemu-img's (-S 0 allocates)",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      await backedTop(dir, ["write -P 0x44 0 64k", "write -z 1m 128k"]);
      const args = [
        "convert",
        "-O",
        "qcow2",
        "-S",
        "0",
        "-B",
        "base.qcow2",
        "-F",
        "qcow2",
        `${dir}/top.qcow2`,
      ];
      const r = await cli(
        [`--allow-read=${dir}`, `--allow-write=${dir}`],
        [...args, `${dir}/ours.qcow2`],
      );
      assertEquals(r.code, 0, r.stderr);
      await run("qemu-img", [...args, `${dir}/theirs.qcow2`], dir);
      await run("qemu-img", ["check", `${dir}/ours.qcow2`]);
      assertEquals(
        (await run("qemu-img", [
          "compare",
          `${dir}/top.qcow2`,
          `${dir}/ours.qcow2`,
        ])).trim(),
        "Images are identical.",
      );
      const map = async (name: string) =>
        (JSON.parse(
          await run("qemu-img", ["map", "--output=json", `${dir}/${name}`]),
        ) as Record<string, unknown>[]).map(({ offset: _, ...e }) => e);
      assertEquals(await map("ours.qcow2"), await map("theirs.qcow2"));
      assertEquals(
        (await Deno.stat(`${dir}/ours.qcow2`)).size,
        (await Deno.stat(`${dir}/theirs.qcow2`)).size,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "convert -O qcow2 -B: only the top layer, no larger than qemu-img's, and zeros hide the backing",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      await backedTop(dir, [
        "write -P 0x44 64k 100k",
        "write -z 1m 128k",
        "write -P 0 2m 64k",
      ]);
      for (const compat of ["1.1", "0.10"]) {
        const ours = `${dir}/ours.qcow2`;
        const theirs = `${dir}/theirs.qcow2`;
        const r = await cli([`--allow-read=${dir}`, `--allow-write=${dir}`], [
          "convert",
          "-O",
          "qcow2",
          "-o",
          `compat=${compat}`,
          "-B",
          "base.qcow2",
          "-F",
          "qcow2",
          `${dir}/top.qcow2`,
          ours,
        ]);
        assertEquals(r.code, 0, r.stderr);
        await run("qemu-img", [
          "convert",
          "-O",
          "qcow2",
          "-o",
          `compat=${compat}`,
          "-B",
          "base.qcow2",
          "-F",
          "qcow2",
          `${dir}/top.qcow2`,
          theirs,
        ], dir);
        await run("qemu-img", ["check", ours]);
        assertEquals(
          (await run("qemu-img", ["compare", `${dir}/top.qcow2`, ours])).trim(),
          "Images are identical.",
        );
        const info = JSON.parse(
          await run("qemu-img", ["info", "--output=json", ours]),
        );
        assertEquals(info["backing-filename"], "base.qcow2");
        const [a, b] = [
          (await Deno.stat(ours)).size,
          (await Deno.stat(theirs)).size,
        ];
        assert(
          a <= b * 1.01,
          `compat ${compat}: ours ${a} bytes, qemu-img's ${b}`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "convert -O qcow2 to stdout: a complete image, front to back, the same as to a file (with -c, packed in file order)",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      for (
        const args of [[], ["-c"], [
          "-c",
          "-o",
          "compression_type=zstd,cluster_size=4k",
        ]]
      ) {
        const src = fixture("zlib.qcow2");
        const r = await cli([`--allow-read=${src}`], [
          "convert",
          "-O",
          "qcow2",
          ...args,
          src,
          "-",
        ]);
        assertEquals(r.code, 0, r.stderr);
        await Deno.writeFile(`${dir}/s.qcow2`, r.bytes);
        await run("qemu-img", ["check", `${dir}/s.qcow2`]);
        assertEquals(
          (await run("qemu-img", ["compare", src, `${dir}/s.qcow2`])).trim(),
          "Images are identical.",
        );
        const f = await cli([
          `--allow-read=${dir},${src}`,
          `--allow-write=${dir}`,
        ], [
          "convert",
          "-O",
          "qcow2",
          ...args,
          src,
          `${dir}/f.qcow2`,
        ]);
        assertEquals(f.code, 0, f.stderr);
        const file = await Deno.readFile(`${dir}/f.qcow2`);
        if (args.includes("-c")) {
          // A file goes on in a partly filled host cluster after an L2
          // table or an uncompressed cluster, as QEMU packs; a pipe cannot
          // go back, so the stream starts a new one: never smaller.
          assert(r.bytes.length >= file.length, args.join(" "));
          await run("qemu-img", ["check", `${dir}/f.qcow2`]);
        } else assertEquals(r.bytes, file, args.join(" "));
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("convert -O qcow2 -c: the same bytes with 1, 2 and 3 workers and on the calling thread", async () => {
  const raw = new Uint8Array(3 * 1024 * 1024);
  raw.set(prng(1024 * 1024, 7), 0); // incompressible: stored uncompressed
  for (let i = 1024 * 1024; i < raw.length - 65536; i++) {
    raw[i] = (i * 31) % 7 === 0 ? i & 0xff : 0x20;
  }
  const digests = new Set<string>();
  for (const workers of [0, 1, 2, 3]) {
    for (const compressionType of ["zlib", "zstd"] as const) {
      const pool = workerCompressors({ workers });
      try {
        const target = memoryTarget();
        await convertToQcow2(raw, target, {
          compress: true,
          compressionType,
          codecs: { compress: pool },
          clusterSize: 16384,
        });
        const digest = await crypto.subtle.digest(
          "SHA-256",
          target.bytes().slice(),
        );
        digests.add(`${compressionType} ${new Uint8Array(digest).join(",")}`);
        const image = await openImage(target.bytes());
        const back = new Uint8Array(raw.length);
        await image.read(0, back);
        assertEquals(back, raw);
      } finally {
        pool.close();
      }
    }
  }
  assertEquals(digests.size, 2); // one image per compression type
});

Deno.test({
  name: "convert -O qcow2 -c: file size within 1% of qemu-img's",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      // Text-like data in 64 KiB clusters, some incompressible.
      const raw = new Uint8Array(8 * 1024 * 1024);
      const words = [
        "qcow2 ",
        "cluster ",
        "refcount ",
        "L2 table ",
        "zlib ",
        "\n",
      ];
      const rand = prng(raw.length, 3);
      for (let i = 0, w = 0; i < 6 * 1024 * 1024; w++) {
        const word = words[rand[w % rand.length] % words.length];
        for (let k = 0; k < word.length && i < raw.length; k++) {
          raw[i++] = word.charCodeAt(k);
        }
      }
      raw.set(prng(1024 * 1024, 9), 7 * 1024 * 1024);
      await Deno.writeFile(`${dir}/in.raw`, raw);
      for (const type of ["zlib", "zstd"]) {
        const ours = `${dir}/ours.qcow2`;
        const r = await cli([`--allow-read=${dir}`, `--allow-write=${dir}`], [
          "convert",
          "-O",
          "qcow2",
          "-c",
          "-o",
          `compression_type=${type}`,
          `${dir}/in.raw`,
          ours,
        ]);
        assertEquals(r.code, 0, r.stderr);
        await run("qemu-img", [
          "convert",
          "-O",
          "qcow2",
          "-c",
          "-o",
          `compression_type=${type}`,
          `${dir}/in.raw`,
          `${dir}/theirs.qcow2`,
        ]);
        await run("qemu-img", ["check", ours]);
        const a = (await Deno.stat(ours)).size;
        const b = (await Deno.stat(`${dir}/theirs.qcow2`)).size;
        assert(
          Math.abs(a - b) <= b * 0.01,
          `${type}: ours ${a} bytes, qemu-img's ${b}`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "convert -O qcow2: a random round trip (random data and options, read back by us and qemu-img)",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      const seed = Number(
        Deno.env.get("ROUND_TRIP_SEED") ?? Date.now() % 100000,
      );
      const rand = prng(4096, seed);
      let r = 0;
      const pick = <T>(xs: T[]): T => xs[rand[r++ % rand.length] % xs.length];
      for (let round = 0; round < 6; round++) {
        const size = 512 * (1 + ((rand[r++] << 8 | rand[r++]) % 8192));
        const raw = new Uint8Array(size);
        for (let k = 0; k < 12; k++) {
          const at = Math.floor((rand[r++ % 4096] / 256) * size);
          const len = Math.min(size - at, 1 + (rand[r++ % 4096] << 6));
          raw.set(
            pick([prng(len, seed + k), new Uint8Array(len).fill(0x61)]),
            at,
          );
        }
        const compat = pick(["0.10", "1.1"] as const);
        const options: ConvertToQcow2Options = {
          clusterSize: pick([512, 1024, 4096, 16384, 65536, 2097152]),
          compat,
          refcountBits: compat === "0.10" ? 16 : pick([1, 2, 8, 16, 32, 64]),
          compress: pick([false, true]),
          compressionType: compat === "0.10"
            ? "zlib"
            : pick(["zlib", "zstd"] as const),
          sparseSize: pick([0, 4096, 512, 65536]),
        };
        if (compat === "1.1" && options.clusterSize! >= 16384) {
          options.extendedL2 = pick([false, true]);
        }
        const target = memoryTarget();
        await convertToQcow2(raw, target, options);
        const image = await openImage(target.bytes());
        const back = new Uint8Array(size);
        await image.read(0, back);
        image.close();
        const what = `seed ${seed} round ${round}: ${JSON.stringify(options)}`;
        assertEquals(back, raw, what);
        await Deno.writeFile(`${dir}/in.raw`, raw);
        await Deno.writeFile(`${dir}/out.qcow2`, target.bytes());
        await run("qemu-img", ["check", `${dir}/out.qcow2`]).catch((e) =>
          Promise.reject(new Error(`${what}: ${e}`))
        );
        assertEquals(
          (await run("qemu-img", [
            "compare",
            `${dir}/in.raw`,
            `${dir}/out.qcow2`,
          ])).trim(),
          "Images are identical.",
          what,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("convert -O qcow2: refusals in one line, nothing left under DST, an earlier DST untouched", async () => {
  const dir = await tempDir();
  try {
    const src = `${dir}/src.qcow2`;
    await Deno.copyFile(fixture("layouts/chain_top.qcow2"), src);
    await Deno.copyFile(
      fixture("layouts/chain_mid.qcow2"),
      `${dir}/chain_mid.qcow2`,
    );
    await Deno.copyFile(
      fixture("layouts/chain_base.qcow2"),
      `${dir}/chain_base.qcow2`,
    );
    await Deno.writeTextFile(`${dir}/old.qcow2`, "keep me");
    const perms = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    const fails: [string[], number, string][] = [
      [["-O", "qcow2", src, src], 1, "same file"],
      [["-O", "qcow2", src, `${dir}/chain_base.qcow2`], 1, "backing chain"],
      [
        [
          "-O",
          "qcow2",
          "-B",
          "old.qcow2",
          "-F",
          "qcow2",
          src,
          `${dir}/old.qcow2`,
        ],
        1,
        "old.qcow2",
      ],
      [
        [
          "-O",
          "qcow2",
          "-o",
          "compat=0.10,extended_l2=on",
          src,
          `${dir}/old.qcow2`,
        ],
        1,
        "extended_l2",
      ],
      [
        ["-O", "qcow2", "-o", "cluster_size=3k", src, `${dir}/new.qcow2`],
        1,
        "cluster_size",
      ],
      [
        [
          "-O",
          "qcow2",
          "-c",
          "-o",
          "preallocation=metadata",
          src,
          `${dir}/new.qcow2`,
        ],
        1,
        "preallocation",
      ],
      [
        ["-O", "qcow2", "-B", "base.qcow2", src, `${dir}/new.qcow2`],
        1,
        "backing format",
      ],
      [
        ["-O", "qcow2", `${dir}/missing.qcow2`, `${dir}/new.qcow2`],
        1,
        "missing.qcow2",
      ],
      [["-O", "vmdk", src, `${dir}/new.qcow2`], 2, "vmdk"],
      [["-c", src, `${dir}/new.raw`], 2, "-O qcow2"],
    ];
    for (const [args, code, says] of fails) {
      const r = await cli(perms, ["convert", ...args]);
      assertEquals(r.code, code, `${args.join(" ")}: ${r.stderr}`);
      assert(r.stderr.includes(says), `${args.join(" ")}: ${r.stderr}`);
      assert(!r.stderr.includes("    at "), r.stderr);
    }
    assertEquals(await Deno.readTextFile(`${dir}/old.qcow2`), "keep me");
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assertEquals(names, [
      "chain_base.qcow2",
      "chain_mid.qcow2",
      "old.qcow2",
      "src.qcow2",
    ]);
    // A source damaged in its data: the conversion fails, DST keeps its old content.
    const bad = new Uint8Array(await Deno.readFile(fixture("zlib.qcow2")));
    bad.fill(0xff, 0x50000, 0x50000 + 512); // the first compressed cluster
    await Deno.writeFile(`${dir}/bad.qcow2`, bad);
    const r = await cli(perms, [
      "convert",
      "-O",
      "qcow2",
      `${dir}/bad.qcow2`,
      `${dir}/old.qcow2`,
    ]);
    assertEquals(r.code, 1, r.stderr);
    assertEquals(await Deno.readTextFile(`${dir}/old.qcow2`), "keep me");
    assertEquals([...Deno.readDirSync(dir)].length, 5);
    await assertRejects(
      () =>
        convertToQcow2(fixture("zlib.qcow2"), memoryTarget(), {
          compress: true,
          codecs: { compress: {} },
        }),
      Qcow2Error,
      "no zlib compressor",
    );
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name:
    "convert -O qcow2 -S, extended L2: qemu-img's bytes (runs aligned, short zero gaps written, subclusters as qemu-img allocates them), to a file and to a pipe",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      // 60 runs of 1 to 3000 non-zero bytes over 4 MiB of zeros.
      const raw = new Uint8Array(4 * 1024 * 1024);
      const rand = prng(240, 5);
      for (let k = 0; k < 60; k++) {
        const at = ((rand[4 * k] << 16) | (rand[4 * k + 1] << 8) |
          rand[4 * k + 2]) % (raw.length - 3000);
        raw.fill(0x41, at, at + [1, 100, 600, 3000][rand[4 * k + 3] % 4]);
      }
      await Deno.writeFile(`${dir}/sp.raw`, raw);
      for (
        const [options, sparse] of [
          ["cluster_size=4k", "64k"],
          ["cluster_size=64k", "4k"],
          ["cluster_size=16k", "64k"],
          ["cluster_size=4k", "12k"],
          ["cluster_size=64k", "1M"],
          ["cluster_size=64k", "0"],
          ["extended_l2=on", "4k"],
          ["extended_l2=on,cluster_size=2M", "512"],
          ["extended_l2=on,cluster_size=16k", "4k"],
        ]
      ) {
        const o = ["-o", options, "-S", sparse];
        await run("qemu-img", [
          "convert",
          "-O",
          "qcow2",
          ...o,
          `${dir}/sp.raw`,
          `${dir}/q.qcow2`,
        ]);
        const r = await cli([`--allow-read=${dir}`, `--allow-write=${dir}`], [
          "convert",
          "-O",
          "qcow2",
          ...o,
          `${dir}/sp.raw`,
          `${dir}/w.qcow2`,
        ]);
        assertEquals(r.code, 0, r.stderr);
        assertEquals(
          await Deno.readFile(`${dir}/w.qcow2`),
          await Deno.readFile(`${dir}/q.qcow2`),
          `-o ${options} -S ${sparse}`,
        );
        // To a pipe: the same image.
        const piped = await cli([`--allow-read=${dir}`], [
          "convert",
          "-O",
          "qcow2",
          ...o,
          `${dir}/sp.raw`,
          "-",
        ]);
        assertEquals(
          piped.bytes,
          await Deno.readFile(`${dir}/q.qcow2`),
          `- ${options}`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

/** A sparse raw file (holes in the host file) with data here and there. */
async function sparseRaw(path: string, size: number): Promise<void> {
  using file = await Deno.open(path, {
    write: true,
    create: true,
    truncate: true,
  });
  await file.truncate(size);
  const rand = prng(300_001, 9);
  const put = async (at: number, bytes: Uint8Array) => {
    await file.seek(at, Deno.SeekMode.Start);
    await file.write(bytes);
  };
  await put(200_000, new TextEncoder().encode("hello"));
  await put(1_000_000, rand.subarray(0, 300_000));
  await put(size - 10, new TextEncoder().encode("end"));
}

Deno.test({
  name:
    "convert -O qcow2 -o preallocation: metadata, falloc and full are qemu-img's bytes and host holes",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      await sparseRaw(`${dir}/p.raw`, 5_000_000);
      await Deno.writeFile(
        `${dir}/odd.raw`,
        (await Deno.readFile(`${dir}/p.raw`)).subarray(0, 4_194_304),
      );
      await Deno.truncate(`${dir}/odd.raw`, 4_999_999);
      await Deno.writeFile(
        `${dir}/big.raw`,
        (await Deno.readFile(`${dir}/p.raw`)).subarray(0, 4_194_304),
      );
      await Deno.truncate(`${dir}/big.raw`, 12_000_000);
      const perms = [
        `--allow-read=${dir}`,
        `--allow-write=${dir}`,
        "--allow-ffi",
      ];
      const map = async (path: string) =>
        await run("qemu-img", ["map", "--output=json", path]);
      const cases: [string, string[]][] = [
        ["p.raw", ["-o", "preallocation=metadata"]],
        ["p.raw", ["-o", "preallocation=metadata,extended_l2=on"]],
        ["p.raw", ["-o", "preallocation=metadata,compat=0.10"]],
        ["p.raw", ["-o", "preallocation=metadata,cluster_size=4k"]],
        [
          "p.raw",
          ["-o", "preallocation=metadata,extended_l2=on,cluster_size=16k"],
        ],
        ["p.raw", ["-S", "64k", "-o", "preallocation=metadata"]],
        ["p.raw", ["-S", "0", "-o", "preallocation=metadata"]],
        ["odd.raw", ["-o", "preallocation=metadata"]],
        ["odd.raw", ["-o", "preallocation=metadata,extended_l2=on"]],
        // Many refcount blocks, each placed where QEMU allocates it.
        ["p.raw", ["-o", "preallocation=metadata,cluster_size=512"]],
        ["odd.raw", ["-o", "preallocation=metadata,cluster_size=512"]],
        [
          "p.raw",
          ["-o", "preallocation=metadata,cluster_size=1k,refcount_bits=64"],
        ],
        ["p.raw", ["-o", "preallocation=falloc"]],
        ["p.raw", ["-o", "preallocation=full"]],
        ["p.raw", ["-o", "preallocation=falloc,cluster_size=512"]],
        ["odd.raw", ["-o", "preallocation=full,cluster_size=4k"]],
        // The refcount table fills (512-byte clusters past 8 MiB): QEMU
        // moves it, and so do we.
        ["big.raw", ["-o", "preallocation=metadata,cluster_size=512"]],
      ];
      for (const [src, o] of cases) {
        const what = `${src} ${o.join(" ")}`;
        await Deno.remove(`${dir}/q.qcow2`).catch(() => {});
        await run("qemu-img", [
          "convert",
          "-f",
          "raw",
          "-O",
          "qcow2",
          ...o,
          `${dir}/${src}`,
          `${dir}/q.qcow2`,
        ]);
        const r = await cli(perms, [
          "convert",
          "-f",
          "raw",
          "-O",
          "qcow2",
          ...o,
          `${dir}/${src}`,
          `${dir}/w.qcow2`,
        ]);
        assertEquals(r.code, 0, `${what}: ${r.stderr}`);
        await run("qemu-img", ["check", `${dir}/w.qcow2`]);
        assertEquals(
          (await run("qemu-img", [
            "compare",
            `${dir}/${src}`,
            `${dir}/w.qcow2`,
          ])).trim(),
          "Images are identical.",
          what,
        );
        const ours = JSON.parse(await map(`${dir}/w.qcow2`));
        const theirs = JSON.parse(await map(`${dir}/q.qcow2`));
        assertEquals(
          await Deno.readFile(`${dir}/w.qcow2`),
          await Deno.readFile(`${dir}/q.qcow2`),
          what,
        );
        // Holes in the host file where qemu-img leaves them.
        assertEquals(ours, theirs, what);
        const info = JSON.parse(
          await run("qemu-img", ["info", "--output=json", `${dir}/w.qcow2`]),
        );
        assertEquals(
          info["virtual-size"],
          Math.ceil((await Deno.stat(`${dir}/${src}`)).size / 512) * 512,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "convert -O qcow2 -o preallocation=falloc|full, extended L2: data in the last cluster's first subclusters, the file still covers it whole, as qemu-img's",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      // An odd size, the last cluster's few bytes of data at its start.
      const raw = new Uint8Array(4_999_999);
      raw.set(prng(999, 5), 4_999_000);
      raw.set(prng(65536, 6), 65536);
      await Deno.writeFile(`${dir}/tail.raw`, raw);
      for (
        const o of [
          "preallocation=full,extended_l2=on",
          "preallocation=falloc,extended_l2=on,cluster_size=16k",
        ]
      ) {
        for (const [who, out] of [["qemu-img", "q"], ["ours", "w"]]) {
          const args = ["convert", "-f", "raw", "-O", "qcow2", "-o", o];
          const files = [`${dir}/tail.raw`, `${dir}/${out}.qcow2`];
          if (who === "qemu-img") await run("qemu-img", [...args, ...files]);
          else {
            const r = await cli(
              [`--allow-read=${dir}`, `--allow-write=${dir}`],
              [...args, ...files],
            );
            assertEquals(r.code, 0, r.stderr);
          }
        }
        await run("qemu-img", ["check", `${dir}/w.qcow2`]);
        assertEquals(
          (await run("qemu-img", [
            "compare",
            `${dir}/tail.raw`,
            `${dir}/w.qcow2`,
          ])).trim(),
          "Images are identical.",
        );
        assertEquals(
          (await Deno.stat(`${dir}/w.qcow2`)).size,
          (await Deno.stat(`${dir}/q.qcow2`)).size,
          o,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("convert -O qcow2 -o preallocation: refused with -c, -B, encryption and to a stream, in one line", async () => {
  const bytes = await Deno.readFile(fixture("v3_64k.qcow2"));
  await assertRejects(
    () =>
      convertToQcow2(bytes, memoryTarget(), {
        preallocation: "metadata",
        compress: true,
      }),
    RangeError,
    "Compression and preallocation not supported at the same time",
  );
  await assertRejects(
    () =>
      convertToQcow2(bytes, memoryTarget(), {
        preallocation: "falloc",
        extendedL2: true,
        backingFile: "base.qcow2",
        backingFormat: "qcow2",
      }),
    RangeError,
    "backing file",
  );
  await assertRejects(
    () =>
      convertToQcow2(bytes, new WritableStream(), {
        preallocation: "metadata",
      }),
    RangeError,
    "stream",
  );
  // Alone, preallocation converts: one data cluster, the rest preallocated.
  const done = await convertToQcow2(bytes, memoryTarget(), {
    preallocation: "metadata",
  });
  assertEquals(done.dataClusters, 1);
});

Deno.test("convert -O qcow2: a cluster with one non-zero byte anywhere is data, an all-zero one is left out", async () => {
  for (const clusterSize of [512, 65536]) {
    const clusters = 64;
    const raw = new Uint8Array(clusters * clusterSize);
    // Cluster i (i < 32) has one byte set at offset i * 37 % clusterSize,
    // the last byte in cluster 31; clusters 32.. stay zero.
    for (let i = 0; i < 32; i++) {
      const at = i === 31 ? clusterSize - 1 : (i * 37) % clusterSize;
      raw[i * clusterSize + at] = 0x80;
    }
    const target = memoryTarget();
    const summary = await convertToQcow2(raw, target, { clusterSize });
    assertEquals(summary.dataClusters, 32, `${clusterSize}`);
    const back = new Uint8Array(raw.length);
    await (await openImage(target.bytes())).read(0, back);
    assertEquals(back.findIndex((x, i) => x !== raw[i]), -1);
  }
});

Deno.test("convert -O qcow2 of an empty source, to a file and to a stream: qemu-img's bytes (no L1 table)", async () => {
  // qemu-img convert of 0 bytes makes what `qemu-img create … 0` makes.
  const digests = await createDigests();
  const dir = await tempDir();
  try {
    const src = `${dir}/empty.raw`;
    await Deno.writeFile(src, new Uint8Array(0));
    const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    for (const compress of [[], ["-c"]]) {
      const dst = `${dir}/o.qcow2`;
      const { file, stream } = await convertToFileAndStream(
        flags,
        compress,
        src,
        dst,
      );
      for (const bytes of [file, stream]) {
        assertEquals(
          hex(await crypto.subtle.digest("SHA-256", bytes.slice())),
          digests[" 0"],
        );
      }
      if (hasQemu) await run("qemu-img", ["check", dst]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convertToQcow2 to a stream: progress ends at the whole disk (the second pass stops at the last data)", async () => {
  for (const name of ["v3_64k.qcow2", "layouts/chain_base.qcow2"]) {
    const bytes = await Deno.readFile(fixture(name));
    const seen: { done: number; total: number }[] = [];
    await convertToQcow2(bytes, new WritableStream(), {
      onProgress: (p) => seen.push({ ...p }),
    });
    const total = seen[0].total;
    assertEquals(seen.at(-1), { done: total, total }, name);
    for (let i = 1; i < seen.length; i++) {
      assert(seen[i].done >= seen[i - 1].done, `${name}: goes back`);
    }
  }
});
