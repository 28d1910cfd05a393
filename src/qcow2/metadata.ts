/**
 * Where a qcow2 image keeps its own metadata, so that a data cluster pointing
 * there is caught as corruption instead of read as guest data.
 *
 * @module
 */

import { hostClusterOffsetOf } from "./entries.ts";
import { ENTRY_SIZE } from "./layout.ts";
import type { Qcow2Header } from "./header.ts";
import type { Snapshot } from "./snapshots.ts";

/**
 * The clusters that hold the header, the L1 table in use, the L2 tables it
 * names, the refcount table, the snapshot table and the snapshots' L1 tables.
 * (Refcount blocks are not listed: finding them means reading the refcount
 * table, which reading guest data never needs.)
 */
export class MetadataMap {
  #cs: number;
  #ranges: { from: number; to: number; what: string }[] = [];
  #l2: Float64Array;

  /**
   * @param header The image header.
   * @param l1 The L1 table in use.
   * @param snapshots The snapshot table.
   */
  constructor(
    header: Qcow2Header,
    l1: Uint8Array,
    snapshots: readonly Snapshot[],
  ) {
    const cs = this.#cs = header.clusterSize;
    const clusters = (bytes: number) => Math.max(1, Math.ceil(bytes / cs)) * cs;
    const add = (from: number, bytes: number, what: string) => {
      if (from !== 0 || what === "header") {
        this.#ranges.push({ from, to: from + clusters(bytes), what });
      }
    };
    add(0, header.headerLength, "header");
    add(header.l1TableOffset, header.l1Size * ENTRY_SIZE, "active L1 table");
    add(
      header.refcountTableOffset,
      header.refcountTableClusters * cs,
      "refcount table",
    );
    if (header.nbSnapshots > 0) {
      add(header.snapshotsOffset, 1, "snapshot table");
    }
    for (const s of snapshots) {
      add(
        s.l1TableOffset,
        s.l1Size * ENTRY_SIZE,
        `L1 table of snapshot '${s.name}'`,
      );
    }
    const view = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    const l2: number[] = [];
    for (let at = 0; at < l1.length; at += ENTRY_SIZE) {
      // -1 (past any file) matches no cluster, as a huge offset would not.
      const offset = hostClusterOffsetOf(
        view.getUint32(at),
        view.getUint32(at + 4),
      );
      if (offset > 0) l2.push(offset);
    }
    this.#l2 = Float64Array.from(l2).sort();
  }

  /** Whether the cluster at file offset `host` holds metadata. */
  has(host: number): boolean {
    return this.what(host) !== undefined;
  }

  /** What metadata the cluster at `host` holds, if any. */
  what(host: number): string | undefined {
    for (const r of this.#ranges) {
      if (host >= r.from && host < r.to) return r.what;
    }
    // Binary search of the L2 table offsets.
    let lo = 0;
    let hi = this.#l2.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if (this.#l2[mid] < host) lo = mid + 1;
      else hi = mid;
    }
    return lo < this.#l2.length && this.#l2[lo] === host
      ? "an L2 table"
      : undefined;
  }
}
