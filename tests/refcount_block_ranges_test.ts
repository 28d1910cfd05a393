/**
 * Refcount blocks whose range is unusual, found by a newcomer's trial
 * (2026-12-06), with small clusters and wide refcounts (512-byte clusters
 * with 64-bit refcounts hold 64 clusters per block):
 *
 * - `convert -O qcow2` of a source whose zeros are written out (not
 *   holes): a block counted as in use whose range is left empty by the
 *   skipped zero clusters must still have its table entry, or `qemu-img
 *   check` reports its cluster leaked.
 * - `create -o preallocation=metadata` where the L1 table (125 clusters at
 *   250 MiB) reaches past the first block's range: the block it needs is
 *   placed after it (the writer once failed: "no refcount block was placed
 *   for block 1"). There the refcount table moves ten times; QEMU frees
 *   each old table and its first-fit search reuses the last (95 clusters)
 *   for a run of data and an L2 table: qemu-img's bytes (its digests, made
 *   by tests/fixtures/make_create_digests.sh, since qemu-img takes a minute
 *   to make each image).
 *
 * Each image must be clean to our `check` and to qemu-img's.
 */

import { assertEquals } from "@std/assert";
import {
  cli,
  createDigests,
  hasQemu,
  run,
  sha256File,
  tempDir,
} from "./_reference.ts";
import { prng } from "./_synth.ts";

/** SHA-256 of qemu-img's images, by `-o` text and size. */
const DIGESTS = await createDigests();

/** Runs `args` (which write into `dir`), then checks `path` with both tools. */
async function writtenClean(
  dir: string,
  args: string[],
  path: string,
): Promise<void> {
  const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
  const written = await cli(flags, args);
  assertEquals(written.code, 0, written.stderr);
  const checked = await cli(flags, ["check", path]);
  assertEquals(checked.code, 0, checked.stdout + checked.stderr);
  // Exits non-zero on any error or leak.
  if (hasQemu) await run("qemu-img", ["check", path]);
}

for (
  const options of [
    "cluster_size=512,refcount_bits=64",
    "cluster_size=512,refcount_bits=32",
    "cluster_size=1024,refcount_bits=64",
  ]
) {
  Deno.test(`convert -O qcow2 -o ${options}: data then written zeros, clean`, async () => {
    const dir = await tempDir();
    try {
      const src = `${dir}/a.raw`;
      const dst = `${dir}/o.qcow2`;
      // 3 MiB of data, then 5 MiB of zeros written out.
      const bytes = new Uint8Array(8 * 2 ** 20);
      bytes.set(prng(3 * 2 ** 20, 7));
      await Deno.writeFile(src, bytes);
      await writtenClean(dir, [
        "convert",
        "-O",
        "qcow2",
        "-o",
        options,
        src,
        dst,
      ], dst);
      if (hasQemu) await run("qemu-img", ["compare", src, dst]);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

for (
  const [options, mib] of <[string, number][]> [
    ["cluster_size=512,refcount_bits=64,preallocation=metadata", 250],
    ["cluster_size=512,refcount_bits=32,preallocation=metadata", 300],
  ]
) {
  Deno.test(`create -o ${options} ${mib}M: qemu-img's bytes, and clean`, async () => {
    const dir = await tempDir();
    try {
      const path = `${dir}/front.qcow2`;
      await writtenClean(
        dir,
        ["create", "-q", "-o", options, path, `${mib}M`],
        path,
      );
      assertEquals(await sha256File(path), DIGESTS[`${options} ${mib}M`]);
      if (hasQemu) {
        const info = JSON.parse(
          await run("qemu-img", ["info", "--output=json", path]),
        );
        assertEquals(info["virtual-size"], mib * 2 ** 20);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("convert -O qcow2 -o preallocation=metadata, data where QEMU reuses a freed refcount table: the data is read back, not the table", async () => {
  const dir = await tempDir();
  try {
    const src = `${dir}/a.raw`;
    const dst = `${dir}/o.qcow2`;
    // 250 MiB, 512-byte clusters, 64-bit refcounts: the data of L2 range
    // 5882 goes into the table freed last (and range 5883's L2 table after
    // it), as in the create case above.
    const range = 64 * 512;
    const file = await Deno.open(src, { write: true, create: true });
    await file.truncate(250 * 2 ** 20);
    for (const [at, seed] of [[5882 * range, 3], [5883 * range, 4], [0, 5]]) {
      await file.seek(at, Deno.SeekMode.Start);
      const bytes = prng(range, seed);
      for (let done = 0; done < bytes.length;) {
        done += await file.write(bytes.subarray(done));
      }
    }
    file.close();
    await writtenClean(dir, [
      "convert",
      "-O",
      "qcow2",
      "-o",
      "cluster_size=512,refcount_bits=64,preallocation=metadata",
      src,
      dst,
    ], dst);
    const compared = await cli([`--allow-read=${dir}`], ["compare", src, dst]);
    assertEquals(compared.code, 0, compared.stdout + compared.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
