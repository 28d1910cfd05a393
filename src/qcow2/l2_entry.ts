/**
 * L1 and L2 entries as a writable image sees them: one mapping per guest
 * cluster (host offset, COPIED flag, compressed descriptor, and which
 * subclusters are allocated or read as zeros), decoded from and encoded to
 * standard (64-bit) and extended (128-bit) L2 entries (spec "Cluster
 * mapping", "Extended L2 Entries").
 *
 * @module
 */

const TWO_32 = 2 ** 32;
/** L1/L2 entry bit 63, "COPIED": the refcount is exactly 1. */
export const COPIED_HI = 0x80000000;
/** L2 entry bit 62: compressed cluster. */
const COMPRESSED_HI = 0x40000000;
/** Host offset bits 9-55 of an L1 or standard L2 entry, high word. */
const OFFSET_HI = 0x00ffffff;
/** Host offset bits 9-55, low word. */
const OFFSET_LO = 0xfffffe00;

/** What a guest cluster maps to. */
export interface Mapping {
  /** Host cluster offset (0: none); for compressed clusters the byte offset. */
  host: number;
  /** The COPIED flag (refcount exactly 1: may be written in place). */
  copied: boolean;
  /** Whether the cluster is compressed. */
  compressed: boolean;
  /** For compressed clusters: how many bytes of the file it may span. */
  compressedLength: number;
  /** Bitmap of subclusters holding data (standard entries: bit 0 for all). */
  alloc: number;
  /** Bitmap of subclusters that read as zeros. */
  zero: number;
}

/** Why an entry cannot be used. */
export type EntryProblem = string;

/**
 * Decodes entry `i` of an L2 table.
 *
 * @returns The mapping, or a string saying why the entry is invalid.
 */
export function decodeL2(
  view: DataView,
  i: number,
  extended: boolean,
  clusterBits: number,
  external: boolean,
  version: number,
): Mapping | EntryProblem {
  const at = i * (extended ? 16 : 8);
  const hi = view.getUint32(at);
  const lo = view.getUint32(at + 4);
  const all = extended ? 0xffffffff : 1;
  if (hi & COMPRESSED_HI) {
    if (external) return "compressed cluster in an image with an external data file";
    const shift = 38 - clusterBits;
    const high = hi & ((1 << shift) - 1);
    if (high >= 0x200000) return "compressed cluster offset past any file";
    const host = high * TWO_32 + (lo >>> 0);
    const sectors = ((hi >>> shift) & ((1 << (clusterBits - 8)) - 1)) + 1;
    return {
      host,
      copied: false,
      compressed: true,
      compressedLength: sectors * 512 - (host % 512),
      alloc: all,
      zero: 0,
    };
  }
  if (hi & 0x00e00000) return "cluster offset past any file";
  const host = (hi & OFFSET_HI) * TWO_32 + ((lo & OFFSET_LO) >>> 0);
  const cs = 2 ** clusterBits;
  if (host % cs !== 0) return `cluster offset 0x${host.toString(16)} unaligned`;
  const copied = (hi & COPIED_HI) !== 0;
  const allocated = host !== 0 || (external && copied);
  if (extended) {
    const zero = view.getUint32(at + 8) >>> 0;
    const alloc = view.getUint32(at + 12) >>> 0;
    if (alloc & zero) return "subcluster both allocated and zero";
    if (!allocated && alloc !== 0) {
      return "allocated subclusters in an unallocated cluster";
    }
    return { host, copied, compressed: false, compressedLength: 0, alloc, zero };
  }
  if (lo & 1) {
    if (version < 3) return "zero cluster entry in a version 2 image";
    return { host, copied, compressed: false, compressedLength: 0, alloc: 0, zero: 1 };
  }
  return {
    host,
    copied,
    compressed: false,
    compressedLength: 0,
    alloc: allocated ? all : 0,
    zero: 0,
  };
}

/**
 * Encodes `m` (never compressed) as entry `i` of an L2 table.
 */
export function encodeL2(
  view: DataView,
  i: number,
  extended: boolean,
  m: Mapping,
): void {
  const at = i * (extended ? 16 : 8);
  const hostHi = Math.floor(m.host / TWO_32);
  const hostLo = m.host % TWO_32;
  const keepHost = extended || m.alloc !== 0 || m.zero !== 0;
  const hi = keepHost ? (m.copied ? COPIED_HI : 0) | hostHi : 0;
  let lo = keepHost ? hostLo : 0;
  if (!extended && m.alloc === 0 && m.zero !== 0) lo = (lo | 1) >>> 0;
  view.setUint32(at, hi >>> 0);
  view.setUint32(at + 4, lo >>> 0);
  if (extended) {
    view.setUint32(at + 8, m.zero >>> 0);
    view.setUint32(at + 12, m.alloc >>> 0);
  }
}

/**
 * Decodes L1 entry `i`: the L2 table offset (0: none) and its COPIED flag.
 *
 * @returns The entry, or a string saying why it is invalid.
 */
export function decodeL1(
  view: DataView,
  i: number,
  clusterSize: number,
): { offset: number; copied: boolean } | EntryProblem {
  const hi = view.getUint32(i * 8);
  const lo = view.getUint32(i * 8 + 4);
  if (hi & 0x00e00000) return "L2 table offset past any file";
  const offset = (hi & OFFSET_HI) * TWO_32 + ((lo & OFFSET_LO) >>> 0);
  if (offset % clusterSize !== 0) {
    return `L2 table offset 0x${offset.toString(16)} unaligned`;
  }
  return { offset, copied: (hi & COPIED_HI) !== 0 };
}

/** Encodes L1 entry `i`: `offset` with the COPIED flag. */
export function encodeL1(view: DataView, i: number, offset: number): void {
  view.setUint32(i * 8, (COPIED_HI | Math.floor(offset / TWO_32)) >>> 0);
  view.setUint32(i * 8 + 4, offset % TWO_32);
}
