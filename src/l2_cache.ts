/**
 * A bounded least-recently-used cache of L2 tables, so memory does not grow
 * with the image size and each table is read once while it is in use.
 *
 * @module
 */

/**
 * Caches tables by file offset. Concurrent requests for one table share one
 * read; a failed read is not kept.
 */
export class L2Cache {
  #tables = new Map<number, Promise<Uint8Array>>();
  #capacity: number;

  /**
   * @param capacity The most tables kept at once (at least 1).
   */
  constructor(capacity: number) {
    this.#capacity = Math.max(1, Math.floor(capacity));
  }

  /** How many tables are held now. */
  get size(): number {
    return this.#tables.size;
  }

  /**
   * The table at `offset`, loaded with `load` if it is not held.
   *
   * @param offset The table's file offset: the cache key.
   * @param load Reads the table when it is not cached.
   * @returns The table's bytes.
   */
  get(offset: number, load: () => Promise<Uint8Array>): Promise<Uint8Array> {
    let table = this.#tables.get(offset);
    if (table) {
      // Move to the most recently used end.
      this.#tables.delete(offset);
      this.#tables.set(offset, table);
      return table;
    }
    table = load();
    this.#tables.set(offset, table);
    table.catch(() => {
      if (this.#tables.get(offset) === table) this.#tables.delete(offset);
    });
    while (this.#tables.size > this.#capacity) {
      const oldest = this.#tables.keys().next().value as number;
      this.#tables.delete(oldest);
    }
    return table;
  }
}
