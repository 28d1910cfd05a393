import { assert, assertEquals, assertThrows } from "@std/assert";
import { parseHeader, Qcow2Error, type Qcow2ErrorCode } from "../mod.ts";
import { type SynthHeader, text, writeHeader } from "./_synth.ts";

function header(h: SynthHeader = {}, length = 1 << (h.clusterBits ?? 16)) {
  const bytes = new Uint8Array(length + 1024);
  writeHeader(bytes, h);
  return bytes;
}

function u32(n: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, n);
  return b;
}

function be(...parts: [number, 4 | 8][]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, [, s]) => n + s, 0));
  const v = new DataView(out.buffer);
  let p = 0;
  for (const [value, size] of parts) {
    if (size === 4) v.setUint32(p, value);
    else v.setBigUint64(p, BigInt(value));
    p += size;
  }
  return out;
}

Deno.test("parseHeader reads every v3 field", () => {
  const h = parseHeader(header({
    clusterBits: 12,
    size: 5n << 30n,
    l1Size: 2560,
    l1TableOffset: 0x5000n,
    refcountTableOffset: 0x1000n,
    refcountTableClusters: 2,
    nbSnapshots: 3,
    snapshotsOffset: 0x9000n,
    incompatible: 1n | 2n,
    compatible: 1n,
    autoclear: 3n,
    refcountOrder: 6,
    compressionType: 1,
  }));
  assertEquals(h.magic, 0x514649fb);
  assertEquals(h.version, 3);
  assertEquals(h.backingFileOffset, 0);
  assertEquals(h.backingFileSize, 0);
  assertEquals(h.backingFile, undefined);
  assertEquals(h.clusterBits, 12);
  assertEquals(h.clusterSize, 4096);
  assertEquals(h.size, 5 * 2 ** 30);
  assertEquals(h.cryptMethod, 0);
  assertEquals(h.l1Size, 2560);
  assertEquals(h.l1TableOffset, 0x5000);
  assertEquals(h.refcountTableOffset, 0x1000);
  assertEquals(h.refcountTableClusters, 2);
  assertEquals(h.nbSnapshots, 3);
  assertEquals(h.snapshotsOffset, 0x9000);
  assertEquals(h.incompatibleFeatures, 1n | 2n | 8n);
  assertEquals(h.compatibleFeatures, 1n);
  assertEquals(h.autoclearFeatures, 3n);
  assertEquals(h.features, {
    dirty: true,
    corrupt: true,
    externalDataFile: false,
    compressionType: "zstd",
    extendedL2: false,
    lazyRefcounts: true,
    bitmaps: true,
    rawExternalData: true,
  });
  assertEquals(h.unknownIncompatibleFeatures, 0n);
  assertEquals(h.refcountOrder, 6);
  assertEquals(h.refcountBits, 64);
  assertEquals(h.headerLength, 112);
  assertEquals(h.compressionType, "zstd");
});

Deno.test("parseHeader gives a v2 header the v3 defaults", () => {
  const bytes = header({ version: 2 });
  // Bytes past 72 belong to extensions in v2, never to v3 fields.
  const h = parseHeader(bytes);
  assertEquals(h.version, 2);
  assertEquals(h.headerLength, 72);
  assertEquals(h.refcountOrder, 4);
  assertEquals(h.refcountBits, 16);
  assertEquals(h.compressionType, "zlib");
  assertEquals(h.incompatibleFeatures, 0n);
  assertEquals(h.compatibleFeatures, 0n);
  assertEquals(h.autoclearFeatures, 0n);
  assertEquals(h.features.dirty, false);
});

Deno.test("parseHeader: a 104-byte v3 header has zlib compression", () => {
  const h = parseHeader(header({ headerLength: 104 }));
  assertEquals(h.headerLength, 104);
  assertEquals(h.compressionType, "zlib");
});

Deno.test("parseHeader reads the backing file name", () => {
  const h = parseHeader(header({ backingFile: "base image.qcow2" }));
  assertEquals(h.backingFile, "base image.qcow2");
  assertEquals(h.backingFileSize, 16);
  assertEquals(h.backingFileOffset, 120);
});

Deno.test("parseHeader reads every header extension", () => {
  const features = new Uint8Array(48 * 3);
  features.set([0, 0, ...text("dirty bit")], 0);
  features.set([1, 0, ...text("lazy refcounts")], 48);
  features.set([0, 62, ...text("future thing")], 96);
  const h = parseHeader(header({
    cryptMethod: 2,
    backingFile: "base.qcow2",
    extensions: [
      { type: 0xe2792aca, data: text("qcow2") },
      { type: 0x6803f857, data: features },
      { type: 0x23852875, data: be([2, 4], [0, 4], [4096, 8], [0x40000, 8]) },
      { type: 0x0537be77, data: be([0x20000, 8], [0x100000, 8]) },
      { type: 0x44415441, data: text("data.raw") },
      { type: 0x12345678, data: new Uint8Array([1, 2, 3]) },
    ],
  }));
  const x = h.extensions;
  assertEquals(x.backingFormat, "qcow2");
  assertEquals(x.featureNames, [
    { type: "incompatible", bit: 0, name: "dirty bit" },
    { type: "compatible", bit: 0, name: "lazy refcounts" },
    { type: "incompatible", bit: 62, name: "future thing" },
  ]);
  assertEquals(x.bitmaps, {
    count: 2,
    directorySize: 4096,
    directoryOffset: 0x40000,
  });
  assertEquals(x.encryption, { offset: 0x20000, length: 0x100000 });
  assertEquals(x.externalDataFile, "data.raw");
  assertEquals(x.unknown, [{
    type: 0x12345678,
    data: new Uint8Array([1, 2, 3]),
  }]);
  assertEquals(h.backingFile, "base.qcow2");
});

Deno.test("parseHeader stops extensions at the end marker", () => {
  const bytes = header({
    extensions: [{ type: 0xe2792aca, data: text("raw") }],
  });
  // Garbage after the end marker is not an extension.
  bytes.set(u32(0xe2792aca), 112 + 16 + 8);
  bytes.set(u32(0xffffff), 112 + 16 + 12);
  assertEquals(parseHeader(bytes).extensions.backingFormat, "raw");
});

const rejects: [
  string,
  SynthHeader | ((b: Uint8Array) => void),
  Qcow2ErrorCode,
  RegExp,
][] = [
  ["bad magic", (b) => (b[0] = 0), "BAD_MAGIC", /magic/],
  ["version 1", { version: 1 }, "UNSUPPORTED_VERSION", /version 1/],
  ["version 4", { version: 4 }, "UNSUPPORTED_VERSION", /version 4/],
  ["cluster_bits 8", { clusterBits: 8 }, "BAD_HEADER", /cluster_bits = 8/],
  ["cluster_bits 22", { clusterBits: 22 }, "BAD_HEADER", /cluster_bits/],
  ["v3 header_length 96", { headerLength: 96 }, "BAD_HEADER", /header_length/],
  [
    "header_length past cluster",
    (b) => new DataView(b.buffer).setUint32(100, 0x7fffffff),
    "BAD_HEADER",
    /exceeds the cluster size/,
  ],
  ["refcount_order 7", { refcountOrder: 7 }, "BAD_HEADER", /refcount_order/],
  ["crypt_method 3", { cryptMethod: 3 }, "BAD_HEADER", /crypt_method/],
  [
    "LUKS without FDE extension",
    { cryptMethod: 2 },
    "BAD_HEADER",
    /full disk encryption/,
  ],
  ["compression type 2", (b) => (b[104] = 2), "BAD_HEADER", /compression_type/],
  [
    "zstd without bit 3",
    (b) => (b[104] = 1),
    "BAD_HEADER",
    /lacks the compression type bit/,
  ],
  [
    "bit 3 with zlib",
    { incompatible: 8n },
    "BAD_HEADER",
    /compression type bit set/,
  ],
  [
    "refcount_table_clusters 0",
    { refcountTableClusters: 0 },
    "BAD_HEADER",
    /no refcount table/,
  ],
  [
    "refcount table too large",
    { refcountTableClusters: 0x00020001 },
    "BAD_HEADER",
    /8 MiB/,
  ],
  [
    "refcount table offset unaligned",
    { refcountTableOffset: 0x10200n },
    "BAD_HEADER",
    /refcount_table_offset/,
  ],
  [
    "refcount table offset huge",
    { refcountTableOffset: 0x1234567890abcdefn },
    "TOO_LARGE",
    /refcount_table_offset/,
  ],
  [
    "nb_snapshots huge",
    { nbSnapshots: 0xffffffff },
    "BAD_HEADER",
    /nb_snapshots/,
  ],
  [
    "snapshots_offset unaligned",
    { snapshotsOffset: 0x10001n },
    "BAD_HEADER",
    /snapshots_offset/,
  ],
  ["l1_size huge", { l1Size: 0x7fffffff }, "BAD_HEADER", /32 MiB/],
  [
    "l1 offset unaligned",
    { l1TableOffset: 0x30200n },
    "BAD_HEADER",
    /l1_table_offset/,
  ],
  [
    "l1 offset huge",
    { l1TableOffset: 1n << 62n },
    "TOO_LARGE",
    /l1_table_offset/,
  ],
  ["L1 too small", { size: 1n << 40n, l1Size: 1 }, "BAD_HEADER", /too small/],
  ["1 EB virtual size", { size: 1n << 60n, l1Size: 0 }, "TOO_LARGE", /size/],
  [
    "backing offset past cluster",
    (b) => new DataView(b.buffer).setBigUint64(8, 0x20000n),
    "BAD_HEADER",
    /backing_file_offset/,
  ],
  [
    "backing name too long",
    (b) => {
      new DataView(b.buffer).setBigUint64(8, 0x200n);
      new DataView(b.buffer).setUint32(16, 0xffffffff);
    },
    "BAD_HEADER",
    /backing_file_size/,
  ],
  [
    "extension too large",
    { extensions: [{ type: 0x1234, data: new Uint8Array(8) }] },
    "BAD_EXTENSION",
    /too large/,
  ],
  [
    "backing format too long",
    { extensions: [{ type: 0xe2792aca, data: text("0123456789abcdef") }] },
    "BAD_EXTENSION",
    /backing format/,
  ],
  [
    "bitmaps wrong length",
    { extensions: [{ type: 0x23852875, data: new Uint8Array(16) }] },
    "BAD_EXTENSION",
    /bitmaps/,
  ],
  [
    "bitmaps count 0",
    {
      extensions: [{
        type: 0x23852875,
        data: be([0, 4], [0, 4], [0, 8], [0, 8]),
      }],
    },
    "BAD_EXTENSION",
    /bitmaps/,
  ],
  [
    "FDE without LUKS",
    { extensions: [{ type: 0x0537be77, data: new Uint8Array(16) }] },
    "BAD_EXTENSION",
    /not LUKS/,
  ],
];

for (const [name, change, code, message] of rejects) {
  Deno.test(`parseHeader rejects: ${name}`, () => {
    let bytes: Uint8Array;
    if (typeof change === "function") {
      bytes = header();
      change(bytes);
    } else {
      bytes = header(
        change,
        1 << Math.min(21, Math.max(9, change.clusterBits ?? 16)),
      );
    }
    if (name === "extension too large") {
      // Claim a length that runs past the end of the first cluster.
      new DataView(bytes.buffer).setUint32(116, 0x7fffffff);
    }
    const e = assertThrows(() => parseHeader(bytes), Qcow2Error);
    assertEquals(e.code, code, e.message);
    assert(message.test(e.message), e.message);
    assert(e.message.startsWith("Cannot read qcow2 image"), e.message);
  });
}

Deno.test("parseHeader reports a truncated header", () => {
  const bytes = header().subarray(0, 50);
  const e = assertThrows(() => parseHeader(bytes), Qcow2Error);
  assertEquals(e.code, "TRUNCATED");
});

Deno.test("parseHeader refuses the empty file", () => {
  assertEquals(
    assertThrows(() => parseHeader(new Uint8Array(0)), Qcow2Error).code,
    "BAD_MAGIC",
  );
});
