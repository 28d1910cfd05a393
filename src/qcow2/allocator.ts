/**
 * Host cluster allocation for a live image, as QEMU's
 * alloc_clusters_noref and qcow2_free_clusters do it: first fit from an
 * in-memory free index, which drops back when a refcount reaches 0, so
 * freed clusters are reused; past the end of what the refcounts describe,
 * every cluster is free and the file grows.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import type { Refcounts } from "./refcounts.ts";

/**
 * Allocates and frees host clusters over {@linkcode Refcounts}. Changes are
 * made in memory; the caller writes them (`refcounts.writeDirty()`) in the
 * order crash safety needs: increments before anything points at the
 * cluster, decrements after nothing does.
 *
 * @example Two clusters of a fresh image in memory
 * ```ts
 * import { memoryStore } from "@qcow2/qcow2";
 * import { Refcounts } from "./refcounts.ts";
 * import { Allocator } from "./allocator.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * const refcounts = await Refcounts.load(memoryStore(bytes), {
 *   clusterBits: 16, refcountOrder: 4, tableOffset: 0x10000, tableClusters: 1,
 * }, { writeTableLocation: () => Promise.resolve() });
 * const allocator = new Allocator(refcounts);
 * assertEquals(await allocator.allocate(), 4); // after header, table, block, L1
 * assertEquals(await allocator.allocate(), 5);
 * await allocator.release(4);
 * assertEquals(await allocator.allocate(), 4); // reused
 * ```
 */
export class Allocator {
  readonly #refcounts: Refcounts;
  #freeIndex = 0;

  /** @param refcounts The image's refcounts. */
  constructor(refcounts: Refcounts) {
    this.#refcounts = refcounts;
  }

  /**
   * Takes the first free host cluster at or after the free index and sets
   * its refcount to 1 (in memory).
   *
   * @param avoid Clusters that must not be taken (even with refcount 0).
   * @returns The host cluster index.
   */
  async allocate(avoid?: (cluster: number) => boolean): Promise<number> {
    let c = this.#freeIndex;
    for (;;) {
      const known = this.#refcounts.peek(c);
      const count = known ?? await this.#refcounts.get(c);
      if (count === 0 && !avoid?.(c)) break;
      c++;
    }
    this.#freeIndex = c + 1;
    await this.#refcounts.set(c, 1);
    return c;
  }

  /**
   * Adds one reference to an allocated host cluster.
   *
   * @param cluster Host cluster index.
   */
  async retain(cluster: number): Promise<void> {
    await this.#refcounts.set(
      cluster,
      (await this.#refcounts.get(cluster)) + 1,
    );
  }

  /**
   * Drops one reference; at 0 the cluster is free for reuse.
   *
   * @param cluster Host cluster index.
   * @throws {Qcow2Error} `CORRUPT` if its refcount is already 0 (it would
   * underflow: the image's refcounts are wrong).
   */
  async release(cluster: number): Promise<void> {
    const count = await this.#refcounts.get(cluster);
    if (count === 0) {
      throw new Qcow2Error(
        "CORRUPT",
        `Cannot write qcow2 image: ${refcountUnderflow(cluster)}`,
        { value: cluster },
      );
    }
    await this.#refcounts.set(cluster, count - 1);
    if (count === 1 && cluster < this.#freeIndex) this.#freeIndex = cluster;
  }
}

/**
 * What a release of host cluster `cluster` at refcount 0 is, in words: the
 * corruption `release` reports, and a writable image marks.
 *
 * @param cluster Host cluster index.
 * @returns The words.
 */
export function refcountUnderflow(cluster: number): string {
  return `the refcount of host cluster ${cluster} would drop below 0`;
}
