/**
 * A bounded least-recently-used cache of L2 tables, so memory does not grow
 * with the image size and each table is read once while it is in use.
 *
 * The buffer of a table that leaves the cache is reused for the next table
 * read, once no caller is using it: memory touched for the first time is
 * costly (a page fault per 4 KiB; on some virtual machines about 3 ms per
 * MiB), and a conversion walks every table of the image once.
 *
 * @module
 */

import { hex, Qcow2Error } from "../errors.ts";
import type { ByteSource } from "../io/source.ts";

/** One cached table. */
interface Slot {
  /** The table's bytes, once read. */
  table: Promise<Uint8Array>;
  /** The buffer it is read into. */
  buffer: Uint8Array;
  /** Callers inside {@linkcode L2Cache.use} with this table now. */
  users: number;
  /** Whether it has left the cache. */
  evicted: boolean;
  /** Whether it was read whole (a failed read's buffer is not reused). */
  ok: boolean;
}

/**
 * Caches tables by file offset. Concurrent requests for one table share one
 * read; a failed read is not kept.
 */
export class L2Cache {
  #slots = new Map<number, Slot>();
  #spare: Uint8Array[] = [];
  #capacity: number;
  #tableBytes: number;

  /**
   * @param capacity The most tables kept at once (at least 1).
   * @param tableBytes The size of one table in bytes.
   */
  constructor(capacity: number, tableBytes: number) {
    this.#capacity = Math.max(1, Math.floor(capacity));
    this.#tableBytes = tableBytes;
  }

  /** How many tables are held now. */
  get size(): number {
    return this.#slots.size;
  }

  /**
   * Runs `body` on the table at `offset`, read with `load` if it is not
   * held. `body` runs synchronously and must not keep the table: its buffer
   * may hold another table once `body` has returned.
   *
   * @param offset The table's file offset: the cache key.
   * @param load Fills the given buffer with the table, or rejects.
   * @param body What to do with the table.
   * @returns What `body` returned.
   */
  async use<T>(
    offset: number,
    load: (into: Uint8Array) => Promise<void>,
    body: (table: Uint8Array) => T,
  ): Promise<T> {
    let slot = this.#slots.get(offset);
    if (slot) {
      // Move to the most recently used end.
      this.#slots.delete(offset);
      this.#slots.set(offset, slot);
    } else {
      slot = this.#load(offset, load);
    }
    slot.users++;
    try {
      return body(await slot.table);
    } finally {
      slot.users--;
      if (slot.evicted && slot.users === 0) this.#reuse(slot);
    }
  }

  /** Starts reading the table at `offset` into a new or reused buffer. */
  #load(offset: number, load: (into: Uint8Array) => Promise<void>): Slot {
    const buffer = this.#spare.pop() ?? new Uint8Array(this.#tableBytes);
    const slot: Slot = {
      table: load(buffer).then(() => {
        slot.ok = true;
        return buffer;
      }),
      buffer,
      users: 0,
      evicted: false,
      ok: false,
    };
    slot.table.catch(() => {
      if (this.#slots.get(offset) === slot) this.#slots.delete(offset);
    });
    this.#slots.set(offset, slot);
    while (this.#slots.size > this.#capacity) {
      const [oldestOffset, oldest] = this.#slots.entries().next().value!;
      this.#slots.delete(oldestOffset);
      oldest.evicted = true;
      if (oldest.users === 0) this.#reuse(oldest);
    }
    return slot;
  }

  /** Keeps the buffer of a table that left the cache for the next read. */
  #reuse(slot: Slot): void {
    if (slot.ok && this.#spare.length < this.#capacity) {
      slot.ok = false;
      this.#spare.push(slot.buffer);
    }
  }
}

/**
 * A `load` for {@linkcode L2Cache.use}: reads the L2 table at `offset` of
 * `source`, named by L1 entry `l1Index` of the table at `l1TableOffset`, or
 * fails with `OFFSET_PAST_END` if the file ends first.
 *
 * @param source The image file.
 * @param offset The table's file offset.
 * @param l1Index The L1 entry that points to it.
 * @param l1TableOffset The L1 table's file offset (for the error).
 * @param format The image format, for the message.
 * @returns The loader.
 */
export function l2TableLoader(
  source: ByteSource,
  offset: number,
  l1Index: number,
  l1TableOffset: number,
  format: "qcow2" | "qcow",
): (into: Uint8Array) => Promise<void> {
  return async (into) => {
    if (
      offset >= source.size ||
      await source.readAt(offset, into) < into.length
    ) {
      throw new Qcow2Error(
        "OFFSET_PAST_END",
        `Cannot read ${format} image: L2 table at ${
          hex(offset)
        } (L1 index ${l1Index}) runs past the end of the file (${source.size} bytes)`,
        { offset: l1TableOffset + l1Index * 8 },
      );
    }
  };
}
