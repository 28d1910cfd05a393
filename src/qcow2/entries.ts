/**
 * Decode and encode every kind of qcow2 table entry, in the spec's terms:
 * L1 entries (L2 table offset), standard L2 entries (host cluster offset,
 * COPIED, zero flag), compressed cluster descriptors (host offset and
 * additional sectors), extended L2 entries (with subcluster allocation and
 * zero bitmaps) and refcount table entries (refcount block offset); and the
 * arithmetic from a guest offset to its L1 index, L2 index and subcluster.
 *
 * Decoders take the entry as a bigint (or as its two big-endian 32-bit
 * halves, for the reader's hot path) and never trust it: an offset that an
 * exact number cannot hold (2^53 and above, past any real file) is a
 * {@linkcode Qcow2Error} `OFFSET_PAST_END`. Encoders take what a writer
 * built and refuse impossible values with a `RangeError`.
 *
 * Source: `docs/interop/qcow2.txt` "Cluster mapping", "Compressed Clusters
 * Descriptor", "Extended L2 Entries", "Host cluster management"; QEMU
 * `block/qcow2.h` (`L1E_OFFSET_MASK`, `L2E_OFFSET_MASK`, `QCOW_OFLAG_*`) and
 * `qcow2_parse_compressed_l2_entry` in `block/qcow2-cluster.c`.
 *
 * @module
 */

import { hex, Qcow2Error } from "../errors.ts";
import {
  COMPRESSED,
  COMPRESSED_SECTOR_SIZE,
  compressedOffsetBits,
  COPIED,
  ENTRY_SIZE,
  EXTENDED_ENTRY_SIZE,
  L1_OFFSET_MASK,
  L1_RESERVED_MASK,
  L2_OFFSET_MASK,
  L2_STD_RESERVED_MASK,
  MAX_CLUSTER_BITS,
  MAX_SAFE_OFFSET,
  MIN_CLUSTER_BITS,
  REFCOUNT_TABLE_OFFSET_MASK,
  REFCOUNT_TABLE_RESERVED_MASK,
  SUBCLUSTER_ALLOC_MASK,
  SUBCLUSTER_ZERO_SHIFT,
  SUBCLUSTERS_PER_CLUSTER,
  ZERO_FLAG,
} from "./layout.ts";

const TWO_32 = 2 ** 32;

/**
 * An L1 table entry: where the L2 table lies.
 *
 * @example Decoding an entry with the COPIED flag
 * ```ts
 * import { decodeL1Entry, encodeL1Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const entry = decodeL1Entry(0x8000000000030000n);
 * assertEquals(entry, { l2TableOffset: 0x30000, copied: true });
 * assertEquals(encodeL1Entry(entry), 0x8000000000030000n);
 * ```
 */
export interface L1Entry {
  /** File offset of the L2 table (bits 9-55), 0 when unallocated. */
  l2TableOffset: number;
  /** Bit 63: the L2 table's refcount is exactly one. */
  copied: boolean;
  /** Reserved bits (1-8, 56-62) that are set, absent when none. */
  reserved?: bigint;
}

/**
 * A standard (uncompressed) L2 entry.
 *
 * @example The entry QEMU writes for a freshly allocated cluster
 * ```ts
 * import { decodeL2Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(decodeL2Entry(0x8000000000050000n, 16), {
 *   kind: "standard",
 *   hostClusterOffset: 0x50000,
 *   copied: true,
 *   zero: false,
 * });
 * ```
 */
export interface StandardL2Entry {
  /** Tells this from a compressed cluster descriptor. */
  kind: "standard";
  /**
   * File offset of the host cluster (bits 9-55); 0 when unallocated (or,
   * with an external data file, cluster 0 when `copied` is set).
   */
  hostClusterOffset: number;
  /** Bit 63: the cluster's refcount is exactly one. */
  copied: boolean;
  /** Bit 0 (version 3, standard entries): the cluster reads as zeros. */
  zero: boolean;
  /** Reserved bits (1-8, 56-61) that are set, absent when none. */
  reserved?: bigint;
}

/**
 * An L2 entry of a compressed cluster: bit 62 set, and the compressed
 * cluster descriptor in bits 0-61.
 *
 * @example A compressed cluster of 64 KiB clusters
 * ```ts
 * import { decodeL2Entry, encodeL2Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // Host offset 0x50123, 3 sectors after the first: 4 sectors in all.
 * const raw = (1n << 62n) | (3n << 54n) | 0x50123n;
 * const entry = decodeL2Entry(raw, 16);
 * assertEquals(entry, { kind: "compressed", hostOffset: 0x50123, additionalSectors: 3, copied: false });
 * assertEquals(encodeL2Entry(entry, 16), raw);
 * ```
 */
export interface CompressedL2Entry {
  /** Tells this from a standard entry. */
  kind: "compressed";
  /** File offset of the compressed data (bits 0 to x-1); byte-aligned. */
  hostOffset: number;
  /**
   * Number of 512-byte sectors the compressed data spans after the one
   * holding `hostOffset` (bits x to 61).
   */
  additionalSectors: number;
  /** Bit 63; the spec requires 0 for compressed clusters. */
  copied: boolean;
}

/** An L2 entry: standard or compressed. */
export type L2Entry = StandardL2Entry | CompressedL2Entry;

/**
 * An extended L2 entry (incompatible bit 4): the standard entry followed by
 * the subcluster allocation bitmap, 32 subclusters per cluster.
 *
 * @example Half a cluster written, the rest zero
 * ```ts
 * import { decodeExtendedL2Entry, encodeExtendedL2Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const entry = decodeExtendedL2Entry(0x8000000000050000n, 0xffff00000000ffffn, 16);
 * assertEquals(entry.allocationBitmap, 0x0000ffff);
 * assertEquals(entry.zeroBitmap, 0xffff0000);
 * assertEquals(encodeExtendedL2Entry(entry, 16), [0x8000000000050000n, 0xffff00000000ffffn]);
 * ```
 */
export type ExtendedL2Entry = L2Entry & {
  /** Bits 0-31 of the bitmap: subcluster i is allocated (bit i). */
  allocationBitmap: number;
  /** Bits 32-63 of the bitmap: subcluster i reads as zeros (bit i). */
  zeroBitmap: number;
};

/**
 * A refcount table entry: where a refcount block lies.
 *
 * @example
 * ```ts
 * import { decodeRefcountTableEntry, encodeRefcountTableEntry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const entry = decodeRefcountTableEntry(0x20000n);
 * assertEquals(entry, { refcountBlockOffset: 0x20000 });
 * assertEquals(encodeRefcountTableEntry(entry), 0x20000n);
 * ```
 */
export interface RefcountTableEntry {
  /** File offset of the refcount block (bits 9-63), 0 when unallocated. */
  refcountBlockOffset: number;
  /** Reserved bits (0-8) that are set, absent when none. */
  reserved?: bigint;
}

// ---------------------------------------------------------------------------
// Checks

function checkClusterBits(clusterBits: number): void {
  if (
    !Number.isInteger(clusterBits) || clusterBits < MIN_CLUSTER_BITS ||
    clusterBits > MAX_CLUSTER_BITS
  ) {
    throw new RangeError(
      `cluster_bits must be an integer from ${MIN_CLUSTER_BITS} to ${MAX_CLUSTER_BITS}, not ${clusterBits}`,
    );
  }
}

/** An offset field as an exact number, or `OFFSET_PAST_END`. */
function exact(offset: bigint, what: string): number {
  if (offset > MAX_SAFE_OFFSET) {
    throw new Qcow2Error(
      "OFFSET_PAST_END",
      `Cannot read qcow2 image: ${what} ${
        hex(offset)
      } lies past the end of any file`,
    );
  }
  return Number(offset);
}

/** Checks an offset a writer gives against the bits of its field. */
function offsetBits(
  offset: number,
  mask: bigint,
  what: string,
): bigint {
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new RangeError(
      `${what} must be a non-negative safe integer, not ${offset}`,
    );
  }
  const big = BigInt(offset);
  if ((big & mask) !== big) {
    throw new RangeError(
      `${what} ${hex(offset)} does not fit its field (mask ${hex(mask)})`,
    );
  }
  return big;
}

function reservedBits(
  reserved: bigint | undefined,
  mask: bigint,
  what: string,
): bigint {
  const r = reserved ?? 0n;
  if ((r & mask) !== r) {
    throw new RangeError(
      `${what} reserved bits ${hex(r)} lie outside ${hex(mask)}`,
    );
  }
  return r;
}

function bitmap(value: number, what: string): bigint {
  if (!Number.isInteger(value) || value < 0 || value > 0xffffffff) {
    throw new RangeError(`${what} must be a 32-bit unsigned integer`);
  }
  return BigInt(value);
}

// ---------------------------------------------------------------------------
// L1 entries

/**
 * Decodes an L1 table entry.
 *
 * @param raw The entry, read big-endian.
 * @returns The L2 table offset, COPIED flag and any reserved bits.
 * @throws {Qcow2Error} `OFFSET_PAST_END` if the offset is 2^53 or more.
 *
 * @example An unallocated entry
 * ```ts
 * import { decodeL1Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(decodeL1Entry(0n), { l2TableOffset: 0, copied: false });
 * ```
 */
export function decodeL1Entry(raw: bigint): L1Entry {
  const entry: L1Entry = {
    l2TableOffset: exact(raw & L1_OFFSET_MASK, "L2 table offset"),
    copied: (raw & COPIED) !== 0n,
  };
  const reserved = raw & L1_RESERVED_MASK;
  if (reserved !== 0n) entry.reserved = reserved;
  return entry;
}

/**
 * Encodes an L1 table entry.
 *
 * @param entry The L2 table offset (a multiple of 512 below 2^56; writers
 * align it to a cluster) and the COPIED flag.
 * @returns The 64-bit entry, to be written big-endian.
 * @throws {RangeError} If the offset does not fit bits 9-55.
 *
 * @example
 * ```ts
 * import { encodeL1Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(encodeL1Entry({ l2TableOffset: 0x40000, copied: true }), 0x8000000000040000n);
 * ```
 */
export function encodeL1Entry(entry: L1Entry): bigint {
  return offsetBits(entry.l2TableOffset, L1_OFFSET_MASK, "L2 table offset") |
    (entry.copied ? COPIED : 0n) |
    reservedBits(entry.reserved, L1_RESERVED_MASK, "L1 entry");
}

// ---------------------------------------------------------------------------
// Compressed cluster descriptors

/**
 * Decodes a compressed cluster descriptor (bits 0-61 of a compressed L2
 * entry).
 *
 * @param descriptor The descriptor; bits 62 and 63 are ignored.
 * @param clusterBits The header's `cluster_bits`, 9 to 21.
 * @returns The host offset and the additional sectors count.
 * @throws {Qcow2Error} `OFFSET_PAST_END` if the host offset is 2^53 or more.
 * @throws {RangeError} If `clusterBits` is out of range.
 *
 * @example 4 KiB clusters: x = 58
 * ```ts
 * import { decodeCompressedDescriptor } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(decodeCompressedDescriptor((2n << 58n) | 0x3a10n, 12), {
 *   hostOffset: 0x3a10,
 *   additionalSectors: 2,
 * });
 * ```
 */
export function decodeCompressedDescriptor(
  descriptor: bigint,
  clusterBits: number,
): { hostOffset: number; additionalSectors: number } {
  checkClusterBits(clusterBits);
  const x = BigInt(compressedOffsetBits(clusterBits));
  const offsetMask = (1n << x) - 1n;
  const sectorMask = (1n << BigInt(clusterBits - 8)) - 1n;
  return {
    hostOffset: exact(descriptor & offsetMask, "compressed cluster offset"),
    additionalSectors: Number((descriptor >> x) & sectorMask),
  };
}

/**
 * Encodes a compressed cluster descriptor.
 *
 * @param hostOffset File offset of the compressed data (below 2^x).
 * @param additionalSectors Sectors after the first, below 2^(cluster_bits - 8).
 * @param clusterBits The header's `cluster_bits`, 9 to 21.
 * @returns The descriptor (bits 0-61).
 * @throws {RangeError} If a value does not fit its bits.
 *
 * @example
 * ```ts
 * import { encodeCompressedDescriptor } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(encodeCompressedDescriptor(0x3a10, 2, 12), (2n << 58n) | 0x3a10n);
 * ```
 */
export function encodeCompressedDescriptor(
  hostOffset: number,
  additionalSectors: number,
  clusterBits: number,
): bigint {
  checkClusterBits(clusterBits);
  const x = BigInt(compressedOffsetBits(clusterBits));
  const offset = offsetBits(
    hostOffset,
    (1n << x) - 1n,
    "compressed cluster offset",
  );
  const sectorMask = (1n << BigInt(clusterBits - 8)) - 1n;
  if (
    !Number.isInteger(additionalSectors) || additionalSectors < 0 ||
    BigInt(additionalSectors) > sectorMask
  ) {
    throw new RangeError(
      `additional sectors count ${additionalSectors} does not fit ${
        clusterBits - 8
      } bits`,
    );
  }
  return offset | (BigInt(additionalSectors) << x);
}

/**
 * Bytes of a compressed cluster's data as the descriptor bounds them: from
 * the host offset to the end of its last sector (QEMU
 * `qcow2_parse_compressed_l2_entry`).
 *
 * @param hostOffset The descriptor's host offset.
 * @param additionalSectors The descriptor's additional sectors count.
 * @returns The byte count to read at `hostOffset`.
 *
 * @example
 * ```ts
 * import { compressedLength } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(compressedLength(0x3a10, 2), 3 * 512 - 0x10);
 * ```
 */
export function compressedLength(
  hostOffset: number,
  additionalSectors: number,
): number {
  return (additionalSectors + 1) * COMPRESSED_SECTOR_SIZE -
    (hostOffset % COMPRESSED_SECTOR_SIZE);
}

// ---------------------------------------------------------------------------
// L2 entries

/**
 * Decodes a standard-width L2 entry (8 bytes): a standard entry or a
 * compressed cluster descriptor.
 *
 * @param raw The entry, read big-endian.
 * @param clusterBits The header's `cluster_bits`, 9 to 21 (for compressed
 * descriptors).
 * @returns The decoded entry; validity against the image (alignment,
 * metadata, version) is the reader's to check.
 * @throws {Qcow2Error} `OFFSET_PAST_END` if an offset is 2^53 or more.
 *
 * @example A zero cluster (version 3)
 * ```ts
 * import { decodeL2Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(decodeL2Entry(1n, 16), { kind: "standard", hostClusterOffset: 0, copied: false, zero: true });
 * ```
 */
export function decodeL2Entry(raw: bigint, clusterBits: number): L2Entry {
  const copied = (raw & COPIED) !== 0n;
  if ((raw & COMPRESSED) !== 0n) {
    const d = decodeCompressedDescriptor(raw, clusterBits);
    return { kind: "compressed", ...d, copied };
  }
  const entry: StandardL2Entry = {
    kind: "standard",
    hostClusterOffset: exact(raw & L2_OFFSET_MASK, "cluster offset"),
    copied,
    zero: (raw & ZERO_FLAG) !== 0n,
  };
  const reserved = raw & L2_STD_RESERVED_MASK;
  if (reserved !== 0n) entry.reserved = reserved;
  return entry;
}

/**
 * Encodes a standard-width L2 entry.
 *
 * @param entry A standard entry or a compressed cluster descriptor.
 * @param clusterBits The header's `cluster_bits`, 9 to 21.
 * @returns The 64-bit entry, to be written big-endian.
 * @throws {RangeError} If a value does not fit its bits.
 *
 * @example
 * ```ts
 * import { encodeL2Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const raw = encodeL2Entry({ kind: "standard", hostClusterOffset: 0x50000, copied: true, zero: false }, 16);
 * assertEquals(raw, 0x8000000000050000n);
 * ```
 */
export function encodeL2Entry(entry: L2Entry, clusterBits: number): bigint {
  const copied = entry.copied ? COPIED : 0n;
  if (entry.kind === "compressed") {
    return COMPRESSED | copied |
      encodeCompressedDescriptor(
        entry.hostOffset,
        entry.additionalSectors,
        clusterBits,
      );
  }
  checkClusterBits(clusterBits);
  return offsetBits(entry.hostClusterOffset, L2_OFFSET_MASK, "cluster offset") |
    copied | (entry.zero ? ZERO_FLAG : 0n) |
    reservedBits(entry.reserved, L2_STD_RESERVED_MASK, "L2 entry");
}

/**
 * Decodes an extended L2 entry (16 bytes, incompatible bit 4). In an
 * extended entry bit 0 of the first half is reserved: zeros are in the
 * bitmap. Source: `docs/interop/qcow2.txt` "Extended L2 Entries".
 *
 * @param raw The first 8 bytes, read big-endian.
 * @param bitmap The second 8 bytes, read big-endian: zero bitmap in bits
 * 32-63, allocation bitmap in bits 0-31.
 * @param clusterBits The header's `cluster_bits`, 14 to 21 in practice.
 * @returns The entry and its two bitmaps.
 * @throws {Qcow2Error} `OFFSET_PAST_END` if an offset is 2^53 or more.
 *
 * @example
 * ```ts
 * import { decodeExtendedL2Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const e = decodeExtendedL2Entry(0n, 0xffffffff00000000n, 16);
 * assertEquals(e.zeroBitmap, 0xffffffff); // the whole cluster reads as zeros
 * ```
 */
export function decodeExtendedL2Entry(
  raw: bigint,
  bitmap: bigint,
  clusterBits: number,
): ExtendedL2Entry {
  return {
    ...decodeL2Entry(raw, clusterBits),
    allocationBitmap: Number(bitmap & SUBCLUSTER_ALLOC_MASK),
    zeroBitmap: Number(
      (bitmap >> SUBCLUSTER_ZERO_SHIFT) & SUBCLUSTER_ALLOC_MASK,
    ),
  };
}

/**
 * Encodes an extended L2 entry.
 *
 * @param entry The entry and its bitmaps.
 * @param clusterBits The header's `cluster_bits`.
 * @returns The two 64-bit halves, each to be written big-endian.
 * @throws {RangeError} If a value does not fit its bits.
 *
 * @example
 * ```ts
 * import { encodeExtendedL2Entry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const halves = encodeExtendedL2Entry({
 *   kind: "standard", hostClusterOffset: 0x50000, copied: true, zero: false,
 *   allocationBitmap: 1, zeroBitmap: 2,
 * }, 16);
 * assertEquals(halves, [0x8000000000050000n, (2n << 32n) | 1n]);
 * ```
 */
export function encodeExtendedL2Entry(
  entry: ExtendedL2Entry,
  clusterBits: number,
): [bigint, bigint] {
  return [
    encodeL2Entry(entry, clusterBits),
    (bitmap(entry.zeroBitmap, "zero bitmap") << SUBCLUSTER_ZERO_SHIFT) |
    bitmap(entry.allocationBitmap, "allocation bitmap"),
  ];
}

/**
 * The host cluster offset (bits 9-55) of an L1 or standard L2 entry given
 * as two big-endian 32-bit halves, without allocating (the reader's hot
 * path).
 *
 * @param hi Bits 32-63 of the entry.
 * @param lo Bits 0-31 of the entry.
 * @returns The offset, or -1 if it is 2^53 or more (past any file).
 *
 * @example
 * ```ts
 * import { hostClusterOffsetOf } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(hostClusterOffsetOf(0x80000000, 0x00050001), 0x50000);
 * assertEquals(hostClusterOffsetOf(0x00200000, 0), -1);
 * ```
 */
export function hostClusterOffsetOf(hi: number, lo: number): number {
  if (hi & 0x00e00000) return -1;
  return (hi & 0x001fffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0);
}

/**
 * The host offset of a compressed cluster descriptor given as two
 * big-endian 32-bit halves of its L2 entry, without allocating (the
 * reader's hot path).
 *
 * @param hi Bits 32-63 of the entry.
 * @param lo Bits 0-31 of the entry.
 * @param clusterBits The header's `cluster_bits`, 9 to 21.
 * @returns The host offset (bits 0 to x-1), or -1 if it is 2^53 or more.
 *
 * @example
 * ```ts
 * import { compressedHostOffsetOf } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // 64 KiB clusters (x = 54): 3 additional sectors, host offset 0x50123.
 * assertEquals(compressedHostOffsetOf(0x40000000 | (3 << 22), 0x50123, 16), 0x50123);
 * ```
 */
export function compressedHostOffsetOf(
  hi: number,
  lo: number,
  clusterBits: number,
): number {
  const high = hi & ((1 << (compressedOffsetBits(clusterBits) - 32)) - 1);
  return high >= 0x200000 ? -1 : high * TWO_32 + (lo >>> 0);
}

/**
 * The additional sectors count of a compressed cluster descriptor, from the
 * high 32-bit half of its L2 entry.
 *
 * @param hi Bits 32-63 of the entry.
 * @param clusterBits The header's `cluster_bits`, 9 to 21.
 * @returns The count (bits x to 61).
 *
 * @example
 * ```ts
 * import { additionalSectorsOf } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(additionalSectorsOf(0x40000000 | (3 << 22), 16), 3);
 * ```
 */
export function additionalSectorsOf(hi: number, clusterBits: number): number {
  return (hi >>> (compressedOffsetBits(clusterBits) - 32)) &
    ((1 << (clusterBits - 8)) - 1);
}

/**
 * An entry's 64 bits from its two big-endian 32-bit halves (for messages
 * about an entry the hot path refused).
 *
 * @param hi Bits 32-63.
 * @param lo Bits 0-31.
 * @returns The entry.
 *
 * @example
 * ```ts
 * import { entryBits } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(entryBits(0x80000000, 0x10000), 0x8000000000010000n);
 * ```
 */
export function entryBits(hi: number, lo: number): bigint {
  return BigInt(hi >>> 0) << 32n | BigInt(lo >>> 0);
}

// ---------------------------------------------------------------------------
// Refcount table entries

/**
 * Decodes a refcount table entry.
 *
 * @param raw The entry, read big-endian.
 * @returns The refcount block offset and any reserved bits.
 * @throws {Qcow2Error} `OFFSET_PAST_END` if the offset is 2^53 or more.
 *
 * @example
 * ```ts
 * import { decodeRefcountTableEntry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(decodeRefcountTableEntry(0x10001n), { refcountBlockOffset: 0x10000, reserved: 1n });
 * ```
 */
export function decodeRefcountTableEntry(raw: bigint): RefcountTableEntry {
  const entry: RefcountTableEntry = {
    refcountBlockOffset: exact(
      raw & REFCOUNT_TABLE_OFFSET_MASK,
      "refcount block offset",
    ),
  };
  const reserved = raw & REFCOUNT_TABLE_RESERVED_MASK;
  if (reserved !== 0n) entry.reserved = reserved;
  return entry;
}

/**
 * Encodes a refcount table entry.
 *
 * @param entry The refcount block offset (a multiple of 512).
 * @returns The 64-bit entry, to be written big-endian.
 * @throws {RangeError} If the offset is not a multiple of 512.
 *
 * @example
 * ```ts
 * import { encodeRefcountTableEntry } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(encodeRefcountTableEntry({ refcountBlockOffset: 0x20000 }), 0x20000n);
 * ```
 */
export function encodeRefcountTableEntry(entry: RefcountTableEntry): bigint {
  return offsetBits(
    entry.refcountBlockOffset,
    REFCOUNT_TABLE_OFFSET_MASK,
    "refcount block offset",
  ) |
    reservedBits(
      entry.reserved,
      REFCOUNT_TABLE_RESERVED_MASK,
      "refcount table entry",
    );
}

// ---------------------------------------------------------------------------
// Whole tables

/**
 * Decodes an L1 table (or a refcount table, with
 * {@linkcode decodeRefcountTableEntry}) from its bytes.
 *
 * @param bytes The table, a multiple of 8 bytes.
 * @returns One entry per 8 bytes.
 * @throws {Qcow2Error} `OFFSET_PAST_END` as {@linkcode decodeL1Entry}.
 *
 * @example
 * ```ts
 * import { decodeL1Table, encodeL1Table } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = new Uint8Array(16);
 * new DataView(bytes.buffer).setBigUint64(8, 0x8000000000030000n);
 * const table = decodeL1Table(bytes);
 * assertEquals(table[1].l2TableOffset, 0x30000);
 * assertEquals(encodeL1Table(table), bytes);
 * ```
 */
export function decodeL1Table(bytes: Uint8Array): L1Entry[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: L1Entry[] = [];
  for (let at = 0; at + ENTRY_SIZE <= bytes.length; at += ENTRY_SIZE) {
    out.push(decodeL1Entry(view.getBigUint64(at)));
  }
  return out;
}

/**
 * Encodes an L1 table.
 *
 * @param entries The entries in order.
 * @returns The table's bytes (8 per entry).
 * @throws {RangeError} As {@linkcode encodeL1Entry}.
 *
 * @example
 * ```ts
 * import { encodeL1Table } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(encodeL1Table([{ l2TableOffset: 0, copied: false }]).length, 8);
 * ```
 */
export function encodeL1Table(entries: readonly L1Entry[]): Uint8Array {
  const bytes = new Uint8Array(entries.length * ENTRY_SIZE);
  const view = new DataView(bytes.buffer);
  entries.forEach((e, i) =>
    view.setBigUint64(i * ENTRY_SIZE, encodeL1Entry(e))
  );
  return bytes;
}

/**
 * Decodes an L2 table, standard or extended.
 *
 * @param bytes The table (one cluster).
 * @param clusterBits The header's `cluster_bits`.
 * @param extendedL2 Whether entries are 16 bytes (incompatible bit 4).
 * @returns One entry per 8 (or 16) bytes; extended entries carry bitmaps.
 * @throws {Qcow2Error} `OFFSET_PAST_END` as {@linkcode decodeL2Entry}.
 *
 * @example
 * ```ts
 * import { decodeL2Table, encodeL2Table } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = new Uint8Array(512);
 * new DataView(bytes.buffer).setBigUint64(0, 0x8000000000000400n);
 * const table = decodeL2Table(bytes, 9, false);
 * assertEquals(table.length, 64);
 * assertEquals(encodeL2Table(table, 9, false), bytes);
 * ```
 */
export function decodeL2Table(
  bytes: Uint8Array,
  clusterBits: number,
  extendedL2: boolean,
): (L2Entry | ExtendedL2Entry)[] {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const size = extendedL2 ? EXTENDED_ENTRY_SIZE : ENTRY_SIZE;
  const out: (L2Entry | ExtendedL2Entry)[] = [];
  for (let at = 0; at + size <= bytes.length; at += size) {
    const raw = view.getBigUint64(at);
    out.push(
      extendedL2
        ? decodeExtendedL2Entry(raw, view.getBigUint64(at + 8), clusterBits)
        : decodeL2Entry(raw, clusterBits),
    );
  }
  return out;
}

/**
 * Encodes an L2 table, standard or extended.
 *
 * @param entries The entries in order (with bitmaps when extended).
 * @param clusterBits The header's `cluster_bits`.
 * @param extendedL2 Whether entries are 16 bytes.
 * @returns The table's bytes.
 * @throws {RangeError} As {@linkcode encodeL2Entry}, or if an extended
 * table's entry has no bitmaps.
 *
 * @example
 * ```ts
 * import { encodeL2Table } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = encodeL2Table([{ kind: "standard", hostClusterOffset: 0, copied: false, zero: true }], 16, false);
 * assertEquals(bytes, new Uint8Array([0, 0, 0, 0, 0, 0, 0, 1]));
 * ```
 */
export function encodeL2Table(
  entries: readonly (L2Entry | ExtendedL2Entry)[],
  clusterBits: number,
  extendedL2: boolean,
): Uint8Array {
  const size = extendedL2 ? EXTENDED_ENTRY_SIZE : ENTRY_SIZE;
  const bytes = new Uint8Array(entries.length * size);
  const view = new DataView(bytes.buffer);
  entries.forEach((e, i) => {
    if (!extendedL2) {
      view.setBigUint64(i * size, encodeL2Entry(e, clusterBits));
      return;
    }
    if (!("allocationBitmap" in e)) {
      throw new RangeError(`extended L2 entry ${i} has no subcluster bitmap`);
    }
    const [raw, bits] = encodeExtendedL2Entry(e, clusterBits);
    view.setBigUint64(i * size, raw);
    view.setBigUint64(i * size + 8, bits);
  });
  return bytes;
}

// ---------------------------------------------------------------------------
// Guest offsets

/**
 * Entries in one L2 table: cluster size over entry size.
 *
 * @param clusterBits The header's `cluster_bits`.
 * @param extendedL2 Whether entries are 16 bytes.
 * @returns 2^(cluster_bits - 3), or 2^(cluster_bits - 4) when extended.
 *
 * @example
 * ```ts
 * import { l2EntriesPerTable } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(l2EntriesPerTable(16, false), 8192);
 * ```
 */
export function l2EntriesPerTable(
  clusterBits: number,
  extendedL2: boolean,
): number {
  return 2 ** (clusterBits - (extendedL2 ? 4 : 3));
}

/**
 * Where a guest offset's mapping lies: its L1 index, L2 index and, with
 * extended L2 entries, its subcluster. Source: `docs/interop/qcow2.txt`
 * "Cluster mapping".
 *
 * @param guestOffset A byte offset in the virtual disk.
 * @param clusterBits The header's `cluster_bits`.
 * @param extendedL2 Whether entries are 16 bytes.
 * @returns The indexes and the offset within the cluster.
 * @throws {RangeError} If `guestOffset` is not a non-negative safe integer.
 *
 * @example
 * ```ts
 * import { guestOffsetIndexes } from "./entries.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // 64 KiB clusters with extended L2 entries: one L2 table maps 256 MiB,
 * // a subcluster is 2 KiB.
 * assertEquals(guestOffsetIndexes(512 * 2 ** 20 + 65536 + 5000, 16, true), {
 *   l1Index: 2,
 *   l2Index: 1,
 *   offsetInCluster: 5000,
 *   subcluster: 2,
 * });
 * ```
 */
export function guestOffsetIndexes(
  guestOffset: number,
  clusterBits: number,
  extendedL2: boolean,
): {
  l1Index: number;
  l2Index: number;
  offsetInCluster: number;
  subcluster: number;
} {
  if (!Number.isSafeInteger(guestOffset) || guestOffset < 0) {
    throw new RangeError(
      `guest offset must be a non-negative safe integer, not ${guestOffset}`,
    );
  }
  const clusterSize = 2 ** clusterBits;
  const perTable = l2EntriesPerTable(clusterBits, extendedL2);
  const cluster = Math.floor(guestOffset / clusterSize);
  const offsetInCluster = guestOffset - cluster * clusterSize;
  return {
    l1Index: Math.floor(cluster / perTable),
    l2Index: cluster % perTable,
    offsetInCluster,
    subcluster: extendedL2
      ? Math.floor(offsetInCluster / (clusterSize / SUBCLUSTERS_PER_CLUSTER))
      : 0,
  };
}
