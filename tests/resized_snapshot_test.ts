/**
 * `convert -l SNAPSHOT` on an image resized after the snapshot (issue 17,
 * item 6): we write the disk as it was, at the snapshot's own size, which is
 * what `qemu-img snapshot -a` restores; qemu-img 7.2's `convert -l` writes
 * the image's current size instead. Fixtures: tests/fixtures/resized/
 * (make_resized.sh).
 */
import { assert, assertEquals } from "@std/assert";
import {
  cli,
  fixture,
  hasQemu,
  run,
  sha256File,
  tempDir,
} from "./_reference.ts";

const MiB = 1024 * 1024;

for (
  const [name, snapshotSize, currentSize] of [
    ["snap_grown.qcow2", MiB, 2 * MiB],
    ["snap_shrunk.qcow2", 2 * MiB, MiB],
  ] as const
) {
  Deno.test({
    name:
      `convert -l on ${name}: the snapshot's size, as 'qemu-img snapshot -a' restores it`,
    ignore: !hasQemu,
    fn: async () => {
      const dir = await tempDir();
      try {
        const src = fixture(`resized/${name}`);
        const ours = `${dir}/ours.raw`;
        const r = await cli([`--allow-read=${src}`, `--allow-write=${ours}`], [
          "convert",
          "--json",
          "-l",
          "before",
          src,
          ours,
        ]);
        assertEquals(r.code, 0, r.stderr);
        const summary = JSON.parse(r.stdout);
        assertEquals(summary["virtual-size"], snapshotSize);
        assertEquals(summary["image-virtual-size"], currentSize);
        assertEquals((await Deno.stat(ours)).size, snapshotSize);

        // The snapshot applied by qemu-img, then converted: the same bytes.
        const applied = `${dir}/applied.qcow2`;
        await Deno.copyFile(src, applied);
        await run("qemu-img", ["snapshot", "-a", "before", applied]);
        const restored = `${dir}/restored.raw`;
        await run("qemu-img", ["convert", "-O", "raw", applied, restored]);
        assertEquals(await sha256File(ours), await sha256File(restored));

        // qemu-img's convert -l: the current size, the common part equal.
        const theirs = `${dir}/theirs.raw`;
        await run("qemu-img", [
          "convert",
          "-l",
          "before",
          "-O",
          "raw",
          src,
          theirs,
        ]);
        const a = await Deno.readFile(ours);
        const b = await Deno.readFile(theirs);
        assertEquals(b.length, currentSize);
        const common = Math.min(a.length, b.length);
        assertEquals(a.subarray(0, common), b.subarray(0, common));
        // What lies past the common part differs: ours has the snapshot's
        // data there when it was larger; qemu-img's has zeros when grown.
        if (a.length > common) {
          assert(a.subarray(common).some((x) => x !== 0));
        } else {
          assert(b.subarray(common).every((x) => x === 0));
        }
        // Without -l: the current size.
        const now = await cli(
          [`--allow-read=${src}`, `--allow-write=${ours}`],
          [
            "convert",
            "--json",
            src,
            ours,
          ],
        );
        assertEquals(JSON.parse(now.stdout)["virtual-size"], currentSize);
        assertEquals(JSON.parse(now.stdout)["image-virtual-size"], undefined);
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test("convert --help says -l writes the snapshot's size", async () => {
  const r = await cli([], ["convert", "--help"]);
  assert(r.stdout.includes("snapshot's own size"), r.stdout);
  assert(r.stdout.includes("image-virtual-size"), r.stdout);
});
