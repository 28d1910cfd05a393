/**
 * The portable codecs (src/codecs/): pako's inflate and 12-bit-window
 * deflate, and the WebAssembly zstd decoder and encoder, against node:zlib
 * and against qemu-img reading clusters they compressed.
 */
import { assert, assertEquals, assertRejects, assertThrows } from "@std/assert";
import zlib from "node:zlib";
import { Qcow2Error, webCodecs } from "../mod.ts";
import { deflateRaw12, inflateRaw } from "../src/codecs/deflate.ts";
import { zstdCompress, zstdDecompress } from "../src/codecs/zstd.ts";
import { decompressCluster } from "../src/codecs/codecs.ts";
import { hasQemu, run, tempDir } from "./_reference.ts";
import { type SynthCluster, synthImage } from "./_synth.ts";

const test = Deno.test;

// ---------------------------------------------------------------------------
// Helpers

/** A small seeded PRNG (mulberry32), so every run sees the same data. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = seed;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

function randomBytes(n: number, rnd: () => number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = rnd() * 256;
  return out;
}

const WORDS = ("the of and to in is it that for on with as was by qcow2 " +
  "cluster image disk sector table header offset refcount snapshot " +
  "compressed data block backing file l1 l2 entry").split(" ");

function text(n: number, rnd: () => number): Uint8Array {
  const parts: string[] = [];
  let size = 0;
  while (size < n) {
    const w = WORDS[Math.floor(rnd() ** 2 * WORDS.length)];
    const sep = rnd() < 0.1 ? ".\n" : " ";
    parts.push(w, sep);
    size += w.length + sep.length;
  }
  return new TextEncoder().encode(parts.join("")).subarray(0, n);
}

/** Runs of random bytes, text, zeros and a short repeating pattern. */
function mixed(n: number, rnd: () => number): Uint8Array {
  const out = new Uint8Array(n);
  for (let p = 0; p < n;) {
    const k = Math.min(n - p, 1 + Math.floor(rnd() * 4096));
    const kind = Math.floor(rnd() * 4);
    if (kind === 0) out.set(randomBytes(k, rnd), p);
    else if (kind === 1) out.set(text(k, rnd), p);
    else if (kind === 3) {
      for (let i = 0; i < k; i++) out[p + i] = i * 7 & 31;
    }
    p += k;
  }
  return out;
}

function sameBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function deflate(data: Uint8Array, options: zlib.ZlibOptions = {}): Uint8Array {
  return new Uint8Array(zlib.deflateRawSync(data, options));
}

function zstd(data: Uint8Array): Uint8Array {
  return new Uint8Array(zlib.zstdCompressSync(data));
}

// ---------------------------------------------------------------------------
// Inflate (pako): agreement with zlib

const SIZES = [0, 1, 512, 65536, 2 << 20];
const C = zlib.constants;
const SETTINGS: [string, zlib.ZlibOptions][] = [
  ["level 0", { level: 0 }],
  ["level 1", { level: 1 }],
  ["level 6", { level: 6 }],
  ["level 9", { level: 9 }],
  ["Z_HUFFMAN_ONLY", { strategy: C.Z_HUFFMAN_ONLY }],
  ["Z_RLE", { strategy: C.Z_RLE }],
  ["Z_FIXED", { strategy: C.Z_FIXED }],
];
const KINDS: [string, (n: number, rnd: () => number) => Uint8Array][] = [
  ["random bytes", randomBytes],
  ["text", text],
  ["zeros", (n) => new Uint8Array(n)],
  ["mixed data", mixed],
];

for (const [kind, make] of KINDS) {
  test(`inflateRaw matches node:zlib on ${kind}`, () => {
    const rnd = prng(kind.length);
    for (const size of SIZES) {
      const data = make(size, rnd);
      for (const windowBits of [12, 15]) {
        for (const [name, options] of SETTINGS) {
          const packed = deflate(data, { ...options, windowBits });
          const out = inflateRaw(packed, size);
          assert(
            sameBytes(out, data),
            `${kind}, ${size} bytes, windowBits ${windowBits}, ${name}`,
          );
        }
      }
    }
  });
}

// ---------------------------------------------------------------------------
// Inflate: trailing bytes and the output limit

test("inflateRaw ignores bytes after the final block", () => {
  const rnd = prng(11);
  const data = text(65536, rnd);
  const other = deflate(randomBytes(1000, rnd));
  const trailers = [
    randomBytes(1, rnd),
    randomBytes(4096, rnd),
    new Uint8Array(512),
    new Uint8Array(512).fill(0xff),
    new Uint8Array([0x07, 0x07, 0x07]), // would be block type 3
    other,
  ];
  const streams = [
    deflate(data, { level: 6 }),
    deflate(data, { level: 0 }),
    deflate(data, { strategy: C.Z_FIXED }),
    deflate(data, { strategy: C.Z_HUFFMAN_ONLY }),
    deflate(data.subarray(0, 10)),
  ];
  for (const s of streams) {
    const expected = inflateRaw(s, 65536);
    assert(sameBytes(expected, data.subarray(0, expected.length)));
    for (const t of trailers) {
      assert(sameBytes(inflateRaw(concat(s, t), 65536), expected));
      // Also as a view into the middle of a larger buffer.
      const big = concat(randomBytes(5, rnd), s, t);
      const view = big.subarray(5);
      assert(sameBytes(inflateRaw(view, 65536), expected));
    }
  }
  // An empty stream followed by another stream.
  const empty = deflate(new Uint8Array(0));
  assertEquals(inflateRaw(concat(empty, other), 0).length, 0);
});

test("inflateRaw stops at maxOutput + 1 bytes", () => {
  const rnd = prng(5);
  const data = mixed(65536, rnd);
  for (const [name, options] of SETTINGS) {
    const packed = deflate(data, options);
    for (const max of [0, 1, 2, 100, 4095, 32768, 65534, 65535]) {
      const out = inflateRaw(packed, max);
      assertEquals(out.length, max + 1, `${name}, maxOutput ${max}`);
      assert(sameBytes(out, data.subarray(0, max + 1)), `${name}, ${max}`);
    }
    for (const max of [65536, 65537, 1 << 20]) {
      assert(sameBytes(inflateRaw(packed, max), data), `${name}, ${max}`);
    }
  }
  // It stops before reading the rest: the cut-off tail is never noticed.
  const packed = deflate(data, { level: 0 });
  assertEquals(inflateRaw(packed.subarray(0, 1000), 100).length, 101);
  // A long match is cut at the limit too.
  const zeros = deflate(new Uint8Array(100000));
  assertEquals(inflateRaw(zeros, 1000), new Uint8Array(1001));
});

test("inflateRaw inflates into the caller's buffer when it fits exactly", () => {
  const data = text(65536, prng(3));
  const into = new Uint8Array(65536);
  assert(inflateRaw(deflate(data), 65536, into) === into);
  assertEquals(into, data);
  // A shorter stream comes back short (the caller refuses it).
  assertEquals(
    inflateRaw(deflate(data.subarray(0, 10)), 65536, into).length,
    10,
  );
  // A longer one comes back one byte over the limit.
  assertEquals(
    inflateRaw(deflate(data), 1000, new Uint8Array(1000)).length,
    1001,
  );
});

// ---------------------------------------------------------------------------
// Inflate: malformed input

test("inflateRaw rejects corrupt and cut-short streams", () => {
  // Block type 3 does not exist.
  assertThrows(
    () => inflateRaw(new Uint8Array([0x07, 0, 0, 0]), 100),
    Error,
    "invalid block type",
  );
  // A stored block whose length check fails.
  assertThrows(
    () =>
      inflateRaw(
        new Uint8Array([0x01, 0x05, 0x00, 0xfa, 0xfe, 1, 2, 3, 4, 5]),
        100,
      ),
    Error,
    "invalid stored block lengths",
  );
  const packed = deflate(text(65536, prng(9)));
  for (const cut of [1, 10, packed.length - 1]) {
    assertThrows(
      () => inflateRaw(packed.subarray(0, cut), 65536),
      Error,
      "input ends before the deflate stream does",
    );
  }
  // The stream is still usable afterwards.
  assertEquals(inflateRaw(packed, 65536), text(65536, prng(9)));
});

test("decompressCluster names the cluster when its data is corrupt", async () => {
  for (const type of ["zlib", "zstd"] as const) {
    const e = await assertRejects(
      () =>
        decompressCluster(
          webCodecs,
          type,
          new Uint8Array([0x07, 0, 0, 0]),
          65536,
          "cluster 7",
        ),
      Qcow2Error,
    );
    assertEquals(e.code, "BAD_COMPRESSED_DATA");
    assert(
      e.message.includes(`the ${type} data of cluster 7`) || type === "zstd",
      e.message,
    );
  }
});

// ---------------------------------------------------------------------------
// Deflate with QEMU's 12-bit window (pako)

test("deflateRaw12 round-trips through node:zlib", () => {
  const rnd = prng(21);
  for (const [kind, make] of KINDS) {
    for (const size of [1, 512, 65536, 2 << 20]) {
      const data = make(size, rnd);
      const packed = deflateRaw12(data, size + 1024);
      if (!packed) continue; // random data does not fit; checked below
      const back = new Uint8Array(
        zlib.inflateRawSync(packed, { windowBits: 12 }),
      );
      assert(sameBytes(back, data), `${kind}, ${size}`);
      assert(sameBytes(inflateRaw(packed, size), data), `${kind}, ${size}`);
    }
  }
});

test("deflateRaw12 uses a 4 KiB window, as QEMU does", () => {
  const rnd = prng(22);
  // 8 KiB of random bytes repeated: a 32 KiB window finds the repeats, a
  // 4 KiB one cannot.
  const far = new Uint8Array(65536);
  const block = randomBytes(8192, rnd);
  for (let i = 0; i < 8; i++) far.set(block, i * 8192);
  assert(deflate(far, { windowBits: 15 }).length < 10000);
  assertEquals(deflateRaw12(far, 65535), undefined);
  // 2 KiB repeated is within reach.
  const near = new Uint8Array(65536);
  for (let i = 0; i < 32; i++) near.set(block.subarray(0, 2048), i * 2048);
  assert(deflateRaw12(near, 65535)!.length < 4000);
});

test("deflateRaw12 gives up when the output does not fit", () => {
  const data = randomBytes(65536, prng(23));
  assertEquals(deflateRaw12(data, 65535), undefined);
  const t = text(65536, prng(24));
  const packed = deflateRaw12(t, 65535)!;
  // As in zlib, deflate needs a byte to spare to report the end of the
  // stream; QEMU then stores the cluster uncompressed.
  assertEquals(deflateRaw12(t, packed.length + 1), packed);
  assertEquals(deflateRaw12(t, packed.length), undefined);
  // The stream state is reset after giving up.
  assertEquals(deflateRaw12(t, 65535), packed);
});

// ---------------------------------------------------------------------------
// zstd (reference zstd in WebAssembly)

test("zstdDecompress matches node:zlib and ignores what follows the frame", async () => {
  const rnd = prng(31);
  for (const [kind, make] of KINDS) {
    const data = make(65536, rnd);
    const frame = zstd(data);
    assert(sameBytes(await zstdDecompress(frame, 65536), data), kind);
    for (
      const tail of [
        new Uint8Array(511),
        randomBytes(700, rnd),
        zstd(text(100, rnd)),
      ]
    ) {
      assert(
        sameBytes(await zstdDecompress(concat(frame, tail), 65536), data),
        kind,
      );
    }
  }
});

test("zstdDecompress refuses corrupt frames and frames larger than a cluster", async () => {
  const data = text(65536, prng(32));
  const frame = zstd(data);
  await assertRejects(
    () => zstdDecompress(frame, 65535),
    Error,
    "more than one cluster",
  );
  await assertRejects(
    () => zstdDecompress(frame.subarray(0, frame.length >> 1), 65536),
    Qcow2Error,
    "cut short",
  );
  await assertRejects(
    () => zstdDecompress(new Uint8Array(16), 65536),
    Qcow2Error,
    "no zstd frame",
  );
  // A compressed block of garbage: the frame walk accepts it, zstd does not.
  for (const fill of [0x00, 0x5a, 0xff]) {
    const garbage = new Uint8Array([
      ...[0x28, 0xb5, 0x2f, 0xfd, 0x20, 100], // magic, 1-byte size 100
      ...[0x55, 0, 0], // last block, compressed, 10 bytes
      ...new Array(10).fill(fill),
    ]);
    await assertRejects(() => zstdDecompress(garbage, 100), Error, "corrupt");
  }
  // The decoder still works afterwards.
  assert(sameBytes(await zstdDecompress(frame, 65536), data));
});

test("zstdCompress round-trips through node:zlib and gives up when too large", async () => {
  const rnd = prng(33);
  for (const [kind, make] of KINDS) {
    const data = make(65536, rnd);
    const frame = await zstdCompress(data, 65535);
    if (kind === "random bytes") {
      assertEquals(frame, undefined);
      continue;
    }
    if (!frame) throw new Error(`${kind} does not compress`);
    assert(
      sameBytes(new Uint8Array(zlib.zstdDecompressSync(frame)), data),
      kind,
    );
    assertEquals(await zstdCompress(data, frame.length - 1), undefined);
  }
});

// ---------------------------------------------------------------------------
// qemu-img reads what the portable compressors wrote

for (const type of ["zlib", "zstd"] as const) {
  test({
    name: `qemu-img reads clusters compressed by webCodecs.compress.${type}`,
    ignore: !hasQemu,
    fn: async () => {
      const rnd = prng(40);
      const datas = [
        text(65536, rnd),
        mixed(65536, rnd),
        new Uint8Array(65536).fill(7),
        text(65536, rnd),
      ];
      const clusters = new Map<number, SynthCluster>();
      for (const [i, d] of datas.entries()) {
        const bytes = await webCodecs.compress![type]!(d, 65535);
        if (!bytes) throw new Error(`cluster ${i} does not compress`);
        clusters.set(i, { kind: "compressed", bytes });
      }
      const image = synthImage(
        {
          size: BigInt(datas.length * 65536),
          compressionType: type === "zstd" ? 1 : 0,
        },
        clusters,
      );
      const dir = await tempDir();
      try {
        await Deno.writeFile(`${dir}/in.qcow2`, image);
        await run("qemu-img", [
          "convert",
          "-f",
          "qcow2",
          "-O",
          "raw",
          `${dir}/in.qcow2`,
          `${dir}/out.raw`,
        ]);
        assert(
          sameBytes(await Deno.readFile(`${dir}/out.raw`), concat(...datas)),
        );
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}
