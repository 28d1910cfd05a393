/**
 * `preallocation=metadata` where the front metadata (the L1 table) reaches
 * past the first refcount block's range: 512-byte clusters with 64-bit
 * refcounts hold 64 clusters per block, and a 250 MiB image's L1 table
 * takes 125 clusters. The writer once failed here ("no refcount block was
 * placed for block 1"); now the block is placed after the front metadata,
 * and the image must be clean to our `check` and to qemu-img's.
 *
 * (The bytes differ from qemu-img's in these sizes: not asserted.)
 */

import { assertEquals } from "@std/assert";
import { cli, hasQemu, run, tempDir } from "./_reference.ts";

for (
  const [options, size, mib] of <[string, string, number][]> [
    ["cluster_size=512,refcount_bits=64,preallocation=metadata", "250M", 250],
    ["cluster_size=512,refcount_bits=32,preallocation=metadata", "300M", 300],
  ]
) {
  Deno.test(`create -o ${options} ${size}: written, and clean`, async () => {
    const dir = await tempDir();
    try {
      const path = `${dir}/front.qcow2`;
      const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
      const created = await cli(flags, [
        "create",
        "-q",
        "-o",
        options,
        path,
        size,
      ]);
      assertEquals(created.code, 0, created.stderr);
      const checked = await cli(flags, ["check", path]);
      assertEquals(checked.code, 0, checked.stdout + checked.stderr);
      if (hasQemu) {
        // Exits non-zero on any error or leak.
        await run("qemu-img", ["check", path]);
        const info = JSON.parse(
          await run("qemu-img", ["info", "--output=json", path]),
        );
        assertEquals(
          info["virtual-size"],
          mib * 2 ** 20,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
