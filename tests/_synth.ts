/**
 * Builds small qcow2 images in memory for unit tests, with every header field
 * and table entry under the test's control. Refcounts are left empty: the
 * reader never needs them. Offsets and masks come from src/qcow2/layout.ts.
 */

import { encodeL1Entry, encodeL2Entry } from "../src/qcow2/entries.ts";
import {
  COMPRESSED_SECTOR_SIZE,
  ENTRY_SIZE,
  EXTENDED_ENTRY_SIZE,
  EXTENSION_HEADER_SIZE,
  type Field,
  HEADER,
  INCOMPATIBLE,
  MAGIC,
  SUBCLUSTER_ALLOC_MASK,
  SUBCLUSTER_ZERO_SHIFT,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
} from "../src/qcow2/layout.ts";

export interface SynthHeader {
  version?: number;
  clusterBits?: number;
  size?: bigint;
  cryptMethod?: number;
  l1Size?: number;
  l1TableOffset?: bigint;
  refcountTableOffset?: bigint;
  refcountTableClusters?: number;
  nbSnapshots?: number;
  snapshotsOffset?: bigint;
  incompatible?: bigint;
  compatible?: bigint;
  autoclear?: bigint;
  refcountOrder?: number;
  headerLength?: number;
  compressionType?: number;
  backingFile?: string;
  backingFileOffset?: bigint;
  extensions?: { type: number; data: Uint8Array }[];
}

/** Writes a header (and its extensions and backing name) into `out`. */
export function writeHeader(out: Uint8Array, h: SynthHeader = {}): void {
  const v = new DataView(out.buffer, out.byteOffset, out.byteLength);
  // Any value goes, valid or not: the tests are of the reader's checks.
  const set = (field: Field, value: number | bigint) => {
    if (field.size === 8) v.setBigUint64(field.offset, BigInt(value));
    else if (field.size === 4) v.setUint32(field.offset, Number(value));
    else out[field.offset] = Number(value);
  };
  const version = h.version ?? 3;
  const headerLength = h.headerLength ??
    (version === 2 ? V2_HEADER_LENGTH : V3_HEADER_LENGTH);
  set(HEADER.magic, MAGIC);
  set(HEADER.version, version);
  set(HEADER.clusterBits, h.clusterBits ?? 16);
  set(HEADER.size, h.size ?? 1n << 20n);
  set(HEADER.cryptMethod, h.cryptMethod ?? 0);
  set(HEADER.l1Size, h.l1Size ?? 1);
  set(HEADER.l1TableOffset, h.l1TableOffset ?? 0x30000n);
  set(HEADER.refcountTableOffset, h.refcountTableOffset ?? 0x10000n);
  set(HEADER.refcountTableClusters, h.refcountTableClusters ?? 1);
  set(HEADER.nbSnapshots, h.nbSnapshots ?? 0);
  set(HEADER.snapshotsOffset, h.snapshotsOffset ?? 0n);
  if (version >= 3) {
    const compression = h.compressionType ?? 0;
    const bit3 = 1n << BigInt(INCOMPATIBLE.compressionType.bit);
    set(
      HEADER.incompatibleFeatures,
      (h.incompatible ?? 0n) | (compression ? bit3 : 0n),
    );
    set(HEADER.compatibleFeatures, h.compatible ?? 0n);
    set(HEADER.autoclearFeatures, h.autoclear ?? 0n);
    set(HEADER.refcountOrder, h.refcountOrder ?? 4);
    set(HEADER.headerLength, headerLength);
    if (headerLength > HEADER.compressionType.offset) {
      set(HEADER.compressionType, compression);
    }
  }
  let p = headerLength;
  for (const e of h.extensions ?? []) {
    v.setUint32(p, e.type);
    v.setUint32(p + 4, e.data.length);
    out.set(e.data, p + EXTENSION_HEADER_SIZE);
    p += EXTENSION_HEADER_SIZE + ((e.data.length + 7) & ~7);
  }
  p += EXTENSION_HEADER_SIZE; // end marker (zeros)
  if (h.backingFile !== undefined) {
    const name = new TextEncoder().encode(h.backingFile);
    const at = h.backingFileOffset ?? BigInt(p);
    set(HEADER.backingFileOffset, at);
    set(HEADER.backingFileSize, name.length);
    out.set(name, Number(at));
  }
}

/** Bytes of one header extension payload from a string. */
export function text(s: string): Uint8Array {
  return new TextEncoder().encode(s);
}

export type SynthCluster =
  | { kind: "data"; bytes: Uint8Array }
  | { kind: "zero"; allocated?: boolean }
  | { kind: "compressed"; bytes: Uint8Array }
  | { kind: "raw"; entry: bigint; bitmap?: bigint };

/**
 * An image with 64 KiB-or-other clusters: header in cluster 0, refcount table
 * in 1, L1 in 2, one L2 table per L1 entry used, then data clusters, then
 * compressed data packed back to back.
 */
export function synthImage(
  header: SynthHeader,
  clusters: Map<number, SynthCluster>,
): Uint8Array {
  const bits = header.clusterBits ?? 16;
  const cs = 1 << bits;
  const extended = ((header.incompatible ?? 0n) &
    (1n << BigInt(INCOMPATIBLE.extendedL2.bit))) !==
    0n;
  const entryBytes = extended ? EXTENDED_ENTRY_SIZE : ENTRY_SIZE;
  const l2Entries = cs / entryBytes;
  const standard = (
    hostClusterOffset: number,
    copied: boolean,
    zero: boolean,
  ) =>
    encodeL2Entry({ kind: "standard", hostClusterOffset, copied, zero }, bits);
  const size = header.size ?? 1n << 20n;
  const l1Size = header.l1Size ??
    Math.max(1, Math.ceil(Number(size) / (cs * l2Entries)));
  const l1Indexes = [
    ...new Set([...clusters.keys()].map((g) => Math.floor(g / l2Entries))),
  ].sort((a, b) => a - b);
  const l2Base = 3 * cs;
  const l2At = new Map(l1Indexes.map((i, n) => [i, l2Base + n * cs]));
  let next = l2Base + l1Indexes.length * cs;
  const entries = new Map<number, bigint>();
  const bitmaps = new Map<number, bigint>();
  const dataChunks: [number, Uint8Array][] = [];
  for (const [g, c] of clusters) {
    if (c.kind === "data") {
      entries.set(g, standard(next, true, false));
      dataChunks.push([next, c.bytes]);
      next += cs;
    } else if (c.kind === "zero") {
      if (c.allocated) {
        entries.set(g, standard(next, false, true));
        next += cs;
      } else entries.set(g, standard(0, false, true));
    } else if (c.kind === "raw") {
      entries.set(g, c.entry);
      if (c.bitmap !== undefined) bitmaps.set(g, c.bitmap);
    }
  }
  // Compressed data packed after the data clusters.
  for (const [g, c] of clusters) {
    if (c.kind !== "compressed") continue;
    const sectors = Math.ceil(
      ((next % COMPRESSED_SECTOR_SIZE) + c.bytes.length) /
        COMPRESSED_SECTOR_SIZE,
    );
    entries.set(
      g,
      encodeL2Entry({
        kind: "compressed",
        hostOffset: next,
        additionalSectors: sectors - 1,
        copied: false,
      }, bits),
    );
    dataChunks.push([next, c.bytes]);
    next += c.bytes.length;
  }
  const out = new Uint8Array(Math.ceil(next / 512) * 512);
  writeHeader(out, {
    ...header,
    l1Size,
    l1TableOffset: header.l1TableOffset ?? BigInt(2 * cs),
    refcountTableOffset: header.refcountTableOffset ?? BigInt(cs),
  });
  const v = new DataView(out.buffer);
  for (const [i, at] of l2At) {
    v.setBigUint64(
      2 * cs + i * ENTRY_SIZE,
      encodeL1Entry({ l2TableOffset: at, copied: true }),
    );
  }
  for (const [g, e] of entries) {
    const l2 = l2At.get(Math.floor(g / l2Entries))!;
    v.setBigUint64(l2 + (g % l2Entries) * entryBytes, e);
    if (extended) {
      // Word 2: zero bits 32..63, allocation bits 0..31 (data: all allocated).
      const c = clusters.get(g)!;
      const bitmap = bitmaps.get(g) ??
        (c.kind === "data"
          ? SUBCLUSTER_ALLOC_MASK
          : c.kind === "zero"
          ? SUBCLUSTER_ALLOC_MASK << SUBCLUSTER_ZERO_SHIFT
          : 0n);
      v.setBigUint64(l2 + (g % l2Entries) * entryBytes + 8, bitmap);
    }
  }
  for (const [at, bytes] of dataChunks) out.set(bytes, at);
  return out;
}

/** Deterministic pseudo-random bytes. */
export function prng(length: number, seed = 1): Uint8Array {
  const out = new Uint8Array(length);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < length; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = s & 0xff;
  }
  return out;
}
