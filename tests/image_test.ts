import { assertEquals, assertRejects } from "@std/assert";
import * as zlib from "node:zlib";
import {
  type Codecs,
  type Extent,
  openImage,
  Qcow2Error,
  webCodecs,
} from "../mod.ts";
import { prng, type SynthCluster, synthImage } from "./_synth.ts";

const CS = 65536;

function deflate(bytes: Uint8Array): Uint8Array {
  return zlib.deflateRawSync(bytes, { windowBits: 12, level: 6 });
}

function zstd(bytes: Uint8Array): Uint8Array {
  return zlib.zstdCompressSync(bytes);
}

async function readAll(bytes: Uint8Array, codecs?: Codecs) {
  const image = await openImage(bytes, codecs ? { codecs } : {});
  const out = new Uint8Array(image.size);
  await image.read(0, out);
  const extents: Extent[] = [];
  for await (const e of image.extents()) extents.push(e);
  return { image, out, extents };
}

const text = new TextEncoder().encode("qcow2 cluster ".repeat(5000)).subarray(
  0,
  CS,
);
const random = prng(CS, 7);

Deno.test("every cluster kind reads as qemu defines it", async () => {
  const clusters = new Map<number, SynthCluster>([
    [0, { kind: "data", bytes: random }],
    [1, { kind: "data", bytes: text }],
    [2, { kind: "zero" }],
    [3, { kind: "zero", allocated: true }],
    // 4: unallocated
    [5, { kind: "compressed", bytes: deflate(text) }],
    [6, {
      kind: "compressed",
      bytes: deflate(random.slice().fill(3, 100, 60000)),
    }],
  ]);
  const bytes = synthImage({ size: 8n * BigInt(CS) }, clusters);
  for (const codecs of [undefined, webCodecs]) {
    const { out, extents } = await readAll(bytes, codecs);
    assertEquals(out.subarray(0, CS), random);
    assertEquals(out.subarray(CS, 2 * CS), text);
    assertEquals(out.subarray(2 * CS, 5 * CS), new Uint8Array(3 * CS));
    assertEquals(out.subarray(5 * CS, 6 * CS), text);
    assertEquals(
      out.subarray(6 * CS, 7 * CS),
      random.slice().fill(3, 100, 60000),
    );
    assertEquals(out.subarray(7 * CS), new Uint8Array(CS));
    assertEquals(extents.map((e) => [e.start / CS, e.length / CS, e.kind]), [
      [0, 2, "data"],
      [2, 1, "zero"],
      [3, 1, "zero"], // keeps its host cluster: a run of its own
      [4, 1, "unallocated"],
      [5, 1, "compressed"],
      [6, 1, "compressed"],
      [7, 1, "unallocated"],
    ]);
  }
});

Deno.test("zstd clusters packed back to back decompress", async () => {
  const clusters = new Map<number, SynthCluster>([
    [0, { kind: "compressed", bytes: zstd(text) }],
    [1, { kind: "compressed", bytes: zstd(random.slice().fill(0, 0, 40000)) }],
  ]);
  const bytes = synthImage(
    { size: 2n * BigInt(CS), compressionType: 1 },
    clusters,
  );
  for (const codecs of [undefined, webCodecs]) {
    const { out } = await readAll(bytes, codecs);
    assertEquals(out.subarray(0, CS), text);
    assertEquals(out.subarray(CS), random.slice().fill(0, 0, 40000));
  }
});

Deno.test("zstd without a decompressor is UNSUPPORTED_COMPRESSION", async () => {
  const clusters = new Map<number, SynthCluster>([[0, {
    kind: "compressed",
    bytes: zstd(text),
  }]]);
  const bytes = synthImage({ size: BigInt(CS), compressionType: 1 }, clusters);
  const e = await assertRejects(
    () => readAll(bytes, { zlib: webCodecs.zlib }),
    Qcow2Error,
  );
  assertEquals(e.code, "UNSUPPORTED_COMPRESSION");
});

Deno.test("reads at any offset and length agree with a whole read", async () => {
  const clusters = new Map<number, SynthCluster>([
    [0, { kind: "data", bytes: random }],
    [1, { kind: "compressed", bytes: deflate(text) }],
    [3, { kind: "data", bytes: text }],
  ]);
  const bytes = synthImage({ size: 4n * BigInt(CS) }, clusters);
  const { image, out } = await readAll(bytes);
  const rand = prng(200, 3);
  for (let i = 0; i < 100; i++) {
    const start = (rand[i] * 997 + rand[i + 100] * 13) % image.size;
    const length = Math.min(image.size - start, rand[i + 1] * 777);
    const part = new Uint8Array(length);
    await image.read(start, part);
    assertEquals(part, out.subarray(start, start + length));
  }
});

Deno.test("a virtual size that is not a cluster multiple", async () => {
  const size = 3 * CS + 4096 + 512;
  const clusters = new Map<number, SynthCluster>([[3, {
    kind: "data",
    bytes: random,
  }]]);
  const { image, out, extents } = await readAll(
    synthImage({ size: BigInt(size) }, clusters),
  );
  assertEquals(image.size, size);
  assertEquals(out.subarray(3 * CS), random.subarray(0, 4608));
  assertEquals(extents.at(-1), {
    start: 3 * CS,
    length: 4608,
    kind: "data",
    hostOffset: 4 * CS,
    depth: 0,
  });
});

Deno.test("the virtual size is rounded down to 512 as QEMU does", async () => {
  const { image } = await readAll(synthImage({ size: 1000n }, new Map()));
  assertEquals(image.size, 512);
});

// Layout of synthImage: header 0, refcount table 0x10000, L1 0x20000, the
// L2 table 0x30000, data from 0x40000.
const corrupt: [string, SynthCluster, string, RegExp][] = [
  [
    "unaligned data cluster",
    { kind: "raw", entry: 0x50200n },
    "UNALIGNED_OFFSET",
    /not aligned/,
  ],
  [
    "data cluster past EOF",
    { kind: "raw", entry: 0x7000000n },
    "OFFSET_PAST_END",
    /past the end of the file/,
  ],
  [
    "compressed cluster past EOF",
    { kind: "raw", entry: (1n << 62n) | 0x7000000n },
    "OFFSET_PAST_END",
    /past the end/,
  ],
  [
    "garbage compressed data",
    { kind: "compressed", bytes: prng(3000, 9) },
    "BAD_COMPRESSED_DATA",
    /corrupt|decompresses/,
  ],
  [
    "compressed data one byte short",
    { kind: "compressed", bytes: deflate(text.subarray(1)) },
    "BAD_COMPRESSED_DATA",
    /instead of one cluster/,
  ],
  [
    "data on the refcount table",
    { kind: "raw", entry: 0x10000n },
    "METADATA_OVERLAP",
    /refcount table/,
  ],
  [
    "data on the L1 table",
    { kind: "raw", entry: 0x20000n },
    "METADATA_OVERLAP",
    /L1 table/,
  ],
  [
    "data on an L2 table",
    { kind: "raw", entry: 0x30000n | (1n << 63n) },
    "METADATA_OVERLAP",
    /an L2 table/,
  ],
];
for (const [name, cluster, code, message] of corrupt) {
  Deno.test(`a bad L2 entry fails when read: ${name}`, async () => {
    const clusters = new Map<number, SynthCluster>([[1, cluster]]);
    const bytes = synthImage({ size: 2n * BigInt(CS) }, clusters);
    const image = await openImage(bytes);
    // The rest of the image still reads.
    await image.read(0, new Uint8Array(CS));
    const e = await assertRejects(
      () => image.read(CS, new Uint8Array(CS)),
      Qcow2Error,
    );
    assertEquals(e.code, code, e.message);
    assertEquals(message.test(e.message), true, e.message);
  });
}

Deno.test("a zero flag in a version 2 image is an error", async () => {
  const clusters = new Map<number, SynthCluster>([[0, { kind: "zero" }]]);
  const image = await openImage(synthImage({ version: 2 }, clusters));
  const e = await assertRejects(
    () => image.read(0, new Uint8Array(512)),
    Qcow2Error,
  );
  assertEquals(e.code, "BAD_TABLE_ENTRY");
});

Deno.test("unsupported features are refused at open, with names", async () => {
  const cases: [Parameters<typeof synthImage>[0], string, RegExp][] = [
    [{ incompatible: 1n << 62n }, "UNSUPPORTED_FEATURE", /bit 62/],
    [{ incompatible: 1n << 2n }, "EXTERNAL_DATA_FILE", /external data file/],
    [{ cryptMethod: 1 }, "ENCRYPTED", /AES/],
    [{ backingFile: "base.qcow2" }, "BACKING_FILE", /base\.qcow2/],
  ];
  for (const [h, code, message] of cases) {
    const e = await assertRejects(
      () => openImage(synthImage(h, new Map())),
      Qcow2Error,
    );
    assertEquals(e.code, code);
    assertEquals(message.test(e.message), true, e.message);
  }
});

Deno.test("ignoreBackingFile reads the top layer alone", async () => {
  const clusters = new Map<number, SynthCluster>([[1, {
    kind: "data",
    bytes: text,
  }]]);
  const image = await openImage(
    synthImage({ backingFile: "base.qcow2" }, clusters),
    {
      ignoreBackingFile: true,
    },
  );
  const out = new Uint8Array(2 * CS);
  await image.read(0, out);
  assertEquals(out.subarray(0, CS), new Uint8Array(CS));
  assertEquals(out.subarray(CS), text);
});

Deno.test("an L1 table past the end of the file is TRUNCATED", async () => {
  const bytes = synthImage({}, new Map()).subarray(0, 2 * CS);
  const e = await assertRejects(() => openImage(bytes), Qcow2Error);
  assertEquals(e.code, "TRUNCATED");
});

Deno.test("reads outside the virtual disk are a RangeError", async () => {
  const image = await openImage(synthImage({}, new Map()));
  await assertRejects(
    () => image.read(image.size - 10, new Uint8Array(11)),
    RangeError,
  );
  await assertRejects(() => image.read(-1, new Uint8Array(1)), RangeError);
});

Deno.test("the L2 cache stays bounded", async () => {
  // 64 L2 tables (with 512-byte clusters, one L2 covers 32 KiB of guest).
  const clusters = new Map<number, SynthCluster>();
  for (let i = 0; i < 64; i++) {
    clusters.set(i * 64, { kind: "data", bytes: prng(512, i + 1) });
  }
  const bytes = synthImage(
    { clusterBits: 9, size: 64n * 64n * 512n },
    clusters,
  );
  const image = await openImage(bytes, { l2CacheBytes: 4 * 512 });
  const out = new Uint8Array(image.size);
  await image.read(0, out);
  for (let i = 0; i < 64; i++) {
    assertEquals(
      out.subarray(i * 64 * 512, i * 64 * 512 + 512),
      prng(512, i + 1),
    );
  }
});

Deno.test("extended L2 entries: each subcluster is data, zero or unallocated", async () => {
  const sub = CS / 32;
  const host = 0x40000n; // the first data cluster, after header, refcount, L1, L2
  const clusters = new Map<number, SynthCluster>([
    [0, { kind: "data", bytes: random }],
    // Subclusters 0-3 allocated, 4-7 zero, the rest unallocated.
    [1, {
      kind: "raw",
      entry: (1n << 63n) | (host + 0x10000n),
      bitmap: (0xf0n << 32n) | 0x0fn,
    }],
    [2, { kind: "data", bytes: text }],
    // No host cluster: zero subclusters only.
    [3, { kind: "raw", entry: 0n, bitmap: 0xffff0000n << 32n }],
  ]);
  const bytes = synthImage(
    { size: 4n * BigInt(CS), incompatible: 16n },
    clusters,
  );
  // Cluster 1's host space is the second data cluster: fill it.
  bytes.set(prng(CS, 11), Number(host) + CS);
  const { out, extents } = await readAll(bytes);
  assertEquals(out.subarray(0, CS), random);
  assertEquals(
    out.subarray(CS, CS + 4 * sub),
    prng(CS, 11).subarray(0, 4 * sub),
  );
  assertEquals(
    out.subarray(CS + 4 * sub, 2 * CS),
    new Uint8Array(CS - 4 * sub),
  );
  assertEquals(out.subarray(3 * CS), new Uint8Array(CS));
  assertEquals(extents.map((e) => [e.start, e.length, e.kind]), [
    [0, CS + 4 * sub, "data"], // host-contiguous with cluster 0: merged
    [CS + 4 * sub, 4 * sub, "zero"],
    [CS + 8 * sub, 24 * sub, "unallocated"],
    [2 * CS, CS, "data"],
    [3 * CS, 16 * sub, "unallocated"],
    [3 * CS + 16 * sub, 16 * sub, "zero"],
  ]);
});

Deno.test("extended L2 entries: invalid bitmaps fail when read", async () => {
  for (
    const [entry, bitmap, message] of [
      [(1n << 63n) | 0x50000n, (1n << 32n) | 1n, /both allocated and zero/],
      [0n, 1n, /allocated subclusters in an unallocated cluster/],
    ] as const
  ) {
    const clusters = new Map<number, SynthCluster>([[0, {
      kind: "raw",
      entry,
      bitmap,
    }]]);
    const image = await openImage(
      synthImage({ size: BigInt(CS), incompatible: 16n }, clusters),
    );
    const e = await assertRejects(
      () => image.read(0, new Uint8Array(CS)),
      Qcow2Error,
    );
    assertEquals(e.code, "BAD_SUBCLUSTER_BITMAP");
    assertEquals(message.test(e.message), true, e.message);
  }
});
