/**
 * Differences from qemu-img found by a random sweep of `convert -O qcow2`
 * (2026-12-06, about 4,700 cases; none failed `qemu-img check` or
 * `compare`, these made larger or different files), each now qemu-img's
 * bytes: to a file and to a stream alike. Without qemu-img, the SHA-256 of
 * qemu-img 7.2's output (made by the same commands) stands in for it.
 *
 * - Zeros written out in the source, with small clusters: the file writer
 *   reserved refcount blocks (and table clusters) for every cluster the
 *   allocation map showed, then skipped the zeros, leaving unused clusters
 *   before the L1 table (2 MiB of zeros: 36352 bytes against 2048).
 * - `-c -S 0` over holes: zero clusters written uncompressed.
 * - Extended L2: subclusters past the disk's end marked allocated.
 * - `-c`: the file ends on a 512-byte sector, as qemu-img leaves it; and a
 *   compressed cluster goes on in a host cluster partly filled before an
 *   L2 table (or an uncompressed cluster) came, as `qcow2_alloc_bytes` does
 *   (a second sweep: 4–30% larger on small images); the stream cannot go
 *   back, and packs in file order.
 * - `create -o compat=0.10,preallocation=metadata`: where QEMU puts
 *   preallocated clusters into a refcount table it freed, its v2 image (no
 *   zero clusters) reads the table's bytes as the guest's; ours reads
 *   zeros.
 */

import { assertEquals } from "@std/assert";
import { openImage } from "../mod.ts";
import {
  cli,
  convertToFileAndStream,
  hasQemu,
  hex,
  run,
  sha256File,
  tempDir,
} from "./_reference.ts";
import { prng } from "./_synth.ts";

/** A source: its bytes (or, for a sparse file, its length). */
type Source = { bytes: Uint8Array } | { holes: number };

const CASES: [string, Source, string[], string][] = [
  [
    "2 MiB of written zeros, 512 B clusters, 64-bit refcounts",
    { bytes: new Uint8Array(2 * 2 ** 20) },
    ["-o", "cluster_size=512,refcount_bits=64"],
    "801b6a9ae2c8dba677c1d49e0a777197a5e17aa2149f0484de1aadfd712bec98",
  ],
  [
    "9 MiB of written zeros and a byte, 4 KiB clusters, 64-bit refcounts",
    { bytes: new Uint8Array(9 * 2 ** 20 + 1).fill(1, 9 * 2 ** 20) },
    ["-o", "cluster_size=4096,refcount_bits=64"],
    "ccadc3721c285ceeb9740ce1de0f27367477cdc0f3e5d27480da196e9b555253",
  ],
  [
    "2 MiB of written zeros, -c, 1 KiB clusters, 64-bit refcounts",
    { bytes: new Uint8Array(2 * 2 ** 20) },
    ["-c", "-o", "cluster_size=1024,refcount_bits=64"],
    "86fdc7b5209d01d3f318ac947f18ad173148931df9aa01775c943277db216d87",
  ],
  [
    "1 MiB of holes, -c -S 0",
    { holes: 2 ** 20 },
    ["-c", "-S", "0"],
    "49987b3ffed30686a99cbb2101fa387636ffef833475401e63f54ad95b5272b6",
  ],
  [
    "2048 bytes of data, extended L2",
    { bytes: prng(2048, 11) },
    ["-o", "extended_l2=on"],
    "a2df633f26b3a32e32a47c6483487b8f99da18baba260a1a4eeeafce62a6592f",
  ],
  [
    "15872 bytes of data, extended L2, 16 KiB clusters, -S 0",
    { bytes: prng(15872, 12) },
    ["-S", "0", "-o", "extended_l2=on,cluster_size=16384"],
    "49058ec7d2a5a7a9eb43e4e4d64e303e7957370142eb05771abf26a2341d6a44",
  ],
];

for (const [name, source, args, digest] of CASES) {
  Deno.test(`convert -O qcow2, ${name}: qemu-img's bytes, to a file and a stream`, async () => {
    const dir = await tempDir();
    try {
      const src = `${dir}/src.raw`;
      if ("bytes" in source) await Deno.writeFile(src, source.bytes);
      else {
        await Deno.writeFile(src, new Uint8Array(0));
        await Deno.truncate(src, source.holes);
      }
      // (--allow-ffi: a raw source's holes are found as holes, SEEK_DATA.)
      const flags = [
        `--allow-read=${dir}`,
        `--allow-write=${dir}`,
        "--allow-ffi",
      ];
      const dst = `${dir}/o.qcow2`;
      const { file: bytes, stream } = await convertToFileAndStream(
        flags,
        args,
        src,
        dst,
      );
      assertEquals(bytes, stream);
      if (hasQemu) {
        const theirs = `${dir}/q.qcow2`;
        await run("qemu-img", ["convert", "-O", "qcow2", ...args, src, theirs]);
        assertEquals(bytes, await Deno.readFile(theirs));
        await run("qemu-img", ["check", dst]);
      }
      assertEquals(
        hex(await crypto.subtle.digest("SHA-256", bytes.slice())),
        digest,
      );
      const compared = await cli(flags, ["compare", src, dst]);
      assertEquals(compared.code, 0, compared.stdout);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("create -o compat=0.10,preallocation=metadata: preallocated clusters in a freed refcount table read zeros", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/v2.qcow2`;
    // 512 B clusters at 792085067 bytes: the last (short) run of clusters
    // goes into the table freed last. QEMU leaves the table's bytes there;
    // a v2 image reads them (qemu-img's own image does, from 756514816).
    const r = await cli([`--allow-write=${dir}`, `--allow-read=${dir}`], [
      "create",
      "-q",
      "-o",
      "compat=0.10,cluster_size=512,preallocation=metadata",
      path,
      "792085067",
    ]);
    assertEquals(r.code, 0, r.stderr);
    const image = await openImage(path);
    try {
      const from = 756514816 - 2 ** 20;
      const bytes = new Uint8Array(image.size - from);
      await image.read(from, bytes);
      assertEquals(bytes.findIndex((b) => b !== 0), -1);
    } finally {
      image.close();
    }
    if (hasQemu) await run("qemu-img", ["check", path]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("convert -O qcow2 -c: a compressed cluster goes on in the host cluster partly filled before an L2 table, as QEMU packs (qemu-img's bytes); the stream packs in file order", async () => {
  const dir = await tempDir();
  try {
    // 512-byte clusters: the two data clusters are 2.7 MiB apart, so an L2
    // table comes between their compressed forms (23 bytes each).
    const bytes = new Uint8Array(9041408);
    bytes.fill(0x41, 3584, 4096);
    bytes.fill(0x42, 2818560, 2819072);
    const src = `${dir}/src.raw`;
    await Deno.writeFile(src, bytes);
    const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    const args = ["-c", "-o", "cluster_size=512"];
    const dst = `${dir}/o.qcow2`;
    const { file: written, stream: streamed } = await convertToFileAndStream(
      flags,
      args,
      src,
      dst,
    );
    // qemu-img 7.2: 5632 bytes, the second compressed cluster at 0x1217.
    assertEquals(
      await sha256File(dst),
      "54f4efc03584818cd917d6a61dbe0141ee20dc4076213c33ff340ea022ee4883",
    );
    // One host cluster more: the second one starts a new cluster.
    assertEquals(streamed.length, written.length + 512);
    const stream = `${dir}/s.qcow2`;
    await Deno.writeFile(stream, streamed);
    for (const path of [dst, stream]) {
      const compared = await cli(flags, ["compare", src, path]);
      assertEquals(compared.code, 0, compared.stdout);
      if (hasQemu) {
        await run("qemu-img", ["check", path]);
        await run("qemu-img", ["compare", src, path]);
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
