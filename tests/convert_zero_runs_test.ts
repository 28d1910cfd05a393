/**
 * `convert -O qcow2` of a source whose zeros are written out (not holes),
 * with small clusters and wide refcounts: the refcount blocks reserved for
 * the file are counted as in use even where skipped zero clusters leave
 * their range empty, so each must have its table entry, or `qemu-img
 * check` reports the blocks' clusters leaked. (Found 2026-12-06: 2 leaked
 * clusters at 512 B / 64 bits.)
 */

import { assertEquals } from "@std/assert";
import { cli, hasQemu, run, tempDir } from "./_reference.ts";
import { prng } from "./_synth.ts";

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
      const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
      const converted = await cli(flags, [
        "convert",
        "-O",
        "qcow2",
        "-o",
        options,
        src,
        dst,
      ]);
      assertEquals(converted.code, 0, converted.stderr);
      const checked = await cli(flags, ["check", dst]);
      assertEquals(checked.code, 0, checked.stdout + checked.stderr);
      if (hasQemu) {
        await run("qemu-img", ["check", dst]); // non-zero on a leak
        await run("qemu-img", ["compare", src, dst]);
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
