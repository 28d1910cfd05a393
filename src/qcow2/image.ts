/**
 * The guest view of one qcow2 layer: its L1/L2 mapping (standard or extended
 * entries), the files its data lives in, and what it falls through to.
 *
 * @module
 */

import type { Codecs } from "../codecs/codecs.ts";
import type { DiskImage } from "../disk.ts";
import type { ExtentRuns } from "../extent_runs.ts";
import type { ImageEncryption } from "../crypto/encryption.ts";
import { hex, Qcow2Error, type Qcow2ErrorCode } from "../errors.ts";
import { MetadataMap } from "./metadata.ts";
import type { Qcow2Header } from "./header.ts";
import type { ByteSource } from "../io/source.ts";
import type { Snapshot } from "./snapshots.ts";
import { type L2Span, TwoLevelImage } from "./walk.ts";
import {
  additionalSectorsOf,
  compressedHostOffsetOf,
  compressedLength,
  entryBits,
  hostClusterOffsetOf,
  l2EntriesPerTable,
} from "./entries.ts";
import {
  compressedOffsetBits,
  ENTRY_SIZE,
  EXTENDED_ENTRY_SIZE,
  L1_OFFSET_MASK,
  L2_OFFSET_MASK,
  SUBCLUSTERS_PER_CLUSTER,
} from "./layout.ts";

/** Default bytes of L2 tables kept in memory. */
export const DEFAULT_L2_CACHE_BYTES = 4 * 1024 * 1024;
/** COPIED (bit 63) in the high 32-bit half of an entry. */
const COPIED_HI = 0x80000000;
/** COMPRESSED (bit 62) in the high 32-bit half of an L2 entry. */
const COMPRESSED_HI = 0x40000000;
/** The zero flag (bit 0) in the low half of a standard L2 entry. */
const ZERO_FLAG_LO = 1;
/** All 32 subclusters of an extended L2 entry's bitmap. */
const ALL_SUBCLUSTERS = 0xffffffff;

/** What a {@linkcode Qcow2Image} is built from; see `openImage`. */
export interface Qcow2Parts {
  /** The parsed header. */
  header: Qcow2Header;
  /** The image file. */
  source: ByteSource;
  /** The L1 table in use (the active one, or a snapshot's). */
  l1: Uint8Array;
  /** Virtual size of the disk this L1 describes. */
  size: number;
  /** The snapshot table. */
  snapshots: Snapshot[];
  /** The snapshot being read, if not the active state. */
  snapshot?: Snapshot;
  /** What unallocated clusters read from; zeros without one. */
  backing?: DiskImage;
  /** The external data file, when the image has one. */
  dataFile?: ByteSource;
  /** Decompressors. */
  codecs?: Codecs;
  /** Bytes of L2 tables to keep cached. */
  l2CacheBytes?: number;
  /** Closes the files opened for this image (backing and data files). */
  close?: () => void;
  /** The unlocked encryption of an encrypted image. */
  encryption?: ImageEncryption;
}

/**
 * An open qcow2 image: header, virtual size, snapshots, extents through its
 * backing chain, and guest reads. Obtain one with `openImage`.
 *
 * @example Extents and snapshots of an open image
 * ```ts
 * import { openImage, type Qcow2Image } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/snap.qcow2", import.meta.url));
 * const image = await openImage(bytes) as Qcow2Image;
 * assertEquals(image.clusterSize, 65536);
 * assertEquals(image.snapshots.map((s) => s.name), ["first", "second"]);
 * const kinds = new Set<string>();
 * for await (const extent of image.extents()) kinds.add(extent.kind);
 * assertEquals([...kinds].sort(), ["data", "unallocated", "zero"]);
 * ```
 */
export class Qcow2Image extends TwoLevelImage {
  /** Tells a qcow2 image from the other formats `openImage` returns. */
  readonly format = "qcow2" as const;
  /** The parsed header. */
  readonly header: Qcow2Header;
  /** The internal snapshots, in table order. */
  readonly snapshots: readonly Snapshot[];
  /** The snapshot being read, or undefined for the active state. */
  readonly snapshot?: Snapshot;
  #l1: DataView;
  #l1Entries: number;
  #entryBytes: number;
  #external: boolean;
  #metadata: MetadataMap;

  /** @internal Use `openImage`. */
  constructor(parts: Qcow2Parts) {
    const { header } = parts;
    const extendedL2 = header.features.extendedL2;
    super({
      source: parts.source,
      size: parts.size,
      clusterBits: header.clusterBits,
      l2Entries: l2EntriesPerTable(header.clusterBits, extendedL2),
      l2TableBytes: header.clusterSize,
      cachedTables: (parts.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES) /
        header.clusterSize,
      l1TableOffset: header.l1TableOffset,
      backing: parts.backing,
      dataFile: parts.dataFile,
      compressionType: header.compressionType,
      codecs: parts.codecs,
      close: parts.close,
      encryption: parts.encryption,
    });
    this.header = header;
    this.snapshots = parts.snapshots;
    this.snapshot = parts.snapshot;
    this.#l1 = new DataView(
      parts.l1.buffer,
      parts.l1.byteOffset,
      parts.l1.byteLength,
    );
    this.#l1Entries = parts.l1.length / ENTRY_SIZE;
    this.#entryBytes = extendedL2 ? EXTENDED_ENTRY_SIZE : ENTRY_SIZE;
    this.#external = parts.dataFile !== undefined;
    this.#metadata = new MetadataMap(header, parts.l1, parts.snapshots);
  }

  /**
   * Adds entries `[span.first, span.last)` of an L2 table to `runs`:
   * standard or extended entries, compressed descriptors, and runs of
   * unallocated entries skipped in one scan.
   * @ignore
   */
  protected addEntries(runs: ExtentRuns, view: DataView, span: L2Span): void {
    const { l2Offset, spanStart, first, last } = span;
    const cs = this.clusterSize;
    // Runs of all-zero entries (unallocated, no flags) are skipped in
    // one scan of 32-bit words: a sparse image's L2 tables are mostly
    // that. (Zero or not does not depend on byte order.)
    const wpe = this.#entryBytes / 4;
    const words = new Uint32Array(
      view.buffer,
      view.byteOffset,
      view.byteLength >>> 2,
    );
    for (let i = first; i < last; i++) {
      const g = spanStart + i * cs;
      let k = i * wpe;
      const stop = last * wpe;
      while (k < stop && words[k] === 0) k++;
      const j = Math.floor(k / wpe);
      if (j > i) {
        runs.add("unallocated", g, spanStart + j * cs);
        i = j - 1;
        continue;
      }
      const entry = this.#decode(view, i, l2Offset, g);
      if (entry.kind === "compressed") {
        runs.addCompressed(g, g + cs, entry.host, entry.length);
      } else if (entry.kind !== "subclusters") {
        runs.add(entry.kind, g, g + cs, entry.host);
      } else {
        // 32 subclusters: allocated (data), zero, or falling through.
        const sub = cs / SUBCLUSTERS_PER_CLUSTER;
        for (let j = 0; j < SUBCLUSTERS_PER_CLUSTER; j++) {
          const bit = 1 << j;
          const from = g + j * sub;
          const host = entry.host < 0 ? -1 : entry.host + j * sub;
          if (entry.alloc & bit) runs.add("data", from, from + sub, host);
          else if (entry.zero & bit) runs.add("zero", from, from + sub, host);
          else runs.add("unallocated", from, from + sub, host);
        }
      }
    }
  }

  /** Decodes L2 entry `i` of the table at `l2Offset` (guest offset `g`). */
  #decode(view: DataView, i: number, l2Offset: number, g: number): Entry {
    const at = i * this.#entryBytes;
    const hi = view.getUint32(at);
    const lo = view.getUint32(at + 4);
    // Errors are built only when thrown: no closures on the hot path.
    const bad = (why: string, code: Qcow2ErrorCode = "BAD_TABLE_ENTRY") =>
      badEntry(why, code, l2Offset, i, g, at);
    const pastAnyFile = (offset: bigint) =>
      badEntry(
        `cluster offset ${hex(offset)} lies past the end of the file`,
        "OFFSET_PAST_END",
        l2Offset,
        i,
        g,
        at,
      );
    if (hi & COMPRESSED_HI) {
      if (this.#external) {
        throw bad("compressed cluster in an image with an external data file");
      }
      const bits = this.header.clusterBits;
      const host = compressedHostOffsetOf(hi, lo, bits);
      if (host < 0) {
        throw pastAnyFile(
          entryBits(hi, lo) & ((1n << BigInt(compressedOffsetBits(bits))) - 1n),
        );
      }
      const cluster = host - (host % this.clusterSize);
      if (this.#metadata.has(cluster)) {
        throw bad(
          `compressed data at ${hex(host)} lies on the image's metadata (${
            this.#metadata.what(cluster)
          })`,
          "METADATA_OVERLAP",
        );
      }
      return {
        kind: "compressed",
        host,
        length: compressedLength(host, additionalSectorsOf(hi, bits)),
      };
    }
    // Offsets of 2^53 and above lie past any file (and past exact numbers).
    const host = hostClusterOffsetOf(hi, lo);
    if (host < 0) throw pastAnyFile(entryBits(hi, lo) & L2_OFFSET_MASK);
    if (host % this.clusterSize !== 0) {
      throw bad(
        `cluster offset ${hex(host)} is not aligned to a cluster`,
        "UNALIGNED_OFFSET",
      );
    }
    if (host !== 0 && !this.#external && this.#metadata.has(host)) {
      throw bad(
        `cluster offset ${hex(host)} lies on the image's metadata (${
          this.#metadata.what(host)
        })`,
        "METADATA_OVERLAP",
      );
    }
    // With an external data file, offset 0 is a real place (guest cluster 0
    // maps there): the copied flag tells it from an unallocated entry.
    const allocated = host !== 0 || (this.#external && (hi & COPIED_HI) !== 0);
    if (this.#entryBytes === EXTENDED_ENTRY_SIZE) {
      // The bitmap half: zero bits 32-63, then allocation bits 0-31.
      const zero = view.getUint32(at + 8);
      const alloc = view.getUint32(at + 12);
      if (alloc & zero) {
        throw bad(
          `invalid subcluster bitmap ${hex(zero)}:${
            hex(alloc)
          }: a subcluster is both allocated and zero`,
          "BAD_SUBCLUSTER_BITMAP",
        );
      }
      if (!allocated && alloc !== 0) {
        throw bad(
          `invalid subcluster bitmap: allocated subclusters in an unallocated cluster`,
          "BAD_SUBCLUSTER_BITMAP",
        );
      }
      if (alloc === ALL_SUBCLUSTERS) return { kind: "data", host };
      // An allocated cluster keeps its host offset in its zero and
      // unallocated subclusters (QEMU's ZERO_ALLOC, UNALLOCATED_ALLOC).
      const kept = allocated ? host : -1;
      if (zero === ALL_SUBCLUSTERS) return { kind: "zero", host: kept };
      if (alloc === 0 && zero === 0) return { kind: "unallocated", host: kept };
      return { kind: "subclusters", host: kept, alloc, zero };
    }
    if (lo & ZERO_FLAG_LO) {
      if (this.header.version < 3) {
        throw bad("zero cluster entry in a version 2 image");
      }
      return { kind: "zero", host: allocated ? host : -1 };
    }
    return allocated
      ? { kind: "data", host }
      : { kind: "unallocated", host: -1 };
  }

  /**
   * The L2 table offset in L1 entry `index`, or 0 when unallocated.
   * @ignore
   */
  protected l2TableOffset(index: number): number {
    if (index >= this.#l1Entries) return 0;
    const hi = this.#l1.getUint32(index * ENTRY_SIZE);
    const lo = this.#l1.getUint32(index * ENTRY_SIZE + 4);
    const offset = hostClusterOffsetOf(hi, lo);
    if (offset < 0) {
      throw new Qcow2Error(
        "OFFSET_PAST_END",
        `Cannot read qcow2 image: L2 table offset ${
          hex(entryBits(hi, lo) & L1_OFFSET_MASK)
        } lies past the end of the file (L1 index ${index})`,
        { offset: this.header.l1TableOffset + index * ENTRY_SIZE },
      );
    }
    if (offset % this.clusterSize !== 0) {
      throw new Qcow2Error(
        "UNALIGNED_OFFSET",
        `Cannot read qcow2 image: L2 table offset ${
          hex(offset)
        } is not aligned to a cluster (L1 index ${index})`,
        { offset: this.header.l1TableOffset + index * ENTRY_SIZE },
      );
    }
    return offset;
  }
}

/** The error for L2 entry `i` of the table at `l2Offset`. */
function badEntry(
  why: string,
  code: Qcow2ErrorCode,
  l2Offset: number,
  i: number,
  g: number,
  at: number,
): Qcow2Error {
  return new Qcow2Error(
    code,
    `Cannot read qcow2 image: ${why} (L2 table at ${
      hex(l2Offset)
    }, index ${i}, guest offset ${hex(g)})`,
    { offset: l2Offset + at },
  );
}

/** A decoded L2 entry; `host` is -1 where no host cluster is kept. */
type Entry =
  | { kind: "data" | "zero" | "unallocated"; host: number }
  | { kind: "compressed"; host: number; length: number }
  | { kind: "subclusters"; host: number; alloc: number; zero: number };
