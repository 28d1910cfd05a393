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
 *   for block 1"). The bytes differ from qemu-img's there: not asserted.
 *
 * Each image must be clean to our `check` and to qemu-img's.
 */

import { assertEquals } from "@std/assert";
import { cli, hasQemu, run, tempDir } from "./_reference.ts";
import { prng } from "./_synth.ts";

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
  Deno.test(`create -o ${options} ${mib}M: written, and clean`, async () => {
    const dir = await tempDir();
    try {
      const path = `${dir}/front.qcow2`;
      await writtenClean(
        dir,
        ["create", "-q", "-o", options, path, `${mib}M`],
        path,
      );
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
