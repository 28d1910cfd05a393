/**
 * Micro-benchmarks of the reader, on images built in memory (no disk I/O in
 * the timed part). Run from the repository root:
 *
 * ```sh
 * deno task bench
 * # or: deno bench --allow-read --allow-write --allow-run bench/
 * ```
 *
 * Every case is run once at setup and its result checked against the
 * expected bytes, so a bench cannot silently time an error path.
 *
 * @module
 */

import { deflateRawSync, zstdCompressSync } from "node:zlib";
import { assert, assertEquals } from "@std/assert";
import { type Extent, openImage, parseHeader, webCodecs } from "../mod.ts";
import { prng, type SynthCluster, synthImage } from "../tests/_synth.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const CLUSTER = 64 * KiB;
const READ = 2 * MiB;
const CLUSTERS = READ / CLUSTER; // 32
/** Guest cluster where the 2 MiB read starts (not at 0, to pass an L1 lookup). */
const FIRST = 64;

// ---------------------------------------------------------------- helpers

/** Deterministic text-like bytes (compress about 3:1 with deflate). */
function textLike(length: number, seed: number): Uint8Array {
  const words = [
    "the",
    "qcow2",
    "cluster",
    "table",
    "offset",
    "guest",
    "host",
    "data",
    "image",
    "backing",
    "snapshot",
    "refcount",
    "header",
    "sector",
    "zlib",
    "error",
    "kernel:",
    "INFO",
    "WARN",
    "[ok]",
    "/usr/lib/",
    "systemd",
    "0x7f3a",
    "==>",
    "{",
    "}",
    "return",
    "const",
    "function",
    "for",
  ];
  const rnd = prng(length, seed);
  const out = new Uint8Array(length);
  const enc = new TextEncoder();
  let p = 0;
  let r = 0;
  while (p < length) {
    const b = rnd[r++ % length];
    const word = b < 16
      ? `${(b * 7919 + r) % 100000}` // numbers do not repeat much
      : words[b % words.length];
    const bytes = enc.encode(b % 11 === 0 ? word + "\n" : word + " ");
    out.set(bytes.subarray(0, length - p), p);
    p += bytes.length;
  }
  return out;
}

/** The 2 MiB a read at guest cluster FIRST should return. */
function expected(clusters: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(READ);
  clusters.forEach((c, i) => out.set(c, i * CLUSTER));
  return out;
}

/** An image (64 MiB, 64 KiB clusters) with `clusters` from guest cluster FIRST. */
function imageWith(
  make: (bytes: Uint8Array) => SynthCluster,
  clusters: Uint8Array[],
  compressionType = 0,
): Uint8Array {
  const map = new Map<number, SynthCluster>();
  clusters.forEach((c, i) => map.set(FIRST + i, make(c)));
  return synthImage({ size: 64n * BigInt(MiB), compressionType }, map);
}

/** Opens `file`, reads the 2 MiB, closes: the unit each read bench times. */
async function openAndRead(
  file: Uint8Array,
  buffer: Uint8Array,
  options: Parameters<typeof openImage>[1] = {},
): Promise<void> {
  const image = await openImage(file, options);
  try {
    await image.read(FIRST * CLUSTER, buffer);
  } finally {
    image.close();
  }
}

/** Runs one read at setup and checks it returns `want`. */
async function check(
  file: Uint8Array,
  want: Uint8Array,
  options: Parameters<typeof openImage>[1] = {},
): Promise<void> {
  const got = new Uint8Array(READ);
  await openAndRead(file, got, options);
  assert(got.length === want.length && got.every((b, i) => b === want[i]));
}

// ----------------------------------------------------------------- header

const headerFile = await Deno.readFile(
  new URL("../tests/fixtures/v3_64k.qcow2", import.meta.url),
);
const headerBytes = headerFile.slice(0, CLUSTER);
{
  const h = parseHeader(headerBytes);
  assertEquals(h.version, 3);
  assertEquals(h.size, 4 * MiB);
}

Deno.bench({
  name: "parseHeader (qemu-img v3 header with extensions)",
  group: "header",
  fn() {
    parseHeader(headerBytes);
  },
});

// ----------------------------------------------------------- uncompressed

const plainData = Array.from(
  { length: CLUSTERS },
  (_, i) => prng(CLUSTER, i + 1),
);
const plainWant = expected(plainData);
const plainFile = imageWith((bytes) => ({ kind: "data", bytes }), plainData);
await check(plainFile, plainWant);
const plainImage = await openImage(plainFile);
const plainBuffer = new Uint8Array(READ);

Deno.bench({
  name: "openImage + read 2 MiB uncompressed",
  group: "read 2 MiB uncompressed",
  baseline: true,
  async fn() {
    await openAndRead(plainFile, plainBuffer);
  },
});

Deno.bench({
  name: "read 2 MiB uncompressed (image already open)",
  group: "read 2 MiB uncompressed",
  async fn() {
    await plainImage.read(FIRST * CLUSTER, plainBuffer);
  },
});

// ------------------------------------------------------------------- zlib

const textData = Array.from(
  { length: CLUSTERS },
  (_, i) => textLike(CLUSTER, i + 101),
);
const textWant = expected(textData);
// QEMU writes raw deflate with a 4 KiB window (windowBits -12).
const zlibFile = imageWith(
  (bytes) => ({
    kind: "compressed",
    bytes: deflateRawSync(bytes, { windowBits: 12 }),
  }),
  textData,
);
const zlibRatio = textData.reduce(
  (n, c) => n + deflateRawSync(c, { windowBits: 12 }).length,
  0,
) / READ;
console.log(
  `zlib: compressed to ${(zlibRatio * 100).toFixed(0)}% of 2 MiB`,
);
await check(zlibFile, textWant);
const zlibBuffer = new Uint8Array(READ);

Deno.bench({
  name: "openImage + read 2 MiB zlib (node:zlib, default)",
  group: "read 2 MiB zlib",
  baseline: true,
  async fn() {
    await openAndRead(zlibFile, zlibBuffer);
  },
});

await check(zlibFile, textWant, { codecs: webCodecs });

Deno.bench({
  name: "openImage + read 2 MiB zlib (webCodecs, pako)",
  group: "read 2 MiB zlib",
  async fn() {
    await openAndRead(zlibFile, zlibBuffer, { codecs: webCodecs });
  },
});

// ------------------------------------------------------------------- zstd

const zstdFile = imageWith(
  (bytes) => ({ kind: "compressed", bytes: zstdCompressSync(bytes) }),
  textData,
  1,
);
await check(zstdFile, textWant);
const zstdBuffer = new Uint8Array(READ);

Deno.bench({
  name: "openImage + read 2 MiB zstd (node:zlib)",
  group: "read 2 MiB zstd",
  baseline: true,
  async fn() {
    await openAndRead(zstdFile, zstdBuffer);
  },
});

await check(zstdFile, textWant, { codecs: webCodecs });

Deno.bench({
  name: "openImage + read 2 MiB zstd (webCodecs, zstddec WebAssembly)",
  group: "read 2 MiB zstd",
  async fn() {
    await openAndRead(zstdFile, zstdBuffer, { codecs: webCodecs });
  },
});

// ---------------------------------------------------------------- extents

// 1 TiB virtual disk: 2048 L1 entries, 64 of them (one every 16 GiB) with an
// L2 table holding 4 data clusters and 2 zero clusters; the rest unallocated.
const TiB = 2 ** 40;
const L2_SPAN = (CLUSTER / 8) * CLUSTER; // 512 MiB per L2 table
const sparseMap = new Map<number, SynthCluster>();
const filler = prng(CLUSTER, 7);
for (let t = 0; t < 64; t++) {
  const base = (t * 32 * L2_SPAN) / CLUSTER + 100;
  for (let i = 0; i < 4; i++) {
    sparseMap.set(base + i, { kind: "data", bytes: filler });
  }
  sparseMap.set(base + 1000, { kind: "zero" });
  sparseMap.set(base + 1001, { kind: "zero" });
}
const sparseFile = synthImage({ size: BigInt(TiB) }, sparseMap);
const sparseImage = await openImage(sparseFile);

async function walkExtents(): Promise<Extent[]> {
  const all: Extent[] = [];
  for await (const e of sparseImage.extents()) all.push(e);
  return all;
}
{
  const all = await walkExtents();
  const bytesOf = (kind: string) =>
    all.filter((e) => e.kind === kind).reduce((n, e) => n + e.length, 0);
  assertEquals(all.reduce((n, e) => n + e.length, 0), TiB);
  assertEquals(bytesOf("data"), 64 * 4 * CLUSTER);
  assertEquals(bytesOf("zero"), 64 * 2 * CLUSTER);
  // Each table: unallocated, data, unallocated, zero, then unallocated
  // merged into the next table's leading run.
  assertEquals(all.length, 64 * 4 + 1);
}

Deno.bench({
  name: "extents() over a 1 TiB sparse image (64 L2 tables)",
  group: "extents",
  async fn() {
    let n = 0;
    for await (const _ of sparseImage.extents()) n++;
    if (n !== 257) throw new Error(`expected 257 extents, got ${n}`);
  },
});
