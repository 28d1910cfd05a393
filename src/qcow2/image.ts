/**
 * The guest view of one qcow2 layer: its L1/L2 mapping (standard or extended
 * entries), the files its data lives in, and what it falls through to.
 *
 * @module
 */

import {
  type CompressedRead,
  readCompressedRuns,
  readData,
} from "./cluster_reads.ts";
import { type Codecs, webCodecs } from "../codecs/codecs.ts";
import {
  checkRange,
  type DiskImage,
  type Extent,
  readBacking,
  throughBacking,
} from "../disk.ts";
import { ExtentRuns } from "../extent_runs.ts";
import { withJobs } from "../jobs.ts";
import { hex, Qcow2Error, type Qcow2ErrorCode } from "../errors.ts";
import { MetadataMap } from "./metadata.ts";
import type { Qcow2Header } from "./header.ts";
import type { ByteSource } from "../io/source.ts";
import { L2Cache, l2TableLoader } from "./l2_cache.ts";
import type { Snapshot } from "./snapshots.ts";

/** Default bytes of L2 tables kept in memory. */
export const DEFAULT_L2_CACHE_BYTES = 4 * 1024 * 1024;
const TWO_32 = 2 ** 32;

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
export class Qcow2Image implements DiskImage {
  /** The parsed header. */
  readonly header: Qcow2Header;
  /** The image file. */
  readonly source: ByteSource;
  /** Virtual disk size in bytes (the header's size, rounded down to 512). */
  readonly size: number;
  /** Cluster size in bytes. */
  readonly clusterSize: number;
  /** The internal snapshots, in table order. */
  readonly snapshots: readonly Snapshot[];
  /** The snapshot being read, or undefined for the active state. */
  readonly snapshot?: Snapshot;
  /** The next layer of the backing chain, if any is followed. */
  readonly backing?: DiskImage;
  /** The external data file, when the image keeps its data in one. */
  readonly dataFile?: ByteSource;
  #l1: DataView;
  #l1Entries: number;
  #entryBytes: number;
  #cache: L2Cache;
  #codecs: Codecs;
  #data: ByteSource;
  #external: boolean;
  #close?: () => void;
  #metadata: MetadataMap;

  /** @internal Use `openImage`. */
  constructor(parts: Qcow2Parts) {
    const { header } = parts;
    this.header = header;
    this.source = parts.source;
    this.size = parts.size;
    this.clusterSize = header.clusterSize;
    this.snapshots = parts.snapshots;
    this.snapshot = parts.snapshot;
    this.backing = parts.backing;
    this.#l1 = new DataView(
      parts.l1.buffer,
      parts.l1.byteOffset,
      parts.l1.byteLength,
    );
    this.#l1Entries = parts.l1.length / 8;
    this.#entryBytes = header.features.extendedL2 ? 16 : 8;
    this.#cache = new L2Cache(
      (parts.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES) / header.clusterSize,
      header.clusterSize,
    );
    this.#codecs = parts.codecs ?? webCodecs;
    this.dataFile = parts.dataFile;
    this.#external = parts.dataFile !== undefined;
    this.#data = parts.dataFile ?? parts.source;
    this.#close = parts.close;
    this.#metadata = new MetadataMap(header, parts.l1, parts.snapshots);
  }

  /**
   * The extents covering guest bytes `[start, end)`, in order, through the
   * backing chain: what this image does not allocate is described by the
   * layers below (`depth` says which), and past them is `unallocated`.
   *
   * @param start First guest byte (default 0).
   * @param end Guest byte after the last (default the virtual size).
   * @returns The extents, clipped to the range.
   * @throws {Qcow2Error} For an invalid L1 or L2 entry (`UNALIGNED_OFFSET`,
   * `OFFSET_PAST_END`, `METADATA_OVERLAP`, `BAD_SUBCLUSTER_BITMAP`,
   * `BAD_TABLE_ENTRY`).
   */
  async *extents(start = 0, end: number = this.size): AsyncGenerator<Extent> {
    yield* throughBacking(this.ownExtents(start, end), this.backing);
  }

  /**
   * The extents of this layer alone: `unallocated` where it would fall
   * through to its backing file. Adjacent clusters of one kind are merged
   * (data only where the file offsets are contiguous too).
   *
   * @param start First guest byte (default 0).
   * @param end Guest byte after the last (default the virtual size).
   * @returns The extents, clipped to the range, all at depth 0.
   */
  async *ownExtents(
    start = 0,
    end: number = this.size,
  ): AsyncGenerator<Extent> {
    checkRange(start, end - start, this.size);
    if (start >= end) return;
    const cs = this.clusterSize;
    const l2Entries = cs / this.#entryBytes;
    const l1Span = cs * l2Entries;

    const runs = new ExtentRuns(start, end);
    for (
      let l1Index = Math.floor(start / l1Span);
      l1Index * l1Span < end;
      l1Index++
    ) {
      const spanStart = l1Index * l1Span;
      const l2Offset = this.#l1Entry(l1Index);
      if (l2Offset === 0) {
        runs.add("unallocated", spanStart, spanStart + l1Span);
      } else {
        const first = spanStart < start
          ? Math.floor((start - spanStart) / cs)
          : 0;
        const last = Math.min(l2Entries, Math.ceil((end - spanStart) / cs));
        await this.#cache.use(
          l2Offset,
          l2TableLoader(
            this.source,
            l2Offset,
            l1Index,
            this.header.l1TableOffset,
            "qcow2",
          ),
          (table) =>
            this.#addEntries(runs, table, l2Offset, spanStart, first, last),
        );
      }
      yield* runs.take();
    }
    yield* runs.finish();
  }

  /**
   * Adds entries `[first, last)` of the L2 table at `l2Offset`, which maps
   * the guest bytes from `spanStart`, to `runs`.
   */
  #addEntries(
    runs: ExtentRuns,
    table: Uint8Array,
    l2Offset: number,
    spanStart: number,
    first: number,
    last: number,
  ): void {
    const cs = this.clusterSize;
    const view = new DataView(
      table.buffer,
      table.byteOffset,
      table.byteLength,
    );
    // Runs of all-zero entries (unallocated, no flags) are skipped in
    // one scan of 32-bit words: a sparse image's L2 tables are mostly
    // that. (Zero or not does not depend on byte order.)
    const wpe = this.#entryBytes / 4;
    const words = new Uint32Array(
      table.buffer,
      table.byteOffset,
      table.byteLength >>> 2,
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
        const sub = cs / 32;
        for (let j = 0; j < 32; j++) {
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

  /**
   * Fills `buffer` with the guest bytes at `position`, reading through the
   * backing chain where this image allocates nothing.
   *
   * @param position Guest offset of the first byte.
   * @param buffer Where the bytes go; its length is how many are read.
   * @throws {RangeError} If the range runs past the virtual size.
   * @throws {Qcow2Error} If the image is corrupt where the bytes lie.
   */
  async read(position: number, buffer: Uint8Array): Promise<void> {
    const end = position + buffer.length;
    const compressed: CompressedRead[] = [];
    // Reads start as their extents are found, while the walk goes on
    // loading L2 tables: see src/jobs.ts.
    await withJobs(async (start) => {
      for await (const e of this.ownExtents(position, end)) {
        const into = buffer.subarray(
          e.start - position,
          e.start - position + e.length,
        );
        if (e.kind === "data") {
          const file = this.#data;
          start(
            readData(
              file,
              e.hostOffset!,
              into,
              e.start,
              "qcow2",
              this.#external,
            ),
          );
        } else if (e.kind === "compressed") {
          compressed.push({ extent: e, into });
        } else if (e.kind === "unallocated" && this.backing) {
          start(readBacking(this.backing, e.start, into));
        } else {
          into.fill(0);
        }
      }
      start(readCompressedRuns(
        this.source,
        compressed,
        this.clusterSize,
        this.#codecs,
        this.header.compressionType,
        "qcow2",
      ));
    });
  }

  /** Closes the backing and data files opened for this image. */
  close(): void {
    this.#close?.();
    this.#close = undefined;
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
    if (hi & 0x40000000) {
      if (this.#external) {
        throw bad("compressed cluster in an image with an external data file");
      }
      // x = 70 - cluster_bits bits of byte offset, then the count of extra
      // 512-byte sectors, up to bit 61.
      const bits = this.header.clusterBits;
      const shift = 38 - bits; // x - 32
      const high = hi & ((1 << shift) - 1);
      if (high >= 0x200000) {
        throw pastAnyFile(BigInt(high) << 32n | BigInt(lo >>> 0));
      }
      const host = high * TWO_32 + (lo >>> 0);
      const sectors = ((hi >>> shift) & ((1 << (bits - 8)) - 1)) + 1;
      if (this.#metadata.has(host - (host % this.clusterSize))) {
        throw bad(
          `compressed data at ${hex(host)} lies on the image's metadata (${
            this.#metadata.what(host - (host % this.clusterSize))
          })`,
          "METADATA_OVERLAP",
        );
      }
      return { kind: "compressed", host, length: sectors * 512 - (host % 512) };
    }
    // Offsets of 2^53 and above lie past any file (and past exact numbers).
    if (hi & 0x00e00000) {
      throw pastAnyFile(
        BigInt(hi & 0x00ffffff) << 32n | BigInt((lo & 0xfffffe00) >>> 0),
      );
    }
    const host = (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0);
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
    const allocated = host !== 0 || (this.#external && (hi & 0x80000000) !== 0);
    if (this.#entryBytes === 16) {
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
      if (alloc === 0xffffffff) return { kind: "data", host };
      // An allocated cluster keeps its host offset in its zero and
      // unallocated subclusters (QEMU's ZERO_ALLOC, UNALLOCATED_ALLOC).
      const kept = allocated ? host : -1;
      if (zero === 0xffffffff) return { kind: "zero", host: kept };
      if (alloc === 0 && zero === 0) return { kind: "unallocated", host: kept };
      return { kind: "subclusters", host: kept, alloc, zero };
    }
    if (lo & 1) {
      if (this.header.version < 3) {
        throw bad("zero cluster entry in a version 2 image");
      }
      return { kind: "zero", host: allocated ? host : -1 };
    }
    return allocated
      ? { kind: "data", host }
      : { kind: "unallocated", host: -1 };
  }

  /** The L2 table offset in L1 entry `index`, or 0 when unallocated. */
  #l1Entry(index: number): number {
    if (index >= this.#l1Entries) return 0;
    const hi = this.#l1.getUint32(index * 8);
    const lo = this.#l1.getUint32(index * 8 + 4);
    if (hi & 0x00e00000) {
      throw new Qcow2Error(
        "OFFSET_PAST_END",
        `Cannot read qcow2 image: L2 table offset ${
          hex(BigInt(hi & 0x00ffffff) << 32n | BigInt((lo & 0xfffffe00) >>> 0))
        } lies past the end of the file (L1 index ${index})`,
        { offset: this.header.l1TableOffset + index * 8 },
      );
    }
    const offset = (hi & 0x00ffffff) * TWO_32 + ((lo & 0xfffffe00) >>> 0);
    if (offset % this.clusterSize !== 0) {
      throw new Qcow2Error(
        "UNALIGNED_OFFSET",
        `Cannot read qcow2 image: L2 table offset ${
          hex(offset)
        } is not aligned to a cluster (L1 index ${index})`,
        { offset: this.header.l1TableOffset + index * 8 },
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
