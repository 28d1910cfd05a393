import { assertEquals, assertThrows } from "@std/assert";
import { Qcow2Error } from "../src/errors.ts";
import { bytesSource } from "../src/io/source.ts";
import { parseHeader } from "../src/qcow2/header.ts";
import { readSnapshots } from "../src/qcow2/snapshots.ts";
import {
  type CompressedL2Entry,
  compressedLength,
  decodeCompressedDescriptor,
  decodeExtendedL2Entry,
  decodeL1Entry,
  decodeL1Table,
  decodeL2Entry,
  decodeL2Table,
  decodeRefcountTableEntry,
  encodeCompressedDescriptor,
  encodeExtendedL2Entry,
  encodeL1Entry,
  encodeL1Table,
  encodeL2Entry,
  encodeL2Table,
  encodeRefcountTableEntry,
  guestOffsetIndexes,
  hostClusterOffsetOf,
  type L1Entry,
  type StandardL2Entry,
} from "../src/qcow2/entries.ts";
import { compressedOffsetBits } from "../src/qcow2/layout.ts";

const MAX_OFFSET = 2 ** 53 - 512; // largest 512-aligned exact offset
const CLUSTER_BITS = Array.from({ length: 13 }, (_, i) => 9 + i);

Deno.test("L1 entries: decode(encode(x)) == x at edge values", () => {
  const entries: L1Entry[] = [
    { l2TableOffset: 0, copied: false },
    { l2TableOffset: 0, copied: true },
    { l2TableOffset: 512, copied: true },
    { l2TableOffset: 2 ** 32, copied: false },
    { l2TableOffset: 2 ** 32 - 512, copied: true },
    { l2TableOffset: MAX_OFFSET, copied: true },
    { l2TableOffset: 0x30000, copied: false, reserved: 1n },
    { l2TableOffset: 0x30000, copied: false, reserved: 0x7f000000000001ffn },
  ];
  for (const e of entries) assertEquals(decodeL1Entry(encodeL1Entry(e)), e);
  assertEquals(
    encodeL1Entry({ l2TableOffset: MAX_OFFSET, copied: true }),
    (1n << 63n) | BigInt(MAX_OFFSET),
  );
});

Deno.test("L1 entries: offsets past 2^53 are OFFSET_PAST_END; impossible offsets are RangeError", () => {
  const e = assertThrows(() => decodeL1Entry(1n << 53n), Qcow2Error);
  assertEquals(e.code, "OFFSET_PAST_END");
  assertEquals(hostClusterOffsetOf(0x00200000, 0), -1);
  assertEquals(hostClusterOffsetOf(0x001fffff, 0xfffffe00), MAX_OFFSET);
  for (const bad of [-512, 100, 1.5, 2 ** 53, NaN]) {
    assertThrows(
      () => encodeL1Entry({ l2TableOffset: bad, copied: false }),
      RangeError,
    );
  }
  assertThrows(
    () =>
      encodeL1Entry({ l2TableOffset: 0, copied: false, reserved: 1n << 63n }),
    RangeError,
  );
});

Deno.test("standard L2 entries: decode(encode(x)) == x at edge values", () => {
  const entries: StandardL2Entry[] = [
    { kind: "standard", hostClusterOffset: 0, copied: false, zero: false },
    { kind: "standard", hostClusterOffset: 0, copied: false, zero: true },
    { kind: "standard", hostClusterOffset: 0, copied: true, zero: false },
    { kind: "standard", hostClusterOffset: 0x50000, copied: true, zero: true },
    {
      kind: "standard",
      hostClusterOffset: MAX_OFFSET,
      copied: true,
      zero: false,
    },
    {
      kind: "standard",
      hostClusterOffset: 512,
      copied: false,
      zero: false,
      reserved: 0x3f000000000001fen,
    },
  ];
  for (const bits of CLUSTER_BITS) {
    for (const e of entries) {
      assertEquals(decodeL2Entry(encodeL2Entry(e, bits), bits), e);
      const raw = encodeL2Entry(e, bits);
      assertEquals(
        hostClusterOffsetOf(Number(raw >> 32n), Number(raw & 0xffffffffn)),
        e.hostClusterOffset,
      );
    }
  }
  const e = assertThrows(
    () => decodeL2Entry((1n << 55n) | 0x10000n, 16),
    Qcow2Error,
  );
  assertEquals(e.code, "OFFSET_PAST_END");
  assertThrows(
    () =>
      encodeL2Entry({
        kind: "standard",
        hostClusterOffset: 1,
        copied: false,
        zero: false,
      }, 16),
    RangeError,
  );
  assertThrows(
    () =>
      encodeL2Entry({
        kind: "standard",
        hostClusterOffset: 0,
        copied: false,
        zero: false,
      }, 22),
    RangeError,
  );
});

Deno.test("compressed cluster descriptors: decode(encode(x)) == x for cluster_bits 9..21", () => {
  for (const bits of CLUSTER_BITS) {
    const x = compressedOffsetBits(bits);
    const maxOffset = Math.min(2 ** x - 1, Number.MAX_SAFE_INTEGER);
    const maxSectors = 2 ** (bits - 8) - 1;
    for (const hostOffset of [0, 1, 511, 0x50123, 2 ** 32 + 7, maxOffset]) {
      for (const additionalSectors of [0, 1, maxSectors]) {
        for (const copied of [false, true]) {
          const e: CompressedL2Entry = {
            kind: "compressed",
            hostOffset,
            additionalSectors,
            copied,
          };
          const raw = encodeL2Entry(e, bits);
          assertEquals(decodeL2Entry(raw, bits), e, `cluster_bits ${bits}`);
          assertEquals(
            decodeCompressedDescriptor(
              encodeCompressedDescriptor(hostOffset, additionalSectors, bits),
              bits,
            ),
            { hostOffset, additionalSectors },
          );
          // The descriptor spans bits 0-61 and nothing else.
          assertEquals(raw & (1n << 62n), 1n << 62n);
        }
      }
    }
    // One bit too many for each field.
    assertThrows(
      () => encodeCompressedDescriptor(0, maxSectors + 1, bits),
      RangeError,
    );
    if (x <= 53) {
      assertThrows(
        () => encodeCompressedDescriptor(2 ** x, 0, bits),
        RangeError,
      );
    } else {
      const e = assertThrows(
        () => decodeCompressedDescriptor(1n << 53n, bits),
        Qcow2Error,
      );
      assertEquals(e.code, "OFFSET_PAST_END");
    }
  }
  // The sector count sits right above the offset: 64 KiB clusters, x = 54.
  assertEquals(encodeCompressedDescriptor(0, 1, 16), 1n << 54n);
  assertEquals(compressedLength(0x50123, 3), 4 * 512 - 0x123);
});

Deno.test("extended L2 entries: decode(encode(x)) == x with both bitmaps", () => {
  for (const bits of CLUSTER_BITS) {
    for (
      const [allocationBitmap, zeroBitmap] of [
        [0, 0],
        [0xffffffff, 0],
        [0, 0xffffffff],
        [0x0000ffff, 0xffff0000],
        [1, 0x80000000],
      ]
    ) {
      const e = {
        kind: "standard" as const,
        hostClusterOffset: 2 ** bits * 3,
        copied: true,
        zero: false,
        allocationBitmap,
        zeroBitmap,
      };
      const [raw, bitmap] = encodeExtendedL2Entry(e, bits);
      assertEquals(decodeExtendedL2Entry(raw, bitmap, bits), e);
      assertEquals(
        bitmap,
        (BigInt(zeroBitmap) << 32n) | BigInt(allocationBitmap),
      );
    }
  }
  assertThrows(
    () =>
      encodeExtendedL2Entry({
        kind: "standard",
        hostClusterOffset: 0,
        copied: false,
        zero: false,
        allocationBitmap: 2 ** 32,
        zeroBitmap: 0,
      }, 16),
    RangeError,
  );
});

Deno.test("refcount table entries: decode(encode(x)) == x", () => {
  for (const refcountBlockOffset of [0, 512, 0x10000, MAX_OFFSET]) {
    assertEquals(
      decodeRefcountTableEntry(
        encodeRefcountTableEntry({ refcountBlockOffset }),
      ),
      { refcountBlockOffset },
    );
  }
  const e = assertThrows(() => decodeRefcountTableEntry(1n << 63n), Qcow2Error);
  assertEquals(e.code, "OFFSET_PAST_END");
  assertThrows(
    () => encodeRefcountTableEntry({ refcountBlockOffset: 1000 }),
    RangeError,
  );
});

Deno.test("guest offsets: L1 index, L2 index and subcluster", () => {
  assertEquals(guestOffsetIndexes(0, 9, false), {
    l1Index: 0,
    l2Index: 0,
    offsetInCluster: 0,
    subcluster: 0,
  });
  // 512-byte clusters: 64 entries per L2 table.
  assertEquals(guestOffsetIndexes(64 * 512 + 513, 9, false), {
    l1Index: 1,
    l2Index: 1,
    offsetInCluster: 1,
    subcluster: 0,
  });
  // 2 MiB clusters, extended: 131072 entries; 64 KiB subclusters.
  assertEquals(
    guestOffsetIndexes(2 ** 21 * 131072 + 2 ** 21 + 2 ** 21 - 1, 21, true),
    { l1Index: 1, l2Index: 1, offsetInCluster: 2 ** 21 - 1, subcluster: 31 },
  );
  assertThrows(() => guestOffsetIndexes(-1, 16, false), RangeError);
});

/** Every qcow2 image under tests/fixtures, layouts/ included. */
function qcow2Fixtures(): URL[] {
  const fixtures = new URL("./fixtures/", import.meta.url);
  const out: URL[] = [];
  for (const dir of [fixtures, new URL("layouts/", fixtures)]) {
    for (const e of Deno.readDirSync(dir)) {
      if (e.isFile && e.name.endsWith(".qcow2")) out.push(new URL(e.name, dir));
    }
  }
  return out;
}

function same(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && a.every((v, i) => v === b[i]);
}

Deno.test("every L1, L2 and refcount table of the fixtures re-encodes to its bytes", async () => {
  let l2Tables = 0;
  let compressed = 0;
  let subclusters = 0;
  for (const url of qcow2Fixtures()) {
    const name = url.pathname.split("/fixtures/")[1];
    const bytes = Deno.readFileSync(url);
    const header = parseHeader(bytes);
    const { clusterBits, clusterSize } = header;
    const extended = header.features.extendedL2;
    const l1Tables = [{ offset: header.l1TableOffset, size: header.l1Size }];
    for (const s of await readSnapshots(bytesSource(bytes), header)) {
      l1Tables.push({ offset: s.l1TableOffset, size: s.l1Size });
    }
    for (const { offset, size } of l1Tables) {
      const l1Bytes = bytes.subarray(offset, offset + size * 8);
      const l1 = decodeL1Table(l1Bytes);
      assertEquals(
        same(encodeL1Table(l1), l1Bytes),
        true,
        `${name}: L1 table at ${offset}`,
      );
      for (const { l2TableOffset } of l1) {
        if (l2TableOffset === 0 || l2TableOffset >= bytes.length) continue;
        const l2Bytes = bytes.subarray(
          l2TableOffset,
          l2TableOffset + clusterSize,
        );
        const l2 = decodeL2Table(l2Bytes, clusterBits, extended);
        assertEquals(
          same(encodeL2Table(l2, clusterBits, extended), l2Bytes),
          true,
          `${name}: L2 table at ${l2TableOffset}`,
        );
        l2Tables++;
        compressed += l2.filter((e) => e.kind === "compressed").length;
        subclusters += l2.filter((e) =>
          "allocationBitmap" in e && e.allocationBitmap !== 0 &&
          e.allocationBitmap !== 0xffffffff
        ).length;
      }
    }
    const rtBytes = bytes.subarray(
      header.refcountTableOffset,
      header.refcountTableOffset + header.refcountTableClusters * clusterSize,
    );
    const view = new DataView(
      rtBytes.buffer,
      rtBytes.byteOffset,
      rtBytes.byteLength,
    );
    for (let at = 0; at < rtBytes.length; at += 8) {
      const raw = view.getBigUint64(at);
      assertEquals(
        encodeRefcountTableEntry(decodeRefcountTableEntry(raw)),
        raw,
        `${name}: refcount table entry ${at / 8}`,
      );
    }
  }
  // The fixtures cover every kind of entry.
  assertEquals(
    l2Tables > 20 && compressed > 10 && subclusters > 0,
    true,
    `${l2Tables} L2 tables, ${compressed} compressed, ${subclusters} partial`,
  );
});
