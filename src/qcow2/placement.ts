/**
 * Where a sequential writer puts things in a new qcow2 file: the metadata
 * at the front (header, refcount table, refcount blocks, L1 table, as
 * `qemu-img create` lays them out), then each L2 table just before the first
 * cluster of its range and the data clusters in guest order, compressed
 * clusters packed byte by byte as `qcow2_alloc_bytes` packs them. With
 * `preallocation=metadata`, refcount blocks after the first go among them,
 * where QEMU's `alloc_refcount_block` puts them; with `falloc` and `full`,
 * the file is laid out as QEMU's `qcow2_co_truncate` grows it (see
 * `MetadataLayout.truncate`).
 *
 * Placement is a pure function of the clusters placed and the layout: the
 * same input gives the same file, whatever the timing of reads or
 * compression, which is what makes the output reproducible and lets the
 * stream writer compute the metadata before the data it describes.
 *
 * @module
 */

import { ENTRY_SIZE } from "./layout.ts";
import { refcountMetadataSize } from "./measure.ts";

/** The geometry of a new image. */
export interface Geometry {
  /** log2 of the cluster size (9 to 21). */
  clusterBits: number;
  /** log2 of the refcount width (0 to 6). */
  refcountOrder: number;
  /** Whether L2 entries are 128-bit (extended L2). */
  extendedL2: boolean;
  /** The virtual size in bytes. */
  size: number;
}

/**
 * Where the metadata at the front of a new image lies, in bytes: the
 * header in cluster 0, the refcount table from cluster 1, the refcount
 * blocks, the L1 table, then L2 tables and data from `dataStart`.
 *
 * @example The layout of `qemu-img create`'s 1 GiB image
 * ```ts
 * import { memoryTarget, type MetadataLayout, Qcow2Writer, resolveCreateOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const writer = new Qcow2Writer(memoryTarget(), resolveCreateOptions({ size: 1 << 30 }), 0);
 * const layout: MetadataLayout = writer.layout;
 * assertEquals([layout.refcountTableOffset, layout.refcountBlocksOffset, layout.l1TableOffset], [0x10000, 0x20000, 0x30000]);
 * ```
 */
export interface MetadataLayout {
  /** Bytes per cluster. */
  clusterSize: number;
  /** Guest clusters per L2 table. */
  l2Entries: number;
  /** Entries in the L1 table. */
  l1Size: number;
  /** File offset of the refcount table (cluster 1). */
  refcountTableOffset: number;
  /** Clusters of the refcount table. */
  refcountTableClusters: number;
  /** File offset of the first refcount block slot. */
  refcountBlocksOffset: number;
  /** Refcount block slots reserved, one after another. */
  refcountBlockSlots: number;
  /**
   * With `preallocation=metadata` (as `qemu-img create` then lays it out):
   * one refcount block reserved, the others placed among the L2 tables and
   * data where QEMU allocates them: after the allocation (an L2 table, or a
   * run of data clusters) that first uses their range (`alloc_refcount_block`).
   * When the refcount table fills, QEMU moves it to new blocks and a table
   * half as large again from the next block-aligned cluster
   * (`qcow2_refcount_area`), leaving the old table's bytes behind; so does
   * the `Placer` (`refcountTable`).
   */
  inlineRefcountBlocks?: boolean;
  /** With inline refcount blocks: the disk's clusters (all are placed). */
  guestClusters?: number;
  /**
   * With `preallocation=falloc|full` (as `qemu-img create` then lays it
   * out: `qcow2_co_truncate` with `qcow2_refcount_area`): the refcount
   * table moved after the L1 table, behind the refcount blocks added for
   * the whole file (block 0 stays in cluster 2); the data clusters in one
   * run after the table; the first L2 table in cluster 1 (the old table's,
   * freed), the others after the data.
   */
  truncate?: {
    /** File offset of refcount block 1 (the others follow it). */
    moreBlocksOffset: number;
    /** File offset of the second L2 table (the others follow it). */
    l2TablesOffset: number;
  };
  /** Refcounts per refcount block. */
  refcountsPerBlock: number;
  /** File offset of the L1 table. */
  l1TableOffset: number;
  /** File offset where L2 tables and data begin (cluster-aligned). */
  dataStart: number;
  /**
   * For an encrypted image: file offset of the LUKS area, in the clusters
   * after the L1 table (where `qemu-img create` allocates it).
   */
  encryptionAreaOffset?: number;
}

/**
 * Lays out the metadata of a new image that will hold at most `clusters`
 * clusters after it (L2 tables and data): enough refcount blocks for the
 * whole file, found as a fixed point since they count themselves.
 *
 * @param geometry The image's geometry.
 * @param clusters The most clusters placed after the metadata.
 * @param areaBytes Bytes of LUKS area to place after the L1 table (an
 *   encrypted image), rounded up to clusters.
 * @param preallocation QEMU's layout for it: `metadata` places the
 *   refcount blocks after the first among the clusters, and moves the
 *   refcount table when it fills (see
 *   {@linkcode MetadataLayout.inlineRefcountBlocks}); `falloc` and `full`
 *   lay out `truncate` (for the whole
 *   disk: `clusters` is not used). Not with a LUKS area.
 * @returns The layout.
 * @throws {RangeError} If the refcount table would exceed QEMU's 8 MiB limit.
 */
export function layoutMetadata(
  geometry: Geometry,
  clusters: number,
  areaBytes = 0,
  preallocation: "off" | "metadata" | "falloc" | "full" = "off",
): MetadataLayout {
  const clusterSize = 2 ** geometry.clusterBits;
  const l2Entries = clusterSize / (geometry.extendedL2 ? 16 : 8);
  const l1Size = Math.ceil(geometry.size / (clusterSize * l2Entries));
  // A disk of 0 bytes has no L1 table: offset 0, no cluster (as QEMU).
  const l1Clusters = Math.ceil(l1Size * ENTRY_SIZE / clusterSize);
  const areaClusters = Math.ceil(areaBytes / clusterSize);
  const refcountsPerBlock = clusterSize * 8 / 2 ** geometry.refcountOrder;
  let blocks = 1;
  let table = 1;
  for (;;) {
    const total = 1 + table + blocks + l1Clusters + areaClusters + clusters;
    const needBlocks = Math.max(1, Math.ceil(total / refcountsPerBlock));
    const needTable = Math.max(
      1,
      Math.ceil(needBlocks * ENTRY_SIZE / clusterSize),
    );
    if (needBlocks <= blocks && needTable <= table) break;
    blocks = Math.max(blocks, needBlocks);
    table = Math.max(table, needTable);
  }
  checkTableSize(table, clusterSize);
  if (
    (preallocation === "falloc" || preallocation === "full") &&
    areaClusters === 0
  ) {
    return truncateLayout(geometry, clusterSize, l1Size, l1Clusters);
  }
  const inline = preallocation === "metadata" && areaClusters === 0;
  if (inline) {
    blocks = 1;
    table = 1;
  }
  const refcountTableOffset = clusterSize;
  const refcountBlocksOffset = refcountTableOffset + table * clusterSize;
  const metadataEnd = refcountBlocksOffset + blocks * clusterSize;
  const l1TableOffset = l1Size > 0 ? metadataEnd : 0;
  return {
    clusterSize,
    l2Entries,
    l1Size,
    refcountTableOffset,
    refcountTableClusters: table,
    refcountBlocksOffset,
    refcountBlockSlots: blocks,
    ...(inline
      ? {
        inlineRefcountBlocks: true,
        guestClusters: Math.ceil(geometry.size / clusterSize),
      }
      : {}),
    refcountsPerBlock,
    l1TableOffset,
    dataStart: metadataEnd + (l1Clusters + areaClusters) * clusterSize,
    ...(areaClusters > 0
      ? { encryptionAreaOffset: metadataEnd + l1Clusters * clusterSize }
      : {}),
  };
}

/** Refuses a refcount table over QEMU's 8 MiB limit (`QCOW_MAX_REFTABLE_SIZE`). */
function checkTableSize(clusters: number, clusterSize: number): void {
  if (clusters * clusterSize > 8 * 1024 * 1024) {
    throw new RangeError(
      `the refcount table would take ${clusters} clusters, over QEMU's 8 MiB limit`,
    );
  }
}

/**
 * The layout `qemu-img create -o preallocation=falloc|full` makes: QEMU
 * creates the image (header, table, block 0, L1), then grows it with
 * `qcow2_refcount_area` at the end of the file: the refcount blocks the
 * whole file needs, then a new table (exactly as large as they need), then
 * every data cluster in one run; the L2 tables go first-fit, so the first
 * into the old table's cluster (1) and the others after the data. The
 * blocks and the table cover the file with every L2 table counted, as
 * QEMU's estimate does.
 */
function truncateLayout(
  geometry: Geometry,
  clusterSize: number,
  l1Size: number,
  l1Clusters: number,
): MetadataLayout {
  const l2Entries = clusterSize / (geometry.extendedL2 ? 16 : 8);
  const refcountsPerBlock = clusterSize * 8 / 2 ** geometry.refcountOrder;
  const dataClusters = Math.ceil(geometry.size / clusterSize);
  /** The first cluster after the image QEMU created. */
  const start = 3 + l1Clusters;
  let blocks = 1;
  let table = 1;
  for (;;) {
    const end = start + (blocks - 1) + table + dataClusters + l1Size;
    const needBlocks = Math.max(1, Math.ceil(end / refcountsPerBlock));
    const needTable = Math.ceil(needBlocks * ENTRY_SIZE / clusterSize);
    if (needBlocks <= blocks && needTable <= table) break;
    blocks = Math.max(blocks, needBlocks);
    table = Math.max(table, needTable);
  }
  checkTableSize(table, clusterSize);
  const refcountTableOffset = (start + blocks - 1) * clusterSize;
  const dataStart = refcountTableOffset + table * clusterSize;
  return {
    clusterSize,
    l2Entries,
    l1Size,
    refcountTableOffset,
    refcountTableClusters: table,
    refcountBlocksOffset: 2 * clusterSize,
    refcountBlockSlots: blocks,
    refcountsPerBlock,
    l1TableOffset: l1Size > 0 ? 3 * clusterSize : 0,
    dataStart,
    truncate: {
      moreBlocksOffset: start * clusterSize,
      l2TablesOffset: dataStart + dataClusters * clusterSize,
    },
  };
}

/**
 * What becomes of one guest cluster in the new image: `data` (a host
 * cluster, every subcluster allocated), `preallocated` (a host cluster, no
 * subcluster allocated yet: preallocation), `compressed`, or `zero` (a v3
 * zero cluster, no host cluster).
 */
export type ClusterKind = "data" | "preallocated" | "compressed" | "zero";

/** Where {@linkcode Placer.place} put a guest cluster. */
export interface Placement {
  /** When the cluster opened a new L2 range: the file offset of its L2 table. */
  newL2Table?: number;
  /** The file offset of the cluster's data (not for `zero`). */
  hostOffset?: number;
}

/**
 * Places guest clusters, in increasing guest order, after the metadata:
 * an L2 table before the first cluster of its range, data clusters
 * cluster-aligned, compressed clusters packed at byte granularity (a packed
 * host cluster is left when its refcount would exceed the refcount width, as
 * `qcow2_alloc_bytes` does). Every host cluster used is reported to
 * `onReference` once per reference, in increasing order, as `qemu-img check`
 * counts them.
 */
export class Placer {
  /** The next free byte of the file. */
  position: number;
  /** The L1 index whose L2 table was placed last (-1: none yet). */
  l1Index = -1;
  #clusterSize: number;
  #l2Entries: number;
  #refcountMax: number;
  #onReference: (hostCluster: number) => void;
  #layout: MetadataLayout;
  #refcountBits: number;
  /**
   * QEMU's `free_byte_offset`: where the next compressed cluster may go,
   * in a host cluster partly filled by the ones before (0: none); and the
   * references to that host cluster so far.
   */
  #freeByte = 0;
  #freeByteRefs = 0;
  /**
   * Whether compressed clusters go in file order only, for a stream (a
   * pipe cannot go back): a partly filled host cluster is gone on in only
   * while nothing was placed after it. Set before placing.
   */
  inOrder = false;
  /** With inline refcount blocks: each block's offset, by its index. */
  #blocks = new Map<number, number>();
  /** The data run being allocated (inline blocks): first host cluster, count. */
  #unitStart = 0;
  #unitCount = 0;
  /** The most clusters QEMU allocates at once (`INT_MAX` bytes, aligned down). */
  #maxUnit: number;
  /** With the `truncate` layout: L2 tables placed, and where they end. */
  #l2Tables = 0;
  #end = 0;
  /** The data clusters of the run being allocated (inline blocks). */
  #unitLength = 0;
  /**
   * Inline blocks: the refcount table's entries, file offset and clusters
   * (QEMU moves it when it fills: `qcow2_refcount_area`), the tables it
   * left (freed, their bytes still in the file), and the areas placed
   * ahead of `position` for the blocks and table (`[first, end)` clusters).
   */
  #tableEntries: number;
  #tableOffset: number;
  #tableClusters: number;
  #oldTables: { offset: number; entries: number; blocks: number[] }[] = [];
  #ahead: [number, number][] = [];
  /**
   * Inline blocks: free clusters below `position` (`[first, end)`, in
   * order): the tables QEMU freed when it moved the table, and an
   * allocation it gave up to search again; and QEMU's `free_cluster_index`,
   * where its first-fit search for free clusters starts.
   */
  #holes: [number, number][] = [];
  #freeIndex = 0;
  /** Clusters of a freed table written over since (an L2 table, a block, data). */
  #overwritten = new Set<number>();
  /** Clusters of a freed table given to preallocated clusters since. */
  #preallocatedOver = new Set<number>();
  /** Whether the data run being placed lies partly in a freed table. */
  #runInOldTable = false;

  /**
   * @param layout The metadata layout: placing starts at its `dataStart`.
   * @param refcountBits The refcount width in bits.
   * @param onReference Called for each reference to a host cluster.
   */
  constructor(
    layout: MetadataLayout,
    refcountBits: number,
    onReference: (hostCluster: number) => void = () => {},
  ) {
    this.position = layout.dataStart;
    this.#layout = layout;
    this.#refcountBits = refcountBits;
    this.#clusterSize = layout.clusterSize;
    this.#l2Entries = layout.l2Entries;
    this.#refcountMax = refcountBits >= 53
      ? Number.MAX_SAFE_INTEGER
      : 2 ** refcountBits - 1;
    this.#onReference = onReference;
    this.#maxUnit = Math.floor(0x7fffffff / layout.clusterSize);
    this.#blocks.set(0, layout.refcountBlocksOffset);
    this.#tableOffset = layout.refcountTableOffset;
    this.#tableClusters = layout.refcountTableClusters;
    this.#tableEntries = layout.refcountTableClusters * layout.clusterSize /
      ENTRY_SIZE;
    // Inline blocks: the front metadata (a large L1 table) may reach past
    // the first block's range; QEMU allocates the blocks it needs right
    // after it (`alloc_refcount_block` for the L1 table's clusters).
    if (layout.inlineRefcountBlocks && !layout.truncate) {
      this.#blocksFor(0, layout.dataStart / layout.clusterSize - 1);
    }
  }

  /** A placer in the same state that reports nowhere (for looking ahead). */
  clone(): Placer {
    const copy = new Placer(this.#layout, this.#refcountBits);
    copy.position = this.position;
    copy.l1Index = this.l1Index;
    copy.#freeByte = this.#freeByte;
    copy.#freeByteRefs = this.#freeByteRefs;
    copy.inOrder = this.inOrder;
    copy.#blocks = new Map(this.#blocks);
    copy.#unitStart = this.#unitStart;
    copy.#unitCount = this.#unitCount;
    copy.#l2Tables = this.#l2Tables;
    copy.#end = this.#end;
    copy.#unitLength = this.#unitLength;
    copy.#tableEntries = this.#tableEntries;
    copy.#tableOffset = this.#tableOffset;
    copy.#tableClusters = this.#tableClusters;
    copy.#oldTables = [...this.#oldTables];
    copy.#ahead = this.#ahead.map(([a, b]) => [a, b]);
    copy.#holes = this.#holes.map(([a, b]) => [a, b]);
    copy.#freeIndex = this.#freeIndex;
    copy.#overwritten = new Set(this.#overwritten);
    copy.#preallocatedOver = new Set(this.#preallocatedOver);
    copy.#runInOldTable = this.#runInOldTable;
    return copy;
  }

  /**
   * Places guest cluster `cluster` (greater than the one placed before).
   *
   * @param cluster The guest cluster index.
   * @param kind What the cluster becomes.
   * @param length For `compressed`: the compressed length in bytes.
   * @returns Where it went, and the L2 table it opened, if any.
   */
  place(cluster: number, kind: ClusterKind, length = 0): Placement {
    const out: Placement = {};
    const inline = this.#layout.inlineRefcountBlocks;
    const l1Index = Math.floor(cluster / this.#l2Entries);
    const truncate = this.#layout.truncate;
    if (l1Index !== this.l1Index && truncate) {
      // The first L2 table in cluster 1, the others after the data.
      const at = this.#l2Tables++ === 0
        ? this.#clusterSize
        : truncate.l2TablesOffset + (this.#l2Tables - 2) * this.#clusterSize;
      this.l1Index = l1Index;
      out.newL2Table = at;
      this.#reference(at / this.#clusterSize);
      this.#end = Math.max(this.#end, at + this.#clusterSize);
    } else if (l1Index !== this.l1Index && inline) {
      this.#unitCount = 0;
      this.l1Index = l1Index;
      // An L2 table is an allocation of its own (`l2_allocate`).
      const at = this.#allocateCounted(1);
      this.#reference(at);
      this.#markIfOldTable(at);
      out.newL2Table = at * this.#clusterSize;
    } else if (l1Index !== this.l1Index) {
      this.l1Index = l1Index;
      out.newL2Table = this.#wholeCluster();
    }
    if ((kind === "data" || kind === "preallocated") && inline) {
      if (this.#unitCount === this.#unitLength) this.#unitCount = 0;
      if (this.#unitCount === 0) {
        // A run of data clusters: up to the L2 range's end, `INT_MAX` bytes
        // at most, in one piece.
        const rangeEnd = Math.min(
          this.#layout.guestClusters ?? Infinity,
          (l1Index + 1) * this.#l2Entries,
        );
        this.#unitLength = Math.min(this.#maxUnit, rangeEnd - cluster);
        this.#unitStart = this.#allocateCounted(this.#unitLength);
        this.#runInOldTable = this.#inOldTable(
          this.#unitStart,
          this.#unitLength,
        );
      }
      const at = this.#unitStart + this.#unitCount++;
      this.#reference(at);
      // Preallocated clusters are not written: a freed table's bytes stay.
      if (this.#runInOldTable) {
        this.#markIfOldTable(
          at,
          kind === "data" ? this.#overwritten : this.#preallocatedOver,
        );
      }
      out.hostOffset = at * this.#clusterSize;
    } else if (kind === "data" || kind === "preallocated") {
      out.hostOffset = this.#wholeCluster();
    } else if (kind === "compressed") out.hostOffset = this.#bytes(length);
    return out;
  }

  /**
   * Ends the placing (call it once the last cluster is placed).
   *
   * @returns Where the clusters placed end, in bytes.
   */
  endAllocation(): number {
    this.#unitCount = 0;
    return Math.max(this.position, this.#end);
  }

  /** The indices of the refcount blocks placed with inline blocks (else none). */
  refcountBlocksPlaced(): number[] {
    return this.#layout.inlineRefcountBlocks ? [...this.#blocks.keys()] : [];
  }

  /**
   * The refcount table's place: the layout's, or with inline blocks where
   * QEMU last moved it; the tables it left behind (freed, with the
   * entries they held); and the clusters of those tables written over
   * since (reused for L2 tables, blocks or data), where their bytes are
   * not to be written; and those given to preallocated clusters, which
   * QEMU leaves holding the table's bytes (a v2 image, without zero
   * clusters, would read them as guest data).
   */
  get refcountTable(): {
    offset: number;
    clusters: number;
    left: { offset: number; entries: number; blocks: number[] }[];
    overwritten: Set<number>;
    preallocated: Set<number>;
  } {
    // The `truncate` layout with no L2 table (a disk of 0 bytes): nothing
    // took cluster 1, so the table QEMU created first stays there.
    const first = this.#layout.truncate && this.#l2Tables === 0
      ? [{
        offset: this.#clusterSize,
        entries: this.#clusterSize / ENTRY_SIZE,
        blocks: [0],
      }]
      : [];
    return {
      offset: this.#tableOffset,
      clusters: this.#tableClusters,
      left: [...first, ...this.#oldTables],
      overwritten: this.#overwritten,
      preallocated: this.#preallocatedOver,
    };
  }

  /** Moves `position` past the areas placed ahead that `n` clusters would cross. */
  #skipAhead(n: number): void {
    let at = Math.ceil(this.position / this.#clusterSize);
    for (;;) {
      const crossed = this.#ahead.filter(([a, b]) => a < at + n && at < b);
      if (crossed.length === 0) break;
      at = Math.max(...crossed.map(([, b]) => b));
    }
    this.position = Math.max(this.position, at * this.#clusterSize);
  }

  /**
   * QEMU's `qcow2_alloc_clusters` with inline blocks: `n` free clusters,
   * first-fit from `free_cluster_index`; then the refcount blocks their
   * range lacks, after them. If the table had to move for one, QEMU gives
   * the clusters up (`update_refcount` undoes, `-EAGAIN`) and searches
   * again, from the table it freed. Returns the first cluster.
   */
  #allocateCounted(n: number): number {
    for (;;) {
      const at = this.#allocate(n);
      if (!this.#blocksFor(at, n - 1)) return at;
      this.#free(at, n);
    }
  }

  /** Notes host cluster `c` in `set` (as written over), if a freed table held it. */
  #markIfOldTable(c: number, set = this.#overwritten): void {
    if (this.#inOldTable(c, 1)) set.add(c);
  }

  /** Whether host clusters `[first, first + n)` meet a freed table. */
  #inOldTable(first: number, n: number): boolean {
    const cs = this.#clusterSize;
    return this.#oldTables.some((t) =>
      first < (t.offset + t.entries * ENTRY_SIZE) / cs &&
      t.offset / cs < first + n
    );
  }

  /** QEMU's `alloc_clusters_noref`: `n` free clusters, first-fit. */
  #allocate(n: number): number {
    for (let i = 0; i < this.#holes.length; i++) {
      const [first, end] = this.#holes[i];
      const at = Math.max(first, this.#freeIndex);
      if (end - at < n) continue;
      // Taken from the hole: what is left of it stays free.
      const left: [number, number][] = [];
      if (at > first) left.push([first, at]);
      if (at + n < end) left.push([at + n, end]);
      this.#holes.splice(i, 1, ...left);
      this.#freeIndex = at + n;
      return at;
    }
    const from = Math.ceil(this.position / this.#clusterSize);
    this.#skipAhead(n);
    const at = Math.ceil(this.position / this.#clusterSize);
    // Clusters skipped before an area placed ahead stay free.
    if (at > from) this.#holes.push([from, at]);
    this.position = (at + n) * this.#clusterSize;
    this.#freeIndex = at + n;
    return at;
  }

  /** Frees clusters `[first, first + n)`: QEMU's search restarts there. */
  #free(first: number, n: number): void {
    let i = this.#holes.findIndex(([a]) => a > first);
    if (i < 0) i = this.#holes.length;
    this.#holes.splice(i, 0, [first, first + n]);
    // Neighbours merged: a hole is every free cluster between used ones.
    const merged: [number, number][] = [];
    for (const [a, b] of this.#holes) {
      const last = merged.at(-1);
      if (last && last[1] >= a) last[1] = Math.max(last[1], b);
      else merged.push([a, b]);
    }
    this.#holes = merged;
    this.#freeIndex = Math.min(this.#freeIndex, first);
  }

  /**
   * The file offset of refcount block `index` (the table's entry), or
   * undefined if none was placed for it.
   */
  refcountBlockOffset(index: number): number | undefined {
    const truncate = this.#layout.truncate;
    if (truncate) {
      if (index === 0) return this.#layout.refcountBlocksOffset;
      return index < this.#layout.refcountBlockSlots
        ? truncate.moreBlocksOffset + (index - 1) * this.#clusterSize
        : undefined;
    }
    if (!this.#layout.inlineRefcountBlocks) {
      return this.#layout.refcountBlocksOffset + index * this.#clusterSize;
    }
    return this.#blocks.get(index);
  }

  /**
   * Places the refcount blocks missing for host clusters `first` to
   * `first + more` (those placed count too), as QEMU's
   * `alloc_refcount_block` takes the next free cluster for each. Returns
   * true if the table moved for one: then the clusters must be searched for
   * again.
   */
  #blocksFor(first: number, more: number): boolean {
    const perBlock = this.#layout.refcountsPerBlock;
    let last = first + more;
    /**
     * Blocks placed in a range that had no block yet: QEMU counts each
     * through that range's new block first, and enters it in the table
     * only then (so not in a table that move leaves behind).
     */
    const waiting = new Set<number>();
    const tablesBefore = this.#oldTables.length;
    for (
      let index = Math.floor(first / perBlock);
      index <= Math.floor(last / perBlock);
      index++
    ) {
      if (this.#blocks.has(index)) continue;
      const block = this.#allocate(1);
      this.#reference(block);
      this.#markIfOldTable(block);
      const range = Math.floor(block / perBlock);
      if (range !== index && !this.#blocks.has(range)) waiting.add(index);
      this.#blocks.set(index, block * this.#clusterSize);
      last = Math.max(last, block);
      if (index >= this.#tableEntries) {
        this.#growTable(Math.max(first, index * perBlock), block, waiting);
      }
    }
    // QEMU frees each old table (`qcow2_free_clusters`) once the blocks are
    // placed: its search for free clusters starts there again.
    const cs = this.#clusterSize;
    for (const old of this.#oldTables.slice(tablesBefore)) {
      this.#free(old.offset / cs, old.entries * ENTRY_SIZE / cs);
    }
    return this.#oldTables.length > tablesBefore;
  }

  /**
   * QEMU's `alloc_refcount_block` when the table is full: new refcount
   * blocks and a table half as large again, from the next block-aligned
   * cluster after `cluster` (which needed a block) and `block` (placed for
   * it), by `qcow2_refcount_area` with `qcow2_refcount_metadata_size`.
   */
  #growTable(cluster: number, block: number, waiting: Set<number>): void {
    const perBlock = this.#layout.refcountsPerBlock;
    const cs = this.#clusterSize;
    const perTable = cs / ENTRY_SIZE;
    const used = Math.ceil(Math.max(cluster + 1, block + 1) / perBlock);
    const start = used * perBlock;
    const blocks = Number(
      refcountMetadataSize(BigInt(start), cs, this.#refcountBits, true).blocks,
    );
    const entries = Math.ceil((blocks + Math.ceil(blocks / 2)) / perTable) *
      perTable;
    // The table left behind holds the blocks entered in it before the move.
    this.#oldTables.push({
      offset: this.#tableOffset,
      entries: this.#tableEntries,
      blocks: [...this.#blocks.keys()].filter((i) =>
        i < this.#tableEntries && !waiting.has(i)
      ),
    });
    let at = start;
    for (let i = Math.floor(start / perBlock); i < blocks; i++) {
      if (this.#blocks.has(i)) continue;
      this.#blocks.set(i, at * cs);
      this.#reference(at);
      at++;
    }
    this.#tableOffset = at * cs;
    this.#tableClusters = entries / perTable;
    this.#tableEntries = entries;
    const end = at + this.#tableClusters;
    this.#ahead.push([start, end]);
    this.#end = Math.max(this.#end, end * cs);
  }

  #alignUp(): number {
    const cs = this.#clusterSize;
    return Math.ceil(this.position / cs) * cs;
  }

  #wholeCluster(): number {
    const at = this.#alignUp();
    this.position = at + this.#clusterSize;
    this.#reference(at / this.#clusterSize);
    return at;
  }

  /**
   * QEMU's `qcow2_alloc_bytes`: a compressed cluster goes on in the host
   * cluster the ones before partly filled, even with an L2 table allocated
   * since, if it fits there (and that cluster's refcount is not at the
   * width's maximum); else into a new host cluster, which it may spill into
   * from the partly filled one only if that one comes right before it.
   */
  #bytes(length: number): number {
    const cs = this.#clusterSize;
    let at = this.#freeByte;
    let refs = this.#freeByteRefs;
    if (at !== 0 && refs >= this.#refcountMax) at = 0;
    if (this.inOrder && at !== this.position) at = 0;
    if (at === 0 || cs - at % cs < length) {
      const next = this.#alignUp();
      if (at === 0 || Math.ceil(at / cs) * cs !== next) {
        at = next;
        refs = 0;
      }
    }
    const first = Math.floor(at / cs);
    const last = Math.floor((at + length - 1) / cs);
    for (let c = first; c <= last; c++) this.#reference(c);
    this.position = Math.max(this.position, at + length);
    // The cluster the next may go on in: this one's last, one more reference.
    this.#freeByte = (at + length) % cs === 0 ? 0 : at + length;
    this.#freeByteRefs = last === first ? refs + 1 : 1;
    return at;
  }

  #reference(hostCluster: number): void {
    this.#onReference(hostCluster);
  }
}
