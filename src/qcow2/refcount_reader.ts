/**
 * Reading the on-disk refcount of a host cluster, as QEMU's
 * `qcow2_get_refcount` does: through the refcount table to a refcount block,
 * then the entry of `refcount_bits` bits (packed from the least significant
 * bit below 8 bits, big-endian from 8 bits up).
 *
 * @module
 */

import { hex, Qcow2Error } from "../errors.ts";
import type { ByteSource } from "../io/source.ts";
import type { Qcow2Header } from "./header.ts";
import { REFCOUNT_TABLE_OFFSET_MASK } from "./layout.ts";

/**
 * The on-disk refcounts of an image, read one refcount block at a time (the
 * last block read is kept).
 */
export class RefcountReader {
  #source: ByteSource;
  #cs: number;
  #order: number;
  #table: BigUint64Array | undefined;
  #tableOffset: number;
  #tableEntries: number;
  #blockIndex = -1;
  #block: Uint8Array | undefined;

  /**
   * @param source The image file.
   * @param header Its header (cluster size, refcount order, refcount table).
   */
  constructor(source: ByteSource, header: Qcow2Header) {
    this.#source = source;
    this.#cs = header.clusterSize;
    this.#order = header.refcountOrder;
    this.#tableOffset = header.refcountTableOffset;
    this.#tableEntries = header.refcountTableClusters * header.clusterSize / 8;
  }

  /** Refcount entries per refcount block. */
  get entriesPerBlock(): number {
    return this.#cs * 8 / (1 << this.#order);
  }

  /** Entries of the refcount table. */
  get tableEntries(): number {
    return this.#tableEntries;
  }

  /**
   * The refcount table, read whole (at most 8 MiB, as QEMU allows); entries
   * past the end of the file read as 0.
   */
  async table(): Promise<BigUint64Array> {
    if (this.#table) return this.#table;
    const bytes = new Uint8Array(this.#tableEntries * 8);
    await this.#source.readAt(this.#tableOffset, bytes);
    const view = new DataView(bytes.buffer);
    const table = new BigUint64Array(this.#tableEntries);
    for (let i = 0; i < table.length; i++) table[i] = view.getBigUint64(i * 8);
    return this.#table = table;
  }

  /**
   * The offset of refcount block `index`, 0 when the table has none there.
   *
   * @throws {Qcow2Error} `UNALIGNED_OFFSET` for an unaligned block offset.
   */
  async blockOffset(index: number): Promise<number> {
    if (index >= this.#tableEntries) return 0;
    const entry = (await this.table())[index] & REFCOUNT_TABLE_OFFSET_MASK;
    if (entry > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Qcow2Error(
        "OFFSET_PAST_END",
        `Cannot read qcow2 image: refcount block offset ${
          hex(entry)
        } lies past the end of the file (refcount table index ${index})`,
        { offset: this.#tableOffset + index * 8 },
      );
    }
    const offset = Number(entry);
    if (offset % this.#cs !== 0) {
      throw new Qcow2Error(
        "UNALIGNED_OFFSET",
        `Cannot read qcow2 image: refcount block offset ${
          hex(offset)
        } is not aligned to a cluster (refcount table index ${index})`,
        { offset: this.#tableOffset + index * 8 },
      );
    }
    return offset;
  }

  /**
   * The refcount of host cluster `cluster` (0 where no refcount block
   * covers it; bytes past the end of the file read as 0).
   */
  async get(cluster: number): Promise<number> {
    const per = this.entriesPerBlock;
    const block = await this.block(Math.floor(cluster / per));
    return block ? refcountAt(block, this.#order, cluster % per) : 0;
  }

  /**
   * Refcount block `index`, or undefined where the table has none (the
   * last block read is kept; bytes past the end of the file read as 0).
   */
  async block(index: number): Promise<Uint8Array | undefined> {
    if (index !== this.#blockIndex) {
      const offset = await this.blockOffset(index);
      this.#blockIndex = index;
      this.#block = undefined;
      if (offset !== 0) {
        const block = new Uint8Array(this.#cs);
        await this.#source.readAt(offset, block);
        this.#block = block;
      }
    }
    return this.#block;
  }
}

/**
 * Entry `i` of a refcount block of `1 << order`-bit entries.
 *
 * @param block The refcount block's bytes.
 * @param order The refcount order (0..6).
 * @param i The entry's index.
 * @returns The refcount (refcounts above 2^53 read as 2^53).
 */
export function refcountAt(
  block: Uint8Array,
  order: number,
  i: number,
): number {
  switch (order) {
    case 0:
    case 1:
    case 2: {
      const bits = 1 << order;
      const perByte = 8 / bits;
      const byte = block[Math.floor(i / perByte)];
      return (byte >>> ((i % perByte) * bits)) & ((1 << bits) - 1);
    }
    case 3:
      return block[i];
    case 4:
      return (block[i * 2] << 8) | block[i * 2 + 1];
    case 5:
      return ((block[i * 4] << 24) >>> 0) +
        ((block[i * 4 + 1] << 16) | (block[i * 4 + 2] << 8) |
          block[i * 4 + 3]);
    default: {
      const view = new DataView(block.buffer, block.byteOffset + i * 8, 8);
      const value = view.getBigUint64(0);
      return value > 2n ** 53n ? 2 ** 53 : Number(value);
    }
  }
}

/**
 * Sets entry `i` of a refcount block of `1 << order`-bit entries.
 *
 * @param block The refcount block's bytes.
 * @param order The refcount order (0..6).
 * @param i The entry's index.
 * @param value The refcount (at most the width's maximum).
 *
 * @example A 16-bit entry
 * ```ts
 * import { refcountAt, setRefcountAt } from "./refcount_reader.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const block = new Uint8Array(512);
 * setRefcountAt(block, 4, 3, 0x1234);
 * assertEquals([block[6], block[7]], [0x12, 0x34]);
 * assertEquals(refcountAt(block, 4, 3), 0x1234);
 * ```
 */
export function setRefcountAt(
  block: Uint8Array,
  order: number,
  i: number,
  value: number,
): void {
  if (order <= 2) {
    const bits = 1 << order;
    const perByte = 8 / bits;
    const at = Math.floor(i / perByte);
    const shift = (i % perByte) * bits;
    const mask = ((1 << bits) - 1) << shift;
    block[at] = (block[at] & ~mask) | ((value << shift) & mask);
    return;
  }
  const bytes = 1 << (order - 3);
  const view = new DataView(block.buffer, block.byteOffset + i * bytes, bytes);
  if (bytes === 1) view.setUint8(0, value);
  else if (bytes === 2) view.setUint16(0, value);
  else if (bytes === 4) view.setUint32(0, value);
  else view.setBigUint64(0, BigInt(value));
}
