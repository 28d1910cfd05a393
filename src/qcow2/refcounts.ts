/**
 * Refcounts of a live image: the refcount table and its refcount blocks of
 * any width (1 to 64 bits), read on demand, changed entry by entry and
 * written back in the order the caller asks, with missing refcount blocks
 * made and the refcount table grown (relocated) when the file outgrows it,
 * as QEMU's `block/qcow2-refcount.c` does.
 *
 * @module
 */

import { hex, Qcow2Error } from "../errors.ts";
import type { ByteStore } from "../io/store.ts";
import {
  decodeRefcountTableEntry,
  encodeRefcountTableEntry,
} from "./entries.ts";

/** Refcount blocks kept in memory at most (clean ones are dropped first). */
const MAX_CACHED_BLOCKS = 64;

/** Where the refcount structures are and how wide an entry is. */
export interface RefcountGeometry {
  /** log2 of the cluster size. */
  clusterBits: number;
  /** log2 of the refcount width in bits (0..6). */
  refcountOrder: number;
  /** File offset of the refcount table. */
  tableOffset: number;
  /** Clusters the refcount table spans. */
  tableClusters: number;
}

/** What {@linkcode Refcounts} asks of the image it serves. */
export interface RefcountHooks {
  /**
   * Points the header at a new refcount table (offset 48, clusters 56, in
   * one write) and makes it durable; called once the table is written.
   */
  writeTableLocation(offset: number, clusters: number): Promise<void>;
  /** Whether a cluster with refcount 0 is nonetheless taken (reserved in memory). */
  reserved?(cluster: number): boolean;
  /** Called with each cluster a new refcount block or table takes. */
  taken?(cluster: number, what: "refcount block" | "refcount table"): void;
}

interface Block {
  offset: number;
  bytes: Uint8Array;
  view: DataView;
  dirtyFrom: number;
  dirtyTo: number;
}

/**
 * The refcounts of an image open for writing. `set` changes an entry in
 * memory; `writeDirty` writes every changed entry. Making a refcount block
 * or growing the table writes at once, in crash-safe order (new structures
 * first, then what points at them, then the old ones freed).
 *
 * @example Counting the clusters of a fresh image in memory
 * ```ts
 * import { memoryStore } from "@qcow2/qcow2";
 * import { Refcounts } from "./refcounts.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * const store = memoryStore(bytes);
 * const refcounts = await Refcounts.load(store, {
 *   clusterBits: 16, refcountOrder: 4, tableOffset: 0x10000, tableClusters: 1,
 * }, { writeTableLocation: () => Promise.resolve() });
 * assertEquals(await refcounts.get(0), 1); // the header
 * assertEquals(await refcounts.get(4), 0); // free
 * await refcounts.set(4, 1);
 * await refcounts.writeDirty();
 * assertEquals(await refcounts.get(4), 1);
 * ```
 */
export class Refcounts {
  readonly #store: ByteStore;
  readonly #hooks: RefcountHooks;
  readonly #cs: number;
  readonly #bits: number;
  readonly #order: number;
  /** Entries per refcount block (a power of two). */
  readonly perBlock: number;
  /** Log2 of {@linkcode perBlock}. */
  readonly #perBlockBits: number;
  /** The largest refcount an entry holds. */
  readonly maxRefcount: number;
  #tableOffset: number;
  #tableClusters: number;
  #table: number[];
  #blocks = new Map<number, Block>();
  #dirty = new Set<number>();

  private constructor(
    store: ByteStore,
    geometry: RefcountGeometry,
    table: number[],
    hooks: RefcountHooks,
  ) {
    this.#store = store;
    this.#hooks = hooks;
    this.#cs = 2 ** geometry.clusterBits;
    this.#bits = 2 ** geometry.refcountOrder;
    this.#order = geometry.refcountOrder;
    this.#perBlockBits = geometry.clusterBits + 3 - geometry.refcountOrder;
    this.perBlock = 2 ** this.#perBlockBits;
    this.maxRefcount = this.#bits >= 53
      ? Number.MAX_SAFE_INTEGER
      : 2 ** this.#bits - 1;
    this.#tableOffset = geometry.tableOffset;
    this.#tableClusters = geometry.tableClusters;
    this.#table = table;
  }

  /**
   * Reads the refcount table.
   *
   * @param store The image file.
   * @param geometry Where the table is, and the entry width.
   * @param hooks How to point the header at a new table, and what is reserved.
   * @returns The refcounts.
   * @throws {Qcow2Error} `CORRUPT` for an unaligned refcount block offset
   * or the table running past the file; the read error otherwise.
   */
  static async load(
    store: ByteStore,
    geometry: RefcountGeometry,
    hooks: RefcountHooks,
  ): Promise<Refcounts> {
    const cs = 2 ** geometry.clusterBits;
    const bytes = new Uint8Array(geometry.tableClusters * cs);
    const n = await store.readAt(geometry.tableOffset, bytes);
    bytes.fill(0, n);
    const view = new DataView(bytes.buffer);
    const table: number[] = [];
    for (let i = 0; i < bytes.length / 8; i++) {
      let offset = -1;
      try {
        offset = decodeRefcountTableEntry(view.getBigUint64(i * 8))
          .refcountBlockOffset;
      } catch (e) {
        if (!(e instanceof Qcow2Error)) throw e;
      }
      if (offset < 0 || offset % cs !== 0) {
        throw new Qcow2Error(
          "CORRUPT",
          `Cannot write qcow2 image: refcount block offset ${
            hex(offset)
          } (refcount table index ${i}) is invalid`,
          { offset: geometry.tableOffset + i * 8 },
        );
      }
      table.push(offset);
    }
    return new Refcounts(store, geometry, table, hooks);
  }

  /** File offset of the refcount table. */
  get tableOffset(): number {
    return this.#tableOffset;
  }

  /** Clusters the refcount table spans. */
  get tableClusters(): number {
    return this.#tableClusters;
  }

  /** Clusters the refcount table can describe (with all its blocks). */
  get coveredClusters(): number {
    return this.#table.length * this.perBlock;
  }

  /** The file offsets of the refcount blocks (0 where none). */
  get blockOffsets(): readonly number[] {
    return this.#table;
  }

  /**
   * The refcount of host cluster `cluster` (0 where no block describes it).
   *
   * @param cluster Host cluster index (file offset >> cluster_bits).
   * @returns Its refcount.
   */
  async get(cluster: number): Promise<number> {
    const index = Math.floor(cluster / this.perBlock);
    if (index >= this.#table.length || this.#table[index] === 0) return 0;
    const block = await this.#block(index);
    return this.#read(block, cluster % this.perBlock);
  }

  /**
   * Whether `get(cluster)` needs no read (its block is in memory or absent).
   *
   * @param cluster Host cluster index.
   * @returns True if `peek` answers.
   */
  peek(cluster: number): number | undefined {
    const index = Math.floor(cluster / this.perBlock);
    if (index >= this.#table.length || this.#table[index] === 0) return 0;
    const block = this.#blocks.get(index);
    return block ? this.#read(block, cluster % this.perBlock) : undefined;
  }

  /**
   * Sets the refcount of `cluster` in memory (written by
   * {@linkcode writeDirty}). A missing refcount block is made, and the
   * table grown, at once.
   *
   * @param cluster Host cluster index.
   * @param value The new refcount.
   * @throws {Qcow2Error} `TOO_LARGE` if `value` exceeds the entry width.
   */
  async set(cluster: number, value: number): Promise<void> {
    if (value > this.maxRefcount) {
      throw new Qcow2Error(
        "TOO_LARGE",
        `Cannot write qcow2 image: the refcount of host cluster ${
          hex(cluster * this.#cs)
        } would exceed ${this.maxRefcount} (${this.#bits}-bit refcounts)`,
      );
    }
    const index = Math.floor(cluster / this.perBlock);
    if (index >= this.#table.length) await this.#growTable(index, cluster);
    if (this.#table[index] === 0) await this.#makeBlock(index, cluster);
    const block = await this.#block(index);
    this.#write(block, cluster % this.perBlock, value);
    this.#dirty.add(index);
  }

  /**
   * Writes every entry changed by {@linkcode set} since the last call, one
   * write per refcount block.
   */
  async writeDirty(): Promise<void> {
    for (const index of this.#dirty) {
      const block = this.#blocks.get(index)!;
      if (block.dirtyTo > block.dirtyFrom) {
        await this.#store.writeAt(
          block.offset + block.dirtyFrom,
          block.bytes.subarray(block.dirtyFrom, block.dirtyTo),
        );
      }
      block.dirtyFrom = this.#cs;
      block.dirtyTo = 0;
    }
    this.#dirty.clear();
    this.#trim();
  }

  /** Drops clean blocks beyond the cache bound. */
  #trim(): void {
    for (const [index] of this.#blocks) {
      if (this.#blocks.size <= MAX_CACHED_BLOCKS) break;
      if (!this.#dirty.has(index)) this.#blocks.delete(index);
    }
  }

  async #block(index: number): Promise<Block> {
    let block = this.#blocks.get(index);
    if (block) {
      this.#blocks.delete(index);
      this.#blocks.set(index, block);
      return block;
    }
    const offset = this.#table[index];
    const bytes = new Uint8Array(this.#cs);
    const n = await this.#store.readAt(offset, bytes);
    bytes.fill(0, n);
    block = {
      offset,
      bytes,
      view: new DataView(bytes.buffer),
      dirtyFrom: this.#cs,
      dirtyTo: 0,
    };
    this.#blocks.set(index, block);
    this.#trim();
    return block;
  }

  #read(block: Block, i: number): number {
    switch (this.#order) {
      case 3:
        return block.bytes[i];
      case 4:
        return block.view.getUint16(i * 2);
      case 5:
        return block.view.getUint32(i * 4);
      case 6: {
        const v = block.view.getBigUint64(i * 8);
        return v > BigInt(Number.MAX_SAFE_INTEGER)
          ? Number.MAX_SAFE_INTEGER
          : Number(v);
      }
      default: {
        const bit = i * this.#bits;
        return (block.bytes[bit >>> 3] >>> (bit & 7)) &
          (this.#bits === 1 ? 1 : this.#bits === 2 ? 3 : 15);
      }
    }
  }

  #write(block: Block, i: number, value: number): void {
    let from: number;
    let to: number;
    switch (this.#order) {
      case 3:
        block.bytes[i] = value;
        [from, to] = [i, i + 1];
        break;
      case 4:
        block.view.setUint16(i * 2, value);
        [from, to] = [i * 2, i * 2 + 2];
        break;
      case 5:
        block.view.setUint32(i * 4, value);
        [from, to] = [i * 4, i * 4 + 4];
        break;
      case 6:
        block.view.setBigUint64(i * 8, BigInt(value));
        [from, to] = [i * 8, i * 8 + 8];
        break;
      default: {
        const bit = i * this.#bits;
        const mask = (2 ** this.#bits - 1) << (bit & 7);
        const at = bit >>> 3;
        block.bytes[at] = (block.bytes[at] & ~mask) |
          ((value << (bit & 7)) & mask);
        [from, to] = [at, at + 1];
      }
    }
    block.dirtyFrom = Math.min(block.dirtyFrom, from);
    block.dirtyTo = Math.max(block.dirtyTo, to);
  }

  /**
   * Makes the missing refcount block `index`, for a refcount about to be
   * set on `cluster`: it takes the first cluster of its own range that is
   * neither `cluster` nor reserved, and describes itself (QEMU's
   * alloc_refcount_block, when the new block lies in its own range). The
   * block is written before the table entry that names it.
   */
  async #makeBlock(index: number, cluster: number): Promise<void> {
    const first = index * this.perBlock;
    let at = first;
    while (at === cluster || this.#hooks.reserved?.(at)) at++;
    if (at >= first + this.perBlock) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot write qcow2 image: no free cluster for refcount block ${index}`,
      );
    }
    const offset = at * this.#cs;
    const bytes = new Uint8Array(this.#cs);
    const block: Block = {
      offset,
      bytes,
      view: new DataView(bytes.buffer),
      dirtyFrom: this.#cs,
      dirtyTo: 0,
    };
    this.#write(block, at - first, 1);
    block.dirtyFrom = this.#cs;
    block.dirtyTo = 0;
    await this.#store.writeAt(offset, bytes);
    this.#blocks.set(index, block);
    this.#table[index] = offset;
    const entry = new Uint8Array(8);
    new DataView(entry.buffer).setBigUint64(
      0,
      encodeRefcountTableEntry({ refcountBlockOffset: offset }),
    );
    await this.#store.writeAt(this.#tableOffset + index * 8, entry);
    this.#hooks.taken?.(at, "refcount block");
  }

  /**
   * Grows the refcount table so that block `index` has an entry, as
   * qcow2_refcount_area does: new refcount blocks and a table 1.5 times as
   * large are placed past the end of the file (and past `cluster`),
   * describing themselves; they are written, then the
   * header is pointed at the new table (durably), then the old table is
   * freed.
   */
  async #growTable(index: number, cluster: number): Promise<void> {
    const cs = this.#cs;
    const per = this.perBlock;
    // Past the end of the file and past the cluster being counted (which
    // lies past what the table covers, so the area's ranges have no block).
    const start = Math.max(Math.ceil(this.#store.size / cs), cluster + 1);
    const startRange = Math.floor(start / per);
    let entries = Math.max(
      Math.ceil(this.#table.length * 1.5),
      index + 1,
      startRange + 1,
    );
    let blocks = 1;
    let tableClusters = 0;
    for (;;) {
      tableClusters = Math.ceil(entries * 8 / cs);
      const areaEnd = start + blocks + tableClusters;
      const neededBlocks = Math.ceil(areaEnd / per) - startRange;
      const neededEntries = startRange + neededBlocks;
      if (neededBlocks <= blocks && neededEntries <= entries) break;
      blocks = Math.max(blocks, neededBlocks);
      entries = Math.max(entries, neededEntries);
    }
    // The new blocks, at [start, start + blocks): each counts the area
    // clusters of its own range.
    const areaEnd = start + blocks + tableClusters;
    const table = this.#table.slice();
    while (table.length < entries) table.push(0);
    for (let b = 0; b < blocks; b++) {
      const offset = (start + b) * cs;
      const bytes = new Uint8Array(cs);
      const block: Block = {
        offset,
        bytes,
        view: new DataView(bytes.buffer),
        dirtyFrom: cs,
        dirtyTo: 0,
      };
      const rangeStart = (startRange + b) * per;
      for (
        let c = Math.max(start, rangeStart);
        c < Math.min(areaEnd, rangeStart + per);
        c++
      ) {
        this.#write(block, c - rangeStart, 1);
      }
      await this.#store.writeAt(offset, bytes);
      table[startRange + b] = offset;
    }
    const tableBytes = new Uint8Array(tableClusters * cs);
    const view = new DataView(tableBytes.buffer);
    table.forEach((offset, i) =>
      view.setBigUint64(
        i * 8,
        encodeRefcountTableEntry({ refcountBlockOffset: offset }),
      )
    );
    const tableOffset = (start + blocks) * cs;
    await this.#store.writeAt(tableOffset, tableBytes);
    await this.#store.flush?.();
    const oldOffset = this.#tableOffset;
    const oldClusters = this.#tableClusters;
    await this.#hooks.writeTableLocation(tableOffset, tableClusters);
    this.#table = table;
    this.#tableOffset = tableOffset;
    this.#tableClusters = tableClusters;
    for (let b = 0; b < blocks; b++) {
      this.#hooks.taken?.(start + b, "refcount block");
    }
    for (let t = 0; t < tableClusters; t++) {
      this.#hooks.taken?.(start + blocks + t, "refcount table");
    }
    // The old table is free now.
    for (let t = 0; t < oldClusters; t++) {
      const c = oldOffset / cs + t;
      await this.set(c, (await this.get(c)) - 1);
    }
    await this.writeDirty();
  }
}
