/**
 * L1 and L2 entries as a writable image sees them: one {@linkcode Mapping}
 * per guest cluster (host offset, COPIED flag, compressed descriptor, and
 * which subclusters are allocated or read as zeros), over the entry codecs
 * of `entries.ts` for standard (64-bit) and extended (128-bit) L2 entries
 * (spec "Cluster mapping", "Extended L2 Entries").
 *
 * @module
 */

import {
  compressedLength,
  decodeExtendedL2Entry,
  decodeL1Entry,
  decodeL2Entry,
  encodeExtendedL2Entry,
  encodeL1Entry,
  encodeL2Entry,
  type L2Entry,
} from "./entries.ts";
import { SUBCLUSTER_ALLOC_MASK } from "./layout.ts";
import { Qcow2Error } from "../errors.ts";

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

/**
 * Decodes entry `i` of an L2 table into a mapping.
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
): Mapping | string {
  const at = i * (extended ? 16 : 8);
  let entry: L2Entry;
  let alloc = 0;
  let zero = 0;
  try {
    if (extended) {
      const e = decodeExtendedL2Entry(
        view.getBigUint64(at),
        view.getBigUint64(at + 8),
        clusterBits,
      );
      entry = e;
      alloc = e.allocationBitmap;
      zero = e.zeroBitmap;
    } else entry = decodeL2Entry(view.getBigUint64(at), clusterBits);
  } catch (e) {
    if (e instanceof Qcow2Error) return "cluster offset past any file";
    throw e;
  }
  const all = extended ? Number(SUBCLUSTER_ALLOC_MASK) : 1;
  if (entry.kind === "compressed") {
    if (external) {
      return "compressed cluster in an image with an external data file";
    }
    return {
      host: entry.hostOffset,
      copied: false,
      compressed: true,
      compressedLength: compressedLength(
        entry.hostOffset,
        entry.additionalSectors,
      ),
      alloc: all,
      zero: 0,
    };
  }
  const host = entry.hostClusterOffset;
  if (host % 2 ** clusterBits !== 0) {
    return `cluster offset 0x${host.toString(16)} is not aligned to a cluster`;
  }
  const copied = entry.copied;
  const allocated = host !== 0 || (external && copied);
  const base = { host, copied, compressed: false, compressedLength: 0 };
  if (extended) {
    if (alloc & zero) return "a subcluster is both allocated and zero";
    if (!allocated && alloc !== 0) {
      return "allocated subclusters in an unallocated cluster";
    }
    return { ...base, alloc, zero };
  }
  if (entry.zero) {
    if (version < 3) return "zero cluster entry in a version 2 image";
    return { ...base, alloc: 0, zero: 1 };
  }
  return { ...base, alloc: allocated ? all : 0, zero: 0 };
}

/**
 * Encodes `m` (never compressed) as entry `i` of an L2 table. A standard
 * entry without data or zeros is 0; with zeros only, the zero flag (keeping
 * a host cluster, as zero_in_l2_slice does).
 */
export function encodeL2(
  view: DataView,
  i: number,
  extended: boolean,
  clusterBits: number,
  m: Mapping,
): void {
  const keep = extended || m.alloc !== 0 || m.zero !== 0;
  const entry: L2Entry = {
    kind: "standard",
    hostClusterOffset: keep ? m.host : 0,
    copied: keep && m.copied,
    zero: !extended && m.alloc === 0 && m.zero !== 0,
  };
  if (extended) {
    const [word, bitmap] = encodeExtendedL2Entry({
      ...entry,
      allocationBitmap: m.alloc >>> 0,
      zeroBitmap: m.zero >>> 0,
    }, clusterBits);
    view.setBigUint64(i * 16, word);
    view.setBigUint64(i * 16 + 8, bitmap);
  } else view.setBigUint64(i * 8, encodeL2Entry(entry, clusterBits));
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
): { offset: number; copied: boolean } | string {
  let offset: number;
  let copied: boolean;
  try {
    ({ l2TableOffset: offset, copied } = decodeL1Entry(
      view.getBigUint64(i * 8),
    ));
  } catch (e) {
    if (e instanceof Qcow2Error) return "L2 table offset past any file";
    throw e;
  }
  if (offset % clusterSize !== 0) {
    return `L2 table offset 0x${
      offset.toString(16)
    } is not aligned to a cluster`;
  }
  return { offset, copied };
}

/** Encodes L1 entry `i`: the L2 table at `offset`, with the COPIED flag. */
export function encodeL1(view: DataView, i: number, offset: number): void {
  view.setBigUint64(
    i * 8,
    encodeL1Entry({ l2TableOffset: offset, copied: true }),
  );
}
