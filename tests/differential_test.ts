/**
 * Differential tests: every committed fixture converts to the same bytes as
 * `qemu-img convert -O raw`, and `info --json` agrees with `qemu-img info
 * --output=json` on the keys both have. With qemu-img installed the reference
 * runs live (and must also match the committed digest, so the digests stay
 * honest); without it, the committed digests and info are the reference.
 */
import { assert, assertEquals } from "@std/assert";
import { formatInfo } from "../info.ts";
import {
  convert,
  imageInfo,
  openImage,
  readHeader,
  webCodecs,
} from "../mod.ts";
import {
  expected,
  fixture,
  hasQemu,
  run,
  sha256File,
  tempDir,
} from "./_reference.ts";

const names = Object.keys(expected).sort();

Deno.test("the fixture set is complete", () => {
  for (
    const name of [
      "v2_64k.qcow2",
      "v3_64k.qcow2",
      "c512.qcow2",
      "c4k.qcow2",
      "c2m.qcow2",
      "zlib.qcow2",
      "zstd.qcow2",
      "refcount1.qcow2",
      "refcount64.qcow2",
      "odd_size.qcow2",
      "odd_size_zlib.qcow2",
      "sparse_4t.qcow2",
      "prealloc_meta.qcow2",
      "e2image.qcow2",
      "sample.qcow2",
    ]
  ) {
    assert(
      names.includes(name),
      `${name} is missing from fixtures/expected.json`,
    );
  }
  if (!hasQemu) {
    console.warn("qemu-img not found: comparing with committed digests");
  }
});

/** Guest ranges qemu-img reports as data, merged: where the bytes are. */
async function dataRanges(path: string): Promise<[number, number][]> {
  const image = await openImage(await Deno.readFile(path));
  const out: [number, number][] = [];
  for await (const e of image.extents()) {
    if (e.kind !== "data" && e.kind !== "compressed") continue;
    const last = out.at(-1);
    if (last && last[0] + last[1] === e.start) last[1] += e.length;
    else out.push([e.start, e.length]);
  }
  return out;
}

/**
 * The digest of a raw output. Small outputs are hashed whole. A huge sparse
 * one (the multi-TiB fixture) is hashed over its data ranges only, after
 * checking it occupies less than 64 MiB on disk, so its holes read as zeros.
 */
async function rawDigest(
  path: string,
  virtualSize: number,
  ranges: [number, number][],
) {
  const stat = await Deno.stat(path);
  assertEquals(stat.size, virtualSize, `${path} has the virtual size`);
  if (virtualSize <= 256 * 1024 * 1024) return await sha256File(path);
  assert((stat.blocks ?? 0) * 512 < 64 * 1024 * 1024, `${path} is sparse`);
  using file = await Deno.open(path);
  const parts: Uint8Array[] = [];
  for (const [start, length] of ranges) {
    const buffer = new Uint8Array(length);
    await file.seek(start, Deno.SeekMode.Start);
    let done = 0;
    while (done < length) done += (await file.read(buffer.subarray(done)))!;
    parts.push(buffer);
  }
  const all = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let p = 0;
  for (const part of parts) (all.set(part, p), p += part.length);
  const digest = await crypto.subtle.digest("SHA-256", all);
  return Array.from(
    new Uint8Array(digest),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
}

for (const name of names) {
  Deno.test(`convert ${name}: same bytes as qemu-img convert -O raw`, async () => {
    const dir = await tempDir();
    try {
      const src = fixture(name);
      const ours = `${dir}/ours.raw`;
      const want = expected[name];
      {
        using input = await Deno.open(src);
        using output = await Deno.open(ours, { write: true, create: true });
        const summary = await convert(input, output);
        assertEquals(summary.virtualSize, want.virtualSize);
      }
      const ranges = await dataRanges(src);
      const digest = await rawDigest(ours, want.virtualSize, ranges);
      assertEquals(
        digest,
        want.sha256,
        `${name}: our output differs from the committed digest`,
      );
      if (hasQemu) {
        const theirs = `${dir}/qemu.raw`;
        await run("qemu-img", ["convert", "-O", "raw", src, theirs]);
        assertEquals(await rawDigest(theirs, want.virtualSize, ranges), digest);
        // No less sparse than qemu-img's output (within 1% and a block).
        const [a, b] = await Promise.all([Deno.stat(ours), Deno.stat(theirs)]);
        assert(
          (a.blocks ?? 0) <= (b.blocks ?? 0) * 1.01 + 8,
          `${name}: ours occupies ${a.blocks} blocks, qemu-img's ${b.blocks}`,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });

  Deno.test(`info ${name}: agrees with qemu-img info --output=json`, async () => {
    const src = fixture(name);
    using file = await Deno.open(src);
    const stat = await file.stat();
    const ours = imageInfo(
      await readHeader(file),
      src,
      { actualSize: (stat.blocks ?? 0) * 512 },
    ) as unknown as Record<
      string,
      unknown
    >;
    const theirs: Record<string, unknown> = hasQemu
      ? JSON.parse(await run("qemu-img", ["info", "--output=json", src]))
      : {
        ...expected[name].info,
        filename: src,
        "actual-size": ours["actual-size"],
      };
    for (const key of Object.keys(theirs)) {
      if (key === "snapshots") continue; // none in these fixtures
      assertEquals(ours[key], theirs[key], `${name}: key ${key}`);
    }
    // Everything qemu-img reports, we report.
    for (const key of Object.keys(expected[name].info)) {
      assert(key in ours, `${name}: ${key}`);
    }
  });

  Deno.test({
    name: `info ${name}: the text matches qemu-img info line for line`,
    ignore: !hasQemu,
    fn: async () => {
      const src = fixture(name);
      using file = await Deno.open(src);
      const blocks = (await file.stat()).blocks ?? 0;
      const ours = formatInfo(
        imageInfo(await readHeader(file), src, { actualSize: blocks * 512 }),
      );
      assertEquals(ours, await run("qemu-img", ["info", src]));
    },
  });
}

Deno.test("dirty and corrupt images read as qemu-img reads them read-only", async () => {
  const dir = await tempDir();
  try {
    for (const [bit, key] of [[0n, "dirty-flag"], [1n, "corrupt"]] as const) {
      const bytes = await Deno.readFile(fixture("v3_64k.qcow2"));
      const view = new DataView(bytes.buffer);
      view.setBigUint64(72, view.getBigUint64(72) | (1n << bit));
      const src = `${dir}/flagged.qcow2`;
      await Deno.writeFile(src, bytes);
      const info = imageInfo(await readHeader(bytes), src);
      const flag = key === "dirty-flag"
        ? info[key]
        : info["format-specific"]?.data.corrupt;
      assertEquals(flag, true);
      const out = `${dir}/out.raw`;
      {
        using output = await Deno.open(out, { write: true, create: true });
        await convert(bytes, output);
      }
      assertEquals(await sha256File(out), expected["v3_64k.qcow2"].sha256);
      if (hasQemu) {
        const theirs = JSON.parse(
          await run("qemu-img", ["info", "--output=json", src]),
        );
        assertEquals(theirs["dirty-flag"], info["dirty-flag"]);
        assertEquals(
          theirs["format-specific"].data.corrupt,
          info["format-specific"]?.data.corrupt,
        );
        await run("qemu-img", ["convert", "-O", "raw", src, `${dir}/qemu.raw`]);
        assertEquals(
          await sha256File(`${dir}/qemu.raw`),
          expected["v3_64k.qcow2"].sha256,
        );
      }
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("the portable codecs convert every zlib fixture to the same bytes", async () => {
  const dir = await tempDir();
  try {
    for (
      const name of [
        "zlib.qcow2",
        "zlib_4k.qcow2",
        "odd_size_zlib.qcow2",
        "sample.qcow2",
      ]
    ) {
      const out = `${dir}/${name}.raw`;
      {
        using input = await Deno.open(fixture(name));
        using output = await Deno.open(out, { write: true, create: true });
        await convert(input, output, { codecs: webCodecs });
      }
      assertEquals(await sha256File(out), expected[name].sha256, name);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
