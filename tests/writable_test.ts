/**
 * Writable images against QEMU: one seeded workload (writes of mixed sizes,
 * zero writes, discards, flushes, all started at once) run through
 * `openImage(path, { writable: true })` on one copy of an image and through
 * `qemu-io` on another; `qemu-img compare` must find them identical and
 * `qemu-img check` ours clean. Images are made at test time by qemu-img and
 * qemu-io in a temporary directory.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import { memoryStore, openImage, Qcow2Error } from "../mod.ts";
import { run, tempDir } from "./_reference.ts";
import { apply, qemuIoScript, workload } from "./_workload.ts";

const MiB = 1024 * 1024;

/** Runs qemu-io with a script on stdin. */
async function qemuIo(image: string, script: string, cwd?: string) {
  const child = new Deno.Command("qemu-io", {
    args: [image],
    cwd,
    stdin: "piped",
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  const writer = child.stdin.getWriter();
  await writer.write(new TextEncoder().encode(script));
  await writer.close();
  const out = await child.output();
  const text = new TextDecoder().decode(out.stdout) +
    new TextDecoder().decode(out.stderr);
  assert(out.success, text);
  assert(!/error|failed/i.test(text), text.slice(0, 2000));
}

/** `qemu-img check --output=json` of an image. */
async function check(path: string, cwd?: string) {
  const { code, stdout, stderr } = await new Deno.Command("qemu-img", {
    args: ["check", "--output=json", path],
    cwd,
  }).output();
  const text = new TextDecoder().decode(stdout);
  return {
    code,
    report: text ? JSON.parse(text) : {},
    stderr: new TextDecoder().decode(stderr),
  };
}

interface Scenario {
  name: string;
  /** Shell commands run in the scenario directory to make `disk.qcow2`. */
  setup: string;
  size: number;
  clusterSize: number;
  count?: number;
  span?: number;
}

const SCENARIOS: Scenario[] = [
  {
    name: "v3, 64 KiB clusters",
    setup: "qemu-img create -q -f qcow2 disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 65536,
  },
  {
    name: "v2 (compat 0.10)",
    setup: "qemu-img create -q -f qcow2 -o compat=0.10 disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 65536,
  },
  {
    name: "over a qcow2 backing file (partial clusters copied from it)",
    setup: "qemu-img create -q -f qcow2 base.qcow2 16M && " +
      "qemu-io -c 'write -P 0x11 0 16M' base.qcow2 >/dev/null && " +
      "qemu-img create -q -f qcow2 -b base.qcow2 -F qcow2 disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 65536,
  },
  {
    name: "over a shorter raw backing file (zeros past its end)",
    setup: "head -c 5000000 /dev/urandom > base.raw && " +
      "qemu-img create -q -f qcow2 -b base.raw -F raw disk.qcow2 8M",
    size: 8 * MiB,
    clusterSize: 65536,
  },
  {
    name: "v2 over a backing file",
    setup: "qemu-img create -q -f qcow2 base.qcow2 8M && " +
      "qemu-io -c 'write -P 0x22 0 8M' base.qcow2 >/dev/null && " +
      "qemu-img create -q -f qcow2 -o compat=0.10 -b base.qcow2 -F qcow2 disk.qcow2 8M",
    size: 8 * MiB,
    clusterSize: 65536,
  },
  {
    name: "compressed clusters (copied on write, freed)",
    setup: "head -c 4000000 /dev/urandom | base64 > text && " +
      "truncate -s 8M text && qemu-img convert -c -O qcow2 -f raw text disk.qcow2",
    size: 8 * MiB,
    clusterSize: 65536,
  },
  {
    name: "two snapshots (shared clusters and L2 tables, COPIED)",
    setup: "qemu-img create -q -f qcow2 disk.qcow2 8M && " +
      "qemu-io -c 'write -P 0x31 0 6M' disk.qcow2 >/dev/null && " +
      "qemu-img snapshot -c one disk.qcow2 && " +
      "qemu-io -c 'write -P 0x32 1M 2M' disk.qcow2 >/dev/null && " +
      "qemu-img snapshot -c two disk.qcow2",
    size: 8 * MiB,
    clusterSize: 65536,
  },
  {
    name: "extended L2 over a backing file (subclusters)",
    setup: "qemu-img create -q -f qcow2 base.qcow2 8M && " +
      "qemu-io -c 'write -P 0x41 0 8M' base.qcow2 >/dev/null && " +
      "qemu-img create -q -f qcow2 -o extended_l2=on -b base.qcow2 -F qcow2 disk.qcow2 8M",
    size: 8 * MiB,
    clusterSize: 65536,
  },
  {
    name: "extended L2, 2 MiB clusters",
    setup:
      "qemu-img create -q -f qcow2 -o extended_l2=on,cluster_size=2M disk.qcow2 32M",
    size: 32 * MiB,
    clusterSize: 2 * MiB,
    count: 30,
  },
  {
    name: "512-byte clusters, refcount table grown and moved",
    setup: "qemu-img create -q -f qcow2 -o cluster_size=512 disk.qcow2 24M",
    size: 24 * MiB,
    clusterSize: 512,
    count: 40,
    span: 24 * MiB,
  },
  {
    name: "refcount_bits=1",
    setup: "qemu-img create -q -f qcow2 -o refcount_bits=1 disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 65536,
  },
  {
    name: "refcount_bits=64, 4 KiB clusters",
    setup:
      "qemu-img create -q -f qcow2 -o refcount_bits=64,cluster_size=4096 disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 4096,
  },
  {
    name: "lazy refcounts",
    setup: "qemu-img create -q -f qcow2 -o lazy_refcounts=on disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 65536,
  },
  {
    name: "odd virtual size",
    setup: "qemu-img create -q -f qcow2 disk.qcow2 5000k && " +
      "qemu-img resize -q disk.qcow2 5121536",
    size: 5121536,
    clusterSize: 65536,
  },
  {
    name: "external data file",
    setup: "qemu-img create -q -f qcow2 -o data_file=disk.data disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 65536,
  },
  {
    name: "external data file, raw",
    setup:
      "qemu-img create -q -f qcow2 -o data_file=disk.data,data_file_raw=on disk.qcow2 16M",
    size: 16 * MiB,
    clusterSize: 65536,
  },
];

for (const s of SCENARIOS) {
  Deno.test(`writable: ${s.name}: as qemu-io, identical and clean`, async () => {
    const dir = await tempDir();
    try {
      await run("sh", ["-c", `mkdir made && cd made && ${s.setup}`], dir);
      for (const seed of [1, 2]) {
        const ours = `${dir}/ours${seed}`;
        const theirs = `${dir}/theirs${seed}`;
        await run("cp", ["-r", `${dir}/made`, ours]);
        await run("cp", ["-r", `${dir}/made`, theirs]);
        const ops = workload(seed, {
          size: s.size,
          clusterSize: s.clusterSize,
          count: s.count ?? 80,
          span: s.span,
        });
        const image = await openImage(`${ours}/disk.qcow2`, { writable: true });
        await apply(image, ops);
        await image.close();
        // (qemu-img 7.2 resolves a data file name against the current
        // directory.)
        await qemuIo("disk.qcow2", qemuIoScript(ops), theirs);
        const { code, report, stderr } = await check("disk.qcow2", ours);
        assertEquals(code, 0, `${JSON.stringify(report)} ${stderr}`);
        assertEquals(report.leaks ?? 0, 0);
        // Each image read by qemu-img in its own directory, then compared.
        for (const side of [ours, theirs]) {
          await run("qemu-img", [
            "convert",
            "-O",
            "raw",
            "disk.qcow2",
            "../" + side.split("/").pop() + ".raw",
          ], side);
        }
        const compare = await new Deno.Command("qemu-img", {
          args: [
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            `${ours}.raw`,
            `${theirs}.raw`,
          ],
        }).output();
        assertEquals(
          compare.code,
          0,
          new TextDecoder().decode(compare.stdout) +
            new TextDecoder().decode(compare.stderr),
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("writable: reads see earlier writes, in call order", async () => {
  const dir = await tempDir();
  try {
    await run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      `${dir}/d.qcow2`,
      "4M",
    ]);
    const image = await openImage(`${dir}/d.qcow2`, { writable: true });
    const a = new Uint8Array(3);
    const b = new Uint8Array(3);
    await Promise.all([
      image.write(70000, new Uint8Array([1, 2, 3])),
      image.read(70000, a),
      image.writeZeroes(70001, 1),
      image.read(70000, b),
    ]);
    assertEquals(a, new Uint8Array([1, 2, 3]));
    assertEquals(b, new Uint8Array([1, 0, 3]));
    const kinds: string[] = [];
    for await (const e of image.extents()) kinds.push(e.kind);
    assertEquals(kinds, ["unallocated", "data", "unallocated"]);
    await image.close();
    await assertRejects(() => image.write(0, new Uint8Array(1)), TypeError);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writable: refused for qcow v1, corrupt and encrypted images and read-only files", async () => {
  const dir = await tempDir();
  try {
    const refused = async (path: string, text: string) => {
      const e = await assertRejects(
        () => openImage(path, { writable: true }),
        Qcow2Error,
      );
      assertEquals(e.code, "NOT_WRITABLE");
      assert(e.message.includes(text), e.message);
      assert(!e.message.includes("\n"));
    };
    await run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow",
      `${dir}/v1.qcow`,
      "1M",
    ]);
    await refused(`${dir}/v1.qcow`, "qcow version 1");
    await run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      `${dir}/c.qcow2`,
      "1M",
    ]);
    const file = await Deno.open(`${dir}/c.qcow2`, { write: true });
    await file.seek(79, Deno.SeekMode.Start);
    await file.write(new Uint8Array([2])); // incompatible bit 1: corrupt
    file.close();
    await refused(`${dir}/c.qcow2`, "corrupt bit");
    // crypt_method 1 (AES) in a plain image's header: refused before
    // anything else is read.
    await run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      `${dir}/e.qcow2`,
      "1M",
    ]);
    const e = await Deno.open(`${dir}/e.qcow2`, { write: true });
    await e.seek(35, Deno.SeekMode.Start);
    await e.write(new Uint8Array([1]));
    e.close();
    await refused(`${dir}/e.qcow2`, "encrypted");
    await run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      `${dir}/r.qcow2`,
      "1M",
    ]);
    await Deno.chmod(`${dir}/r.qcow2`, 0o444);
    if (Deno.uid() !== 0) await refused(`${dir}/r.qcow2`, "read-only");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writable: a dirty image (lazy refcounts, killed) is repaired on a read-write open", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/d.qcow2`;
    await run("qemu-img", [
      "create",
      "-q",
      "-f",
      "qcow2",
      "-o",
      "lazy_refcounts=on",
      path,
      "16M",
    ]);
    // qemu-io's abort leaves the dirty bit set and refcounts stale.
    await new Deno.Command("qemu-io", {
      args: ["-c", "write -P 7 0 3M", "-c", "flush", "-c", "abort", path],
      stdout: "null",
      stderr: "null",
    }).output();
    const before = await check(path);
    assert(before.code !== 0, "qemu-io's abort should leave errors");
    const image = await openImage(path, { writable: true });
    const back = new Uint8Array(3 * MiB);
    await image.read(0, back);
    assert(back.every((v) => v === 7));
    await image.write(5 * MiB, new Uint8Array(70000).fill(9));
    await image.close();
    const after = await check(path);
    assertEquals(after.code, 0, JSON.stringify(after.report));
    const info = JSON.parse(
      await run("qemu-img", ["info", "--output=json", path]),
    );
    assertEquals(info["dirty-flag"], false);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writable: unknown autoclear bits are cleared on a read-write open", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/a.qcow2`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "1M"]);
    const file = await Deno.open(path, { write: true });
    await file.seek(88, Deno.SeekMode.Start);
    await file.write(new Uint8Array([0x80, 0, 0, 0, 0, 0, 0, 0]));
    file.close();
    const image = await openImage(path, { writable: true });
    await image.close();
    const bytes = await Deno.readFile(path);
    assertEquals(bytes.subarray(88, 96), new Uint8Array(8));
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writable: in memory, a growable store", async () => {
  const bytes = await Deno.readFile(
    new URL("./fixtures/empty.qcow2", import.meta.url),
  );
  const store = memoryStore(bytes);
  const image = await openImage(store, { writable: true });
  const ops = workload(7, { size: image.size, clusterSize: 65536, count: 60 });
  await apply(image, ops);
  await image.close();
  const dir = await tempDir();
  try {
    await Deno.writeFile(`${dir}/m.qcow2`, store.bytes());
    await Deno.writeFile(`${dir}/q.qcow2`, bytes);
    await qemuIo(`${dir}/q.qcow2`, qemuIoScript(ops));
    assertEquals((await check(`${dir}/m.qcow2`)).code, 0);
    await run("qemu-img", ["compare", `${dir}/m.qcow2`, `${dir}/q.qcow2`]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writable: corruption found while writing marks the image corrupt and stops", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/c.qcow2`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "4M"]);
    await run("qemu-io", [
      "-c",
      "write -P 1 0 64k",
      "-c",
      "write -P 2 64k 64k",
      path,
    ]);
    // L2 table at 0x40000 (after header, refcount table and block, L1);
    // point entry 1 at the L1 table (0x30000), COPIED.
    const file = await Deno.open(path, { read: true, write: true });
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(0, 0x8000000000030000n);
    await file.seek(0x40008, Deno.SeekMode.Start);
    await file.write(entry);
    file.close();
    const image = await openImage(path, { writable: true });
    await image.write(0, new Uint8Array(512).fill(3)); // cluster 0 is fine
    const e = await assertRejects(
      () => image.write(65536, new Uint8Array(512)),
      Qcow2Error,
    );
    assertEquals(e.code, "CORRUPT");
    assert(e.message.includes("metadata"), e.message);
    const again = await assertRejects(
      () => image.write(0, new Uint8Array(1)),
      Qcow2Error,
    );
    assertEquals(again.code, "CORRUPT");
    await image.close();
    const info = JSON.parse(
      await run("qemu-img", ["info", "--output=json", "-U", path]),
    );
    assertEquals(info["format-specific"].data.corrupt, true);
    // Nothing was written through: the L1 table is intact.
    const bytes = await Deno.readFile(path);
    assertEquals(bytes[0x30000], 0x80);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writable: a refcount that would drop below zero is corruption", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/u.qcow2`;
    await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "4M"]);
    await run("qemu-io", ["-c", "write -P 1 0 64k", path]);
    // The data cluster 0x50000 is cluster 5: its 16-bit refcount at
    // 0x20000 + 10 set to 0.
    const file = await Deno.open(path, { read: true, write: true });
    await file.seek(0x2000a, Deno.SeekMode.Start);
    await file.write(new Uint8Array([0, 0]));
    file.close();
    const image = await openImage(path, { writable: true });
    const e = await assertRejects(() => image.discard(0, 65536), Qcow2Error);
    assertEquals(e.code, "CORRUPT");
    assert(e.message.includes("below 0"), e.message);
    await image.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("writable: data clusters, and only they, go through wrapData (the encryption seam)", async () => {
  const { WritableQcow2Image } = await import("../src/qcow2/writable.ts");
  const { readHeader } = await import("../src/qcow2/header.ts");
  const bytes = await Deno.readFile(
    new URL("./fixtures/empty.qcow2", import.meta.url),
  );
  const store = memoryStore(bytes);
  const flip = (b: Uint8Array) => b.map((v) => v ^ 0xff);
  const seen: number[] = [];
  const image = await WritableQcow2Image.open({
    header: await readHeader(store),
    store,
    snapshots: [],
    wrapData: (data) => ({
      get size() {
        return data.size;
      },
      async readAt(position, buffer) {
        const n = await data.readAt(position, buffer);
        buffer.set(flip(buffer));
        return n;
      },
      writeAt(position, b) {
        seen.push(position);
        return data.writeAt(position, flip(b));
      },
    }),
  });
  await image.write(1000, new Uint8Array(100).fill(0xa5));
  const back = new Uint8Array(100);
  await image.read(1000, back);
  assert(back.every((v) => v === 0xa5));
  await image.close();
  // One data write, the whole fresh cluster (never a hole through a
  // wrapping store), stored flipped.
  assertEquals(seen, [0x50000]);
  const raw = store.bytes();
  assertEquals(raw[0x50000 + 1000], 0x5a);
  assertEquals(raw[0x50000], 0xff); // zeros, flipped
});
