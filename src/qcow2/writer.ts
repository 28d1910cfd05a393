/**
 * The sequential qcow2 writer: guest clusters in, in guest order, a complete
 * image out. The metadata comes first in the file (header, refcount table,
 * refcount blocks, L1 table), then each L2 table before the clusters it maps
 * (see `placement.ts`). Over a positional target the tables are written once
 * their content is known; {@linkcode writeStream} writes the same kind of
 * file front to back for a pipe.
 *
 * The encoders are the reader's (`entries.ts`, `header_encode.ts`); the
 * refcounts are what `qemu-img check` counts (QEMU `qcow2_check_refcounts`).
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import type { ResolvedCreateOptions } from "./create_options.ts";
import {
  encodeExtendedL2Entry,
  encodeL1Entry,
  encodeL2Entry,
  encodeRefcountTableEntry,
} from "./entries.ts";
import {
  encodeFeatures,
  encodeHeader,
  QEMU_FEATURE_NAMES,
} from "./header_encode.ts";
import { COMPRESSED_SECTOR_SIZE, CRYPT_METHOD, ENTRY_SIZE } from "./layout.ts";
import {
  type ClusterKind,
  type Geometry,
  layoutMetadata,
  type MetadataLayout,
  Placer,
} from "./placement.ts";
import { RefcountBlocks } from "./refcount_blocks.ts";
import type { NewLuks } from "../crypto/luks_create.ts";
import { DataWrites } from "./data_writes.ts";

/**
 * Where a new image's bytes go: positional writes, in any order, then the
 * final length. `fileSink` in `src/io/sink.ts` gives one over a seekable
 * file.
 */
export interface ImageTarget {
  /** Writes `bytes` at file offset `position`; `bytes` may be reused after. */
  writeAt(position: number, bytes: Uint8Array): Promise<void>;
  /** Sets the file's final length in bytes (what was never written reads as zeros). */
  finish(size: number): Promise<void>;
  /**
   * Optional: a new buffer of `size` bytes that the target writes without
   * a copy (memory shared with the thread that writes). A target with
   * `allocate` takes a write while earlier ones still run, so the writer
   * fills its next batch meanwhile; writes that overlap land in the order
   * given.
   */
  allocate?(size: number): Uint8Array;
}

/** The geometry of an image with these options. */
export function geometryOf(options: ResolvedCreateOptions): Geometry {
  return {
    clusterBits: Math.log2(options.clusterSize),
    refcountOrder: Math.log2(options.refcountBits),
    extendedL2: options.extendedL2,
    size: options.size,
  };
}

/**
 * The first cluster of a new image: QEMU's header for these options (v3:
 * header_length 112, the feature name table when clusters exceed 4 KiB, as
 * `qemu-img create` writes it), the backing format and the backing name.
 */
export function newHeader(
  options: ResolvedCreateOptions,
  layout: MetadataLayout,
  encryptionAreaLength = 0,
): Uint8Array {
  const v3 = options.compat === "1.1";
  const features = encodeFeatures({
    compressionType: options.compressionType,
    extendedL2: options.extendedL2,
    lazyRefcounts: options.lazyRefcounts,
  });
  return encodeHeader({
    version: v3 ? 3 : 2,
    clusterBits: Math.log2(options.clusterSize),
    size: options.size,
    cryptMethod: layout.encryptionAreaOffset !== undefined
      ? CRYPT_METHOD.luks
      : CRYPT_METHOD.none,
    l1Size: layout.l1Size,
    l1TableOffset: layout.l1TableOffset,
    refcountTableOffset: layout.refcountTableOffset,
    refcountTableClusters: layout.refcountTableClusters,
    nbSnapshots: 0,
    snapshotsOffset: 0,
    ...features,
    refcountOrder: Math.log2(options.refcountBits),
    compressionType: options.compressionType,
    ...(options.backingFile !== undefined
      ? { backingFile: options.backingFile }
      : {}),
    extensions: {
      ...(layout.encryptionAreaOffset !== undefined
        ? {
          encryption: {
            offset: layout.encryptionAreaOffset,
            length: encryptionAreaLength,
          },
        }
        : {}),
      ...(options.backingFormat !== undefined
        ? { backingFormat: options.backingFormat }
        : {}),
      ...(v3 && options.clusterSize > 4096
        ? { featureNames: [...QEMU_FEATURE_NAMES] }
        : {}),
    },
  });
}

/**
 * Where the file ends after a cluster was placed: the end of the placement,
 * or for a data cluster with some subclusters unallocated, the end of its
 * last allocated subcluster (QEMU writes no more).
 */
function endOf(
  kind: ClusterKind,
  hostOffset: number | undefined,
  position: number,
  clusterSize: number,
  subclusters?: number,
): number {
  if (
    kind !== "data" || subclusters === undefined || hostOffset === undefined
  ) {
    return position;
  }
  return hostOffset + (32 - Math.clz32(subclusters)) * (clusterSize / 32);
}

/**
 * The file's end after placing a cluster: as {@linkcode endOf} for one with
 * a host cluster; one without (a zero cluster) moves it only past an L2
 * table placed for it, so that a partly allocated cluster before it still
 * ends the file where its last subcluster ends.
 */
function fileEndAfter(
  before: number,
  placed: { hostOffset?: number; newL2Table?: number },
  kind: ClusterKind,
  position: number,
  clusterSize: number,
  subclusters?: number,
): number {
  if (placed.hostOffset !== undefined) {
    return endOf(kind, placed.hostOffset, position, clusterSize, subclusters);
  }
  return placed.newL2Table !== undefined ? position : before;
}

/** Every subcluster of a cluster allocated. */
const ALL_SUBCLUSTERS = 0xffffffff;

/** Encodes one L2 entry into `table` at `index`. */
function setEntry(
  table: DataView,
  index: number,
  kind: ClusterKind,
  hostOffset: number,
  length: number,
  clusterBits: number,
  extendedL2: boolean,
  subclusters = ALL_SUBCLUSTERS,
  zeroSubclusters = 0,
): void {
  let raw: bigint;
  let bitmap = 0n;
  if (kind === "compressed") {
    const sectors =
      Math.floor((hostOffset + length - 1) / COMPRESSED_SECTOR_SIZE) -
      Math.floor(hostOffset / COMPRESSED_SECTOR_SIZE);
    raw = encodeL2Entry(
      {
        kind: "compressed",
        hostOffset,
        additionalSectors: sectors,
        copied: false,
      },
      clusterBits,
    );
  } else if (extendedL2) {
    const [word, bits] = encodeExtendedL2Entry(
      kind !== "zero"
        ? {
          kind: "standard",
          hostClusterOffset: hostOffset,
          copied: true,
          zero: false,
          allocationBitmap: kind === "data" ? subclusters : 0,
          zeroBitmap: kind === "data" ? zeroSubclusters : 0,
        }
        : {
          kind: "standard",
          hostClusterOffset: 0,
          copied: false,
          zero: false,
          allocationBitmap: 0,
          // Those not zero read from the backing file.
          zeroBitmap: subclusters,
        },
      clusterBits,
    );
    raw = word;
    bitmap = bits;
  } else {
    raw = encodeL2Entry(
      kind !== "zero"
        ? {
          kind: "standard",
          hostClusterOffset: hostOffset,
          copied: true,
          zero: false,
        }
        : { kind: "standard", hostClusterOffset: 0, copied: false, zero: true },
      clusterBits,
    );
  }
  const size = extendedL2 ? 16 : ENTRY_SIZE;
  table.setBigUint64(index * size, raw);
  if (extendedL2) table.setBigUint64(index * size + 8, bitmap);
}

/**
 * Writes a new image through a positional target, cluster by cluster in
 * guest order. Metadata is reserved at the front for at most `bound`
 * clusters of L2 tables and data; refcount block slots left unused stay
 * holes that nothing references.
 *
 * @example An image with one data cluster, in memory
 * ```ts
 * import { Qcow2Writer, resolveCreateOptions } from "@qcow2/qcow2";
 * import { openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let file = new Uint8Array(0);
 * const target = {
 *   writeAt(position: number, bytes: Uint8Array) {
 *     if (position + bytes.length > file.length) {
 *       const grown = new Uint8Array(position + bytes.length);
 *       grown.set(file);
 *       file = grown;
 *     }
 *     file.set(bytes, position);
 *     return Promise.resolve();
 *   },
 *   finish(size: number) {
 *     const out = new Uint8Array(size);
 *     out.set(file.subarray(0, size));
 *     file = out;
 *     return Promise.resolve();
 *   },
 * };
 * const writer = new Qcow2Writer(target, resolveCreateOptions({ size: 1 << 20 }), 2);
 * await writer.add(3, "data", new Uint8Array(65536).fill(7));
 * await writer.finish();
 * const image = await openImage(file);
 * const cluster = new Uint8Array(65536);
 * await image.read(3 * 65536, cluster);
 * assertEquals(cluster[100], 7);
 * ```
 */
export class Qcow2Writer {
  /** Where the metadata lies. */
  readonly layout: MetadataLayout;
  #target: ImageTarget;
  #options: ResolvedCreateOptions;
  #clusterBits: number;
  #placer: Placer;
  #refcounts: RefcountBlocks;
  #l1 = new Map<number, number>();
  #l2: Uint8Array | undefined;
  #l2View: DataView | undefined;
  #l2Offset = 0;
  /** L2 tables filled, to be written: `[host offset, table]`. */
  #fullL2: [number, Uint8Array][] = [];
  /** The data written: batches, runs of bytes in the target's memory. */
  #data: DataWrites;
  #dataEnd = 0;
  #last = -1;
  #lastHostOffset: number | undefined;
  #luks?: NewLuks;

  /**
   * Starts a new image: nothing is written before the first cluster.
   *
   * @param target Where the image goes.
   * @param options The image's options.
   * @param bound The most clusters that will be placed after the metadata
   *   (L2 tables and data clusters; a compressed cluster counts as one).
   * @param luks For a LUKS-encrypted image (from `createLuks`): its LUKS
   *   area goes after the L1 table, and data clusters are encrypted with
   *   their host offsets as sector numbers (QEMU's `crypt_physical_offset`).
   */
  constructor(
    target: ImageTarget,
    options: ResolvedCreateOptions,
    bound: number,
    luks?: NewLuks,
  ) {
    this.#target = target;
    this.#data = new DataWrites(target);
    this.#options = options;
    const geometry = geometryOf(options);
    this.#clusterBits = geometry.clusterBits;
    this.#luks = luks;
    this.layout = layoutMetadata(
      geometry,
      bound,
      luks?.area.length ?? 0,
      // As `qemu-img create` lays out each preallocation.
      options.preallocation,
    );
    this.#refcounts = new RefcountBlocks(
      this.layout.clusterSize,
      geometry.refcountOrder,
    );
    this.#placer = new Placer(
      this.layout,
      options.refcountBits,
      (c) => this.#refcounts.increment(c),
    );
    this.#dataEnd = this.layout.dataStart;
  }

  /**
   * Adds guest cluster `cluster`, after every cluster added before.
   *
   * @param cluster The guest cluster index.
   * @param kind `data` (its bytes, one cluster; none for preallocated
   *   metadata), `compressed` (the compressed bytes, shorter than a
   *   cluster) or `zero` (a v3 zero cluster).
   * @param bytes The cluster's bytes; may be reused once the promise
   *   settles, or, if they lie in a buffer from {@linkcode allocate}, once
   *   {@linkcode release} has settled for it.
   * @param subclusters With extended L2, for `data`: the subclusters
   *   allocated (bit i: subcluster i; default all).
   * @param ranges For `data`: the byte ranges of `bytes` to write,
   *   `[from, to)` pairs in increasing order (default all of it); the rest
   *   of the host cluster is left unwritten (holes of a preallocated file).
   * @param zeroSubclusters With extended L2, for `data`: subclusters (not
   *   allocated ones) that read as zeros (default none).
   */
  async add(
    cluster: number,
    kind: ClusterKind,
    bytes?: Uint8Array,
    subclusters?: number,
    ranges?: number[],
    zeroSubclusters?: number,
  ): Promise<void> {
    const hostOffset = this.#place(
      cluster,
      kind,
      bytes?.length ?? 0,
      subclusters,
      zeroSubclusters,
    );
    if (this.#fullL2.length > 0) await this.#writeFullL2();
    if (bytes && hostOffset !== undefined) {
      if (this.#luks && kind === "data") {
        // Preallocated zeros stay as they are, as in QEMU (they read as
        // garbage until written).
        const sealed = bytes.slice();
        await this.#luks.encryption.encrypt(hostOffset, sealed);
        bytes = sealed;
      }
      if (ranges === undefined) await this.#data.write(hostOffset, bytes);
      else {
        for (let i = 0; i < ranges.length; i += 2) {
          await this.#data.write(
            hostOffset + ranges[i],
            bytes.subarray(ranges[i], ranges[i + 1]),
          );
        }
      }
    }
  }

  /**
   * Adds guest clusters `cluster`, `cluster + 1`, ... as data, after every
   * cluster added before: the same as an `add` for each, with fewer calls
   * and larger writes.
   *
   * @param cluster The first guest cluster index.
   * @param bytes The clusters' bytes, one after the other (a whole number
   *   of clusters); reused as `add` says.
   */
  async addRun(cluster: number, bytes: Uint8Array): Promise<void> {
    const cs = this.layout.clusterSize;
    const count = bytes.length / cs;
    if (!Number.isInteger(count) || count < 1) {
      throw new RangeError(
        `a run holds whole clusters of ${cs} bytes, not ${bytes.length} bytes`,
      );
    }
    if (this.#luks) {
      // Each cluster is encrypted with its own host offset.
      for (let i = 0; i < count; i++) {
        await this.add(
          cluster + i,
          "data",
          bytes.subarray(i * cs, (i + 1) * cs),
        );
      }
      return;
    }
    let first = 0; // the first cluster of the run of contiguous host clusters
    let host = -1; // its host offset
    for (let i = 0; i < count; i++) {
      const at = this.#place(cluster + i, "data", cs)!;
      if (host >= 0 && at === host + (i - first) * cs) continue;
      if (host >= 0) {
        await this.#data.write(host, bytes.subarray(first * cs, i * cs));
      }
      first = i;
      host = at;
    }
    await this.#data.write(host, bytes.subarray(first * cs));
    if (this.#fullL2.length > 0) await this.#writeFullL2();
  }

  /**
   * Places guest cluster `cluster` (`length` bytes for `data` or
   * `compressed`) and sets its L2 entry; returns its host offset, if it has
   * one.
   */
  #place(
    cluster: number,
    kind: ClusterKind,
    length: number,
    subclusters?: number,
    zeroSubclusters?: number,
  ): number | undefined {
    if (cluster <= this.#last) {
      throw new RangeError(
        `guest cluster ${cluster} comes after cluster ${this.#last}`,
      );
    }
    this.#last = cluster;
    const placed = this.#placer.place(cluster, kind, length);
    if (placed.newL2Table !== undefined) {
      // The full one is written by the caller's #writeFullL2().
      if (this.#l2) this.#fullL2.push([this.#l2Offset, this.#l2]);
      this.#l2 = new Uint8Array(this.layout.clusterSize);
      this.#l2View = new DataView(this.#l2.buffer);
      this.#l2Offset = placed.newL2Table;
      this.#l1.set(this.#placer.l1Index, placed.newL2Table);
    }
    setEntry(
      this.#l2View!,
      cluster % this.layout.l2Entries,
      kind,
      placed.hostOffset ?? 0,
      length,
      this.#clusterBits,
      this.#options.extendedL2,
      subclusters,
      zeroSubclusters,
    );
    this.#dataEnd = fileEndAfter(
      this.#dataEnd,
      placed,
      kind,
      this.#placer.position,
      this.layout.clusterSize,
      subclusters,
    );
    if (kind === "data" || kind === "preallocated") {
      this.#lastHostOffset = placed.hostOffset;
    }
    return placed.hostOffset;
  }

  /**
   * The file offset of the last data or preallocated cluster placed, if
   * any (for `finishPreallocated`).
   */
  get lastHostOffset(): number | undefined {
    return this.#lastHostOffset;
  }

  /**
   * Ends the placing: refcount blocks placed among the clusters (see
   * `MetadataLayout.inlineRefcountBlocks`) that the last run of data
   * clusters needs go after it.
   *
   * @returns Where the clusters placed end (bytes).
   */
  endPlacement(): number {
    return this.#placer.endAllocation();
  }

  /** Writes the L2 tables filled since the last call. */
  async #writeFullL2(): Promise<void> {
    while (this.#fullL2.length > 0) {
      const [offset, table] = this.#fullL2.shift()!;
      await this.#target.writeAt(offset, table);
    }
  }

  /** Writes every L2 table, the one being filled too. */
  async #flushL2(): Promise<void> {
    await this.#writeFullL2();
    if (!this.#l2) return;
    await this.#target.writeAt(this.#l2Offset, this.#l2);
    this.#l2 = undefined;
  }

  /**
   * A buffer for guest bytes that `add` writes where they lie, without a
   * copy: the target's own memory where it has `allocate`, else a plain
   * buffer (whose bytes `add` copies). Before filling it again, call
   * {@linkcode Qcow2Writer.release}.
   *
   * @param size Its length in bytes.
   * @returns The buffer.
   */
  allocate(size: number): Uint8Array {
    return this.#data.allocate(size);
  }

  /**
   * Waits until every byte of `buffer` (from {@linkcode allocate}) given to
   * `add` is written, so that it may be filled again.
   *
   * @param buffer A buffer from `allocate`.
   * @throws What a write failed with.
   */
  release(buffer: Uint8Array): Promise<void> {
    return this.#data.release(buffer);
  }

  /**
   * Starts the writes of the data still gathered, then waits for every
   * write left running and fails with the first failure. `finish` calls
   * it; call it also before giving up on an image whose `add` failed, so
   * that no write outlives it.
   */
  settle(): Promise<void> {
    return this.#data.settle();
  }

  /**
   * Writes the metadata and sets the file's length.
   *
   * @param dataEnd Where the file ends, if not at the end of the last
   *   cluster placed (preallocation ends at the image's last subcluster).
   * @returns The file's length in bytes.
   */
  async finish(dataEnd?: number): Promise<number> {
    await this.#flushL2();
    await this.#data.settle();
    this.#placer.endAllocation();
    // Where the refcount table is at the end (QEMU may have moved it).
    const table = this.#placer.refcountTable;
    const layout: MetadataLayout = {
      ...this.layout,
      refcountTableOffset: table.offset,
      refcountTableClusters: table.clusters,
    };
    const offsetOf = (index: number) => {
      const offset = this.#placer.refcountBlockOffset(index);
      if (offset === undefined) {
        throw new Qcow2Error(
          "SOURCE_CHANGED",
          `Cannot write qcow2 image: no refcount block was placed for block ${index} (did the source change while it was read?)`,
        );
      }
      return offset;
    };
    const { end, blocks } = finishRefcounts(
      layout,
      this.#refcounts,
      dataEnd ?? this.#dataEnd,
      offsetOf,
    );
    // Every block placed or counted has an entry, even one that counts
    // nothing yet (a range left empty by skipped zero clusters).
    const indices = new Set([
      ...this.#refcounts.blocks.keys(),
      ...this.#placer.refcountBlocksPlaced(),
      ...blocks,
    ]);
    for (const index of indices) {
      await this.#target.writeAt(
        offsetOf(index),
        this.#refcounts.blocks.get(index) ??
          new Uint8Array(layout.clusterSize),
      );
    }
    await this.#target.writeAt(
      layout.refcountTableOffset,
      refcountTable(layout, indices, offsetOf),
    );
    // The tables QEMU left when it moved the table: freed, but their bytes
    // (the entries they held) stay in the file.
    // (Not in its clusters reused since: QEMU searches for free clusters
    // from a table it freed. Nor, in a v2 image, in those preallocated
    // since: QEMU leaves the table's bytes there, which a v2 image, without
    // zero clusters, reads as the guest's; we leave zeros.)
    const cs = layout.clusterSize;
    const v2 = this.#options.compat === "0.10";
    for (const old of table.left) {
      const bytes = refcountTable(
        { ...layout, refcountTableClusters: old.entries * ENTRY_SIZE / cs },
        old.blocks,
        offsetOf,
      );
      for (let at = 0; at < bytes.length;) {
        let end = at;
        while (
          end < bytes.length &&
          !table.overwritten.has((old.offset + end) / cs) &&
          !(v2 && table.preallocated.has((old.offset + end) / cs))
        ) end += cs;
        if (end > at) {
          await this.#target.writeAt(old.offset + at, bytes.subarray(at, end));
        }
        at = end + cs;
      }
    }
    const l1 = l1Table(layout, this.#l1);
    if (l1.length > 0) await this.#target.writeAt(layout.l1TableOffset, l1);
    if (this.#luks) {
      await this.#target.writeAt(
        layout.encryptionAreaOffset!,
        this.#luks.area,
      );
    }
    await this.#target.writeAt(
      0,
      newHeader(this.#options, layout, this.#luks?.area.length),
    );
    const length = this.endOnSector ? onSector(end) : end;
    await this.#target.finish(length);
    return length;
  }

  /**
   * Whether the file's length is rounded up to a 512-byte sector, as
   * `qemu-img convert -c` leaves it (its closing compressed write of 0
   * bytes truncates the file to `bdrv_getlength`, which counts sectors).
   */
  endOnSector = false;
}

/** `end` rounded up to a 512-byte sector. */
function onSector(end: number): number {
  return Math.ceil(end / COMPRESSED_SECTOR_SIZE) * COMPRESSED_SECTOR_SIZE;
}

/**
 * Counts the metadata at the front (header, refcount table, the refcount
 * blocks in use, L1 table) into `refcounts`, which already holds the L2
 * tables and data. Returns the file's length and the indices of the
 * refcount blocks it counted: each needs its table entry (and its bytes,
 * zeros if its range counts nothing), or its cluster is counted and not
 * referenced, a leak to `qemu-img check`.
 */
function finishRefcounts(
  layout: MetadataLayout,
  refcounts: RefcountBlocks,
  dataEnd: number,
  offsetOf = (index: number): number =>
    layout.refcountBlocksOffset + index * layout.clusterSize,
): { end: number; blocks: number[] } {
  const cs = layout.clusterSize;
  // An encrypted image's metadata ends with its LUKS area.
  // (A disk of 0 bytes has no L1 table: the metadata ends at dataStart.)
  const l1End = layout.encryptionAreaOffset !== undefined ||
      layout.l1Size === 0
    ? layout.dataStart
    : layout.l1TableOffset + layout.l1Size * ENTRY_SIZE;
  const end = Math.max(
    dataEnd > layout.dataStart ? dataEnd : l1End,
    layout.l1TableOffset,
  );
  // The file ends on a sector; the blocks in use cover it whole.
  const fileEnd = Math.ceil(end / COMPRESSED_SECTOR_SIZE) *
    COMPRESSED_SECTOR_SIZE;
  // Inline refcount blocks after the first were placed (and counted) with
  // the clusters.
  const blocksUsed = layout.inlineRefcountBlocks ? 1 : Math.ceil(
    Math.ceil(fileEnd / cs) / layout.refcountsPerBlock,
  );
  if (blocksUsed > layout.refcountBlockSlots) {
    throw new Qcow2Error(
      "SOURCE_CHANGED",
      `Cannot write qcow2 image: it grew past the ${layout.refcountBlockSlots} refcount blocks reserved for it (did the source change while it was read?)`,
    );
  }
  refcounts.increment(0);
  for (let i = 0; i < layout.refcountTableClusters; i++) {
    refcounts.increment(layout.refcountTableOffset / cs + i);
  }
  // (The `truncate` layout: every block, placed for the whole file.)
  const blocks = Array.from(
    { length: layout.truncate ? layout.refcountBlockSlots : blocksUsed },
    (_, i) => i,
  );
  for (const i of blocks) refcounts.increment(offsetOf(i) / cs);
  const l1Clusters = Math.ceil(layout.l1Size * ENTRY_SIZE / cs);
  for (let i = 0; i < l1Clusters; i++) {
    refcounts.increment(layout.l1TableOffset / cs + i);
  }
  // The LUKS area, from its offset to dataStart.
  const area = layout.encryptionAreaOffset;
  for (let c = area ?? layout.dataStart; c < layout.dataStart; c += cs) {
    refcounts.increment(c / cs);
  }
  return { end: dataEnd > layout.dataStart ? fileEnd : l1End, blocks };
}

/** The refcount table pointing at the blocks in `refcounts`. */
function refcountTable(
  layout: MetadataLayout,
  indices: Iterable<number>,
  offsetOf = (index: number) =>
    layout.refcountBlocksOffset + index * layout.clusterSize,
): Uint8Array {
  const bytes = new Uint8Array(
    layout.refcountTableClusters * layout.clusterSize,
  );
  const view = new DataView(bytes.buffer);
  for (const index of indices) {
    view.setBigUint64(
      index * ENTRY_SIZE,
      encodeRefcountTableEntry({ refcountBlockOffset: offsetOf(index) }),
    );
  }
  return bytes;
}

/** The L1 table: `l1Size` entries, those in `tables` pointing at L2 tables. */
function l1Table(
  layout: MetadataLayout,
  tables: Map<number, number>,
): Uint8Array {
  const bytes = new Uint8Array(layout.l1Size * ENTRY_SIZE);
  const view = new DataView(bytes.buffer);
  for (const [index, offset] of tables) {
    view.setBigUint64(
      index * ENTRY_SIZE,
      encodeL1Entry({ l2TableOffset: offset, copied: true }),
    );
  }
  return bytes;
}

/** One guest cluster for the writer: its fate and its bytes. */
export interface ClusterWrite {
  /** The guest cluster index. */
  cluster: number;
  /** What it becomes. */
  kind: ClusterKind;
  /** A cluster of data, or the compressed bytes; none for `zero`. */
  bytes?: Uint8Array;
  /**
   * For `data` without `subclusters` or `ranges`: a run of this many
   * clusters from `cluster` on, whose bytes `bytes` holds one after the
   * other (`Qcow2Writer.addRun`). Absent: one cluster.
   */
  count?: number;
  /**
   * With extended L2: for `data`, the subclusters allocated; for `zero`, the
   * subclusters that read as zeros, the others reading from the backing file
   * (default all).
   */
  subclusters?: number;
  /**
   * With extended L2, for `data`: subclusters that read as zeros without
   * being allocated (default none).
   */
  zeroSubclusters?: number;
  /**
   * For `data`: the byte ranges of the cluster to write, `[from, to)`
   * pairs in increasing order (default the whole cluster); the rest of the
   * host cluster is not written (a preallocated cluster keeps its holes).
   */
  ranges?: number[];
}

/** One run of the stream writer's plan: clusters that become the same kind. */
export interface PlannedRun {
  /** First guest cluster. */
  cluster: number;
  /** Clusters in the run (1 for a compressed cluster). */
  count: number;
  /** What they become. */
  kind: ClusterKind;
  /** For `compressed`: the compressed length. */
  length?: number;
  /** For `data` with extended L2: the subclusters allocated (default all). */
  subclusters?: number;
  /** For `data` with extended L2: subclusters read as zeros (default none). */
  zeroSubclusters?: number;
}

/**
 * A complete image written front to back, for a pipe: the plan (every
 * cluster's fate, compressed lengths included) is known before the first
 * byte, so the metadata goes first and the data after it in guest order, as
 * QEMU's `scripts/qcow2-to-stdout.py` writes it; compressed clusters are
 * packed in file order (a partly filled host cluster is not gone back to
 * after an L2 table or an uncompressed cluster, as a file's are), so with
 * compression the image can be a little larger. `items` gives the
 * clusters again, with their bytes, exactly as planned (compressed
 * clusters at the planned length).
 *
 * @param target A target written in increasing offset order (a stream).
 * @param options The image's options.
 * @param plan The runs, in guest order.
 * @param items Every planned cluster, in order, with its bytes.
 * @param endOnSector Whether the file's length is rounded up to a 512-byte
 *   sector (`qemu-img convert -c`; see {@linkcode Qcow2Writer.endOnSector}).
 * @returns The file's length.
 * @throws {Qcow2Error} `SOURCE_CHANGED` if a compressed cluster's length differs
 * from the plan (the source changed between the passes).
 */
export async function writeStream(
  target: ImageTarget,
  options: ResolvedCreateOptions,
  plan: PlannedRun[],
  items: AsyncIterable<ClusterWrite>,
  endOnSector = false,
): Promise<number> {
  const source = items[Symbol.asyncIterator]();
  const geometry = geometryOf(options);
  const clusterBits = geometry.clusterBits;
  // The exact size: place everything once from offset 0.
  const probe = layoutMetadata(geometry, 0);
  const dry = new Placer({ ...probe, dataStart: 0 }, options.refcountBits);
  // Compressed clusters in file order: a pipe cannot go back into a host
  // cluster partly filled before (QEMU's packing can, in a file).
  dry.inOrder = true;
  forEachCluster(plan, (c, kind, length) => dry.place(c, kind, length));
  const layout = layoutMetadata(
    geometry,
    Math.ceil(dry.position / probe.clusterSize),
  );
  // Refcounts and the L1 table, from a placement at the real offsets.
  const refcounts = new RefcountBlocks(
    layout.clusterSize,
    geometry.refcountOrder,
  );
  const counting = new Placer(
    layout,
    options.refcountBits,
    (c) => refcounts.increment(c),
  );
  counting.inOrder = true;
  const l1 = new Map<number, number>();
  let dataEnd = layout.dataStart;
  forEachCluster(plan, (c, kind, length, subclusters) => {
    const placed = counting.place(c, kind, length);
    if (placed.newL2Table !== undefined) {
      l1.set(counting.l1Index, placed.newL2Table);
    }
    dataEnd = fileEndAfter(
      dataEnd,
      placed,
      kind,
      counting.position,
      layout.clusterSize,
      subclusters,
    );
  });
  const { end, blocks } = finishRefcounts(layout, refcounts, dataEnd);
  await target.writeAt(0, newHeader(options, layout));
  const indices = new Set([...refcounts.blocks.keys(), ...blocks]);
  await target.writeAt(
    layout.refcountTableOffset,
    refcountTable(layout, indices),
  );
  const empty = new Uint8Array(layout.clusterSize);
  for (let i = 0; i < layout.refcountBlockSlots; i++) {
    const block = refcounts.blocks.get(i) ?? (indices.has(i) ? empty : null);
    if (block) {
      await target.writeAt(
        layout.refcountBlocksOffset + i * layout.clusterSize,
        block,
      );
    }
  }
  const l1Bytes = l1Table(layout, l1);
  if (l1Bytes.length > 0) await target.writeAt(layout.l1TableOffset, l1Bytes);

  // Each L2 range: its table (from a placer looking ahead), then its data.
  const runs = splitAtRanges(plan, layout.l2Entries);
  const placer = new Placer(layout, options.refcountBits);
  placer.inOrder = true;
  let first = 0;
  while (first < runs.length) {
    const l1Index = Math.floor(runs[first].cluster / layout.l2Entries);
    let last = first;
    while (
      last < runs.length &&
      Math.floor(runs[last].cluster / layout.l2Entries) === l1Index
    ) last++;
    const range = runs.slice(first, last);
    first = last;
    const ahead = placer.clone();
    const table = new Uint8Array(layout.clusterSize);
    const view = new DataView(table.buffer);
    let tableOffset = 0;
    forEachCluster(range, (c, kind, length, subclusters, zeroSubclusters) => {
      const placed = ahead.place(c, kind, length);
      if (placed.newL2Table !== undefined) tableOffset = placed.newL2Table;
      setEntry(
        view,
        c % layout.l2Entries,
        kind,
        placed.hostOffset ?? 0,
        length,
        clusterBits,
        options.extendedL2,
        subclusters,
        zeroSubclusters,
      );
    });
    await target.writeAt(tableOffset, table);
    for (const run of range) {
      for (let i = 0; i < run.count; i++) {
        const cluster = run.cluster + i;
        const next = await source.next();
        const item = next.done ? undefined : next.value;
        const length = run.kind === "compressed" ? run.length! : 0;
        if (
          item?.cluster !== cluster || item.kind !== run.kind ||
          (run.kind === "compressed" && item.bytes?.length !== length) ||
          (item.subclusters ?? ALL_SUBCLUSTERS) !==
            (run.subclusters ?? ALL_SUBCLUSTERS) ||
          (item.zeroSubclusters ?? 0) !== (run.zeroSubclusters ?? 0)
        ) {
          throw new Qcow2Error(
            "SOURCE_CHANGED",
            `Cannot stream qcow2 image: guest cluster ${cluster} read differently the second time (did the source change while it was read?)`,
          );
        }
        const placed = placer.place(cluster, run.kind, length);
        if (item.bytes && placed.hostOffset !== undefined) {
          // Up to the last allocated subcluster: a stream cannot be cut back.
          const upTo = endOf(
            run.kind,
            placed.hostOffset,
            placer.position,
            layout.clusterSize,
            run.subclusters,
          ) - placed.hostOffset;
          await target.writeAt(
            placed.hostOffset,
            item.bytes.subarray(0, Math.min(item.bytes.length, upTo)),
          );
        }
      }
    }
  }
  const length = endOnSector ? onSector(end) : end;
  await target.finish(length);
  return length;
}

/** `plan` with every run cut where an L2 range ends. */
function splitAtRanges(plan: PlannedRun[], l2Entries: number): PlannedRun[] {
  const out: PlannedRun[] = [];
  for (const run of plan) {
    let { cluster, count } = run;
    while (count > 0) {
      const n = Math.min(
        count,
        (Math.floor(cluster / l2Entries) + 1) * l2Entries - cluster,
      );
      out.push({ ...run, cluster, count: n });
      cluster += n;
      count -= n;
    }
  }
  return out;
}

function forEachCluster(
  plan: PlannedRun[],
  each: (
    cluster: number,
    kind: ClusterKind,
    length: number,
    subclusters?: number,
    zeroSubclusters?: number,
  ) => void,
): void {
  for (const run of plan) {
    for (let i = 0; i < run.count; i++) {
      each(
        run.cluster + i,
        run.kind,
        run.length ?? 0,
        run.subclusters,
        run.zeroSubclusters,
      );
    }
  }
}
