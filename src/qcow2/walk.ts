/**
 * The two-level walk qcow2 and qcow (version 1) share: an L1 table names L2
 * tables, each L2 table maps a run of guest clusters. This file walks the
 * guest range, loads L2 tables through the cache, merges the clusters into
 * extents, reads them (data, compressed, zero, backing) and closes the
 * files; each format supplies only its L1 entry and L2 entry decoding.
 *
 * Source: `docs/interop/qcow2.txt` "Cluster mapping"; QEMU
 * `qcow2_get_host_offset` and `block/qcow.c` `get_cluster_offset`.
 *
 * @module
 */

import {
  type CompressedRead,
  readCompressedRuns,
  readData,
  readEncrypted,
} from "./cluster_reads.ts";
import { type Codecs, webCodecs } from "../codecs/codecs.ts";
import type { DiskImage, Extent } from "../disk.ts";
import { checkRange, readBacking, throughBacking } from "../disk.ts";
import { ExtentRuns } from "../extent_runs.ts";
import { withJobs } from "../jobs.ts";
import type { ImageEncryption } from "../crypto/encryption.ts";
import type { ByteSource } from "../io/source.ts";
import { L2Cache, l2TableLoader } from "./l2_cache.ts";
import type { CompressionType } from "./header.ts";

/** What {@linkcode TwoLevelImage} is built from. */
export interface TwoLevelParts {
  /** The image file (metadata, and data without a data file). */
  source: ByteSource;
  /** Virtual disk size in bytes. */
  size: number;
  /** log2 of the cluster size. */
  clusterBits: number;
  /** Entries per L2 table. */
  l2Entries: number;
  /** Bytes of one L2 table. */
  l2TableBytes: number;
  /** L2 tables to keep cached. */
  cachedTables: number;
  /** File offset of the L1 table (where errors about its entries point). */
  l1TableOffset: number;
  /** What unallocated clusters read from; zeros without one. */
  backing?: DiskImage;
  /** Where data clusters lie, when not in `source` (qcow2 data file). */
  dataFile?: ByteSource;
  /** The codec of compressed clusters. */
  compressionType: CompressionType;
  /** Decompressors. */
  codecs?: Codecs;
  /** Closes the files opened for this image (backing and data files). */
  close?: () => void;
  /** The unlocked encryption of an encrypted image. */
  encryption?: ImageEncryption;
}

/** Which entries of which L2 table {@linkcode TwoLevelImage.addEntries} adds. */
export interface L2Span {
  /** File offset of the L2 table. */
  l2Offset: number;
  /** Guest offset that the table's first entry maps. */
  spanStart: number;
  /** First entry to add. */
  first: number;
  /** Entry after the last to add. */
  last: number;
}

/**
 * A disk image mapped by an L1 table and L2 tables: what qcow2 and qcow
 * (version 1) images share. Subclasses decode the entries (L1 entries into
 * L2 table offsets, L2 entries into extents); extents, reads and closing
 * are written once, here.
 *
 * @example Both formats read through the same walk
 * ```ts
 * import { openImage, type TwoLevelImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../../tests/fixtures/layouts/", import.meta.url);
 * for (const name of ["v1.qcow", "sub_nobacking.qcow2"]) {
 *   const image: TwoLevelImage = await openImage(await Deno.readFile(new URL(name, dir)));
 *   assertEquals(image.format, name.endsWith(".qcow") ? "qcow" : "qcow2");
 *   const first = new Uint8Array(512);
 *   await image.read(0, first);
 *   image.close();
 * }
 * ```
 */
export abstract class TwoLevelImage implements DiskImage {
  /** The image format, for messages and for callers to tell images apart. */
  abstract readonly format: "qcow2" | "qcow";
  /** The image file. */
  readonly source: ByteSource;
  /** Virtual disk size in bytes. */
  readonly size: number;
  /** Cluster size in bytes. */
  readonly clusterSize: number;
  /** The next layer of the backing chain, if any is followed. */
  readonly backing?: DiskImage;
  /** The external data file, when the image keeps its data in one. */
  readonly dataFile?: ByteSource;
  /** The unlocked encryption of an encrypted image (legacy AES or LUKS). */
  readonly encryption?: ImageEncryption;
  #walk: L2Walk;
  #l1TableOffset: number;
  #cache: L2Cache;
  #codecs: Codecs;
  #compressionType: CompressionType;
  #close?: () => void;

  /**
   * Sets up the walk over the L1 table the subclass decodes.
   *
   * @param parts What the image is built from.
   */
  protected constructor(parts: TwoLevelParts) {
    this.source = parts.source;
    this.size = parts.size;
    this.clusterSize = 2 ** parts.clusterBits;
    this.backing = parts.backing;
    this.dataFile = parts.dataFile;
    this.encryption = parts.encryption;
    this.#l1TableOffset = parts.l1TableOffset;
    this.#cache = new L2Cache(parts.cachedTables, parts.l2TableBytes);
    this.#codecs = parts.codecs ?? webCodecs;
    this.#compressionType = parts.compressionType;
    this.#close = parts.close;
    this.#walk = {
      size: this.size,
      clusterSize: this.clusterSize,
      l2Entries: parts.l2Entries,
      addSpan: (runs, l1Index, span) => this.#addSpan(runs, l1Index, span),
    };
  }

  /** Adds a span of the L2 table that L1 entry `l1Index` names, if any. */
  async #addSpan(
    runs: ExtentRuns,
    l1Index: number,
    span: Omit<L2Span, "l2Offset">,
  ): Promise<boolean> {
    const l2Offset = this.l2TableOffset(l1Index);
    if (l2Offset === 0) return false;
    await this.#cache.use(
      l2Offset,
      l2TableLoader(
        this.source,
        l2Offset,
        l1Index,
        this.#l1TableOffset,
        this.format,
      ),
      (table) =>
        this.addEntries(
          runs,
          new DataView(table.buffer, table.byteOffset, table.byteLength),
          { l2Offset, ...span },
        ),
    );
    return true;
  }

  /**
   * The L2 table offset in L1 entry `l1Index`, or 0 when unallocated (or
   * past the L1 table).
   *
   * @throws {Qcow2Error} For an invalid L1 entry.
   * @ignore
   */
  protected abstract l2TableOffset(l1Index: number): number;

  /**
   * Adds the extents of entries `[span.first, span.last)` of the L2 table
   * at `span.l2Offset`, which maps the guest bytes from `span.spanStart`,
   * to `runs`.
   *
   * @throws {Qcow2Error} For an invalid L2 entry.
   * @ignore
   */
  protected abstract addEntries(
    runs: ExtentRuns,
    table: DataView,
    span: L2Span,
  ): void;

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
  ownExtents(start = 0, end: number = this.size): AsyncGenerator<Extent> {
    return walkExtents(this.#walk, start, end);
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
    const data = this.dataFile ?? this.source;
    const external = this.dataFile !== undefined;
    const { encryption, format } = this;
    await readExtents(
      this.ownExtents(position, position + buffer.length),
      position,
      buffer,
      {
        readData: encryption
          ? (e, into) =>
            readEncrypted(
              data,
              encryption,
              e.hostOffset!,
              into,
              e.start,
              format,
              external,
            )
          : (e, into) =>
            readData(data, e.hostOffset!, into, e.start, format, external),
        readCompressed: (compressed) =>
          readCompressedRuns(
            this.source,
            compressed,
            this.clusterSize,
            this.#codecs,
            this.#compressionType,
            format,
          ),
        backing: this.backing,
      },
    );
  }

  /** Closes the backing and data files opened for this image. */
  close(): void {
    this.#close?.();
    this.#close = undefined;
  }
}

/** How {@linkcode walkL2Tables} reaches a layer's L2 tables. */
export interface L2Walk {
  /** Virtual disk size in bytes. */
  size: number;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Entries per L2 table. */
  l2Entries: number;
  /**
   * Adds to `runs` the extents of entries `[span.first, span.last)` of the
   * L2 table that L1 entry `l1Index` names (mapping guest bytes from
   * `span.spanStart`).
   *
   * @returns False when the L1 entry names no L2 table (the span is then
   * unallocated).
   */
  addSpan(
    runs: ExtentRuns,
    l1Index: number,
    span: Omit<L2Span, "l2Offset">,
  ): Promise<boolean>;
}

/**
 * The extents of guest bytes `[start, end)` of one layer: the L1 entries
 * covering the range in order, each L2 table's entries added through
 * `walk.addSpan`, adjacent clusters of one kind merged. The one walk of the
 * read-only images (qcow2 and qcow) and the read-write image. The extents
 * come in batches, those completed after each L2 table, so that a caller
 * that collects them pays nothing per extent.
 *
 * @param walk The cluster size, the L2 table size and how to add a span.
 * @param start First guest byte.
 * @param end Guest byte after the last.
 * @returns The extents in order, clipped to the range, all at depth 0, in
 * batches (none empty).
 * @throws {RangeError} If the range is not within the virtual size.
 * @throws {Qcow2Error} What `walk.addSpan` throws for an invalid entry.
 *
 * @example An image whose L1 table names no L2 table
 * ```ts
 * import { walkL2Tables } from "./walk.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const walk = { size: 100_000, clusterSize: 512, l2Entries: 64, addSpan: () => Promise.resolve(false) };
 * const extents = (await Array.fromAsync(walkL2Tables(walk, 0, 100_000))).flat();
 * assertEquals(extents.map((e) => [e.kind, e.start, e.length]), [["unallocated", 0, 100_000]]);
 * ```
 */
export async function* walkL2Tables(
  walk: L2Walk,
  start: number,
  end: number,
): AsyncGenerator<Extent[]> {
  checkRange(start, end - start, walk.size);
  if (start >= end) return;
  const cs = walk.clusterSize;
  const l2Entries = walk.l2Entries;
  const l1Span = cs * l2Entries;
  const runs = new ExtentRuns(start, end);
  for (
    let l1Index = Math.floor(start / l1Span);
    l1Index * l1Span < end;
    l1Index++
  ) {
    const spanStart = l1Index * l1Span;
    const first = spanStart < start ? Math.floor((start - spanStart) / cs) : 0;
    const last = Math.min(l2Entries, Math.ceil((end - spanStart) / cs));
    if (!await walk.addSpan(runs, l1Index, { spanStart, first, last })) {
      runs.add("unallocated", spanStart, spanStart + l1Span);
    }
    const batch = runs.take();
    if (batch.length > 0) yield batch;
  }
  const batch = runs.finish();
  if (batch.length > 0) yield batch;
}

/**
 * {@linkcode walkL2Tables}'s extents one at a time, for callers that
 * stream them (reads start while the walk goes on).
 *
 * @param walk The cluster size, the L2 table size and how to add a span.
 * @param start First guest byte.
 * @param end Guest byte after the last.
 * @returns The extents in order.
 * @throws {RangeError} If the range is not within the virtual size.
 * @throws {Qcow2Error} What `walk.addSpan` throws for an invalid entry.
 *
 * @example One extent for an image that allocates nothing
 * ```ts
 * import { walkExtents } from "./walk.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const walk = { size: 4096, clusterSize: 512, l2Entries: 64, addSpan: () => Promise.resolve(false) };
 * const extents = await Array.fromAsync(walkExtents(walk, 0, 4096));
 * assertEquals(extents.map((e) => e.kind), ["unallocated"]);
 * ```
 */
export async function* walkExtents(
  walk: L2Walk,
  start: number,
  end: number,
): AsyncGenerator<Extent> {
  for await (const batch of walkL2Tables(walk, start, end)) yield* batch;
}

/** Where {@linkcode readExtents} reads each kind of extent from. */
export interface ExtentReads {
  /** Reads (and decrypts) a data extent's bytes. */
  readData(extent: Extent, into: Uint8Array): Promise<void>;
  /** Reads and decompresses the compressed extents, in one go. */
  readCompressed(compressed: CompressedRead[]): Promise<void>;
  /** What unallocated extents read from; zeros without one. */
  backing?: DiskImage;
}

/**
 * Fills `buffer` (guest bytes from `position`) from a layer's own extents:
 * data, compressed clusters, zeros, or the backing file. Reads start as
 * the extents come, while the walk goes on loading L2 tables (see
 * `src/jobs.ts`), and all settle before this returns.
 *
 * @param extents The layer's extents of exactly the buffer's range.
 * @param position Guest offset of the buffer's first byte.
 * @param buffer Where the bytes go.
 * @param reads How each kind of extent is read.
 * @throws {Qcow2Error} What the reads throw.
 *
 * @example Zeros and data
 * ```ts
 * import { readExtents } from "./walk.ts";
 * import type { Extent } from "../disk.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const extents: Extent[] = [
 *   { start: 0, length: 2, kind: "zero", depth: 0 },
 *   { start: 2, length: 2, kind: "data", hostOffset: 0, depth: 0 },
 * ];
 * const buffer = new Uint8Array(4).fill(9);
 * await readExtents(extents, 0, buffer, {
 *   readData: (_e, into) => Promise.resolve(void into.fill(7)),
 *   readCompressed: () => Promise.resolve(),
 * });
 * assertEquals(buffer, new Uint8Array([0, 0, 7, 7]));
 * ```
 */
export async function readExtents(
  extents: AsyncIterable<Extent> | Iterable<Extent>,
  position: number,
  buffer: Uint8Array,
  reads: ExtentReads,
): Promise<void> {
  const compressed: CompressedRead[] = [];
  const backing = reads.backing;
  await withJobs(async (start) => {
    const place = (e: Extent) => {
      const into = buffer.subarray(
        e.start - position,
        e.start - position + e.length,
      );
      if (e.kind === "data") start(reads.readData(e, into));
      else if (e.kind === "compressed") compressed.push({ extent: e, into });
      else if (e.kind === "unallocated" && backing) {
        start(readBacking(backing, e.start, into));
      } else into.fill(0);
    };
    if (Symbol.asyncIterator in extents) {
      for await (const e of extents) place(e);
    } else {
      for (const e of extents) place(e);
    }
    start(reads.readCompressed(compressed));
  });
}
