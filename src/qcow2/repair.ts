/**
 * Repairing the refcounts of a dirty image (lazy refcounts, not closed
 * cleanly) before it is written, as QEMU's read-write open does
 * (`qcow2_check(..., BDRV_FIX_ERRORS)` in qcow2_do_open): every reference
 * is counted from the metadata, each refcount set to its count, and the
 * COPIED flags of the active tables made to agree.
 *
 * @module
 */

import type { ByteStore } from "../io/store.ts";
import type { Qcow2Header } from "./header.ts";
import {
  COPIED,
  HEADER,
  SNAPSHOT,
  SNAPSHOT_ALIGNMENT,
  SNAPSHOT_HEADER_SIZE,
} from "./layout.ts";
import type { Snapshot } from "./snapshots.ts";
import { Refcounts } from "./refcounts.ts";
import { decodeL1, decodeL2, encodeL2 } from "./l2_entry.ts";

/**
 * The bytes the snapshot table spans, from its entries' sizes (as QEMU's
 * `s->snapshots_size`).
 *
 * @param store The image file.
 * @param header Its header.
 * @returns The table's length in bytes (0 without snapshots).
 */
export async function snapshotTableBytes(
  store: ByteStore,
  header: Qcow2Header,
): Promise<number> {
  let at = header.snapshotsOffset;
  const fixed = new Uint8Array(SNAPSHOT_HEADER_SIZE);
  const view = new DataView(fixed.buffer);
  for (let i = 0; i < header.nbSnapshots; i++) {
    await store.readAt(at, fixed);
    const length = SNAPSHOT_HEADER_SIZE +
      view.getUint32(SNAPSHOT.extraDataSize.offset) +
      view.getUint16(SNAPSHOT.idStrSize.offset) +
      view.getUint16(SNAPSHOT.nameSize.offset);
    at += Math.ceil(length / SNAPSHOT_ALIGNMENT) * SNAPSHOT_ALIGNMENT;
  }
  return at - header.snapshotsOffset;
}

/**
 * Sets every refcount of the image to the number of references its
 * metadata holds, then the COPIED flags of the active L1 and L2 tables to
 * (refcount == 1). Refcounts are written before the flags.
 *
 * @param store The image file.
 * @param header Its header.
 * @param snapshots Its snapshot table.
 * @param external Whether data lives in an external data file (data
 * clusters are then not counted).
 */
export async function repairRefcounts(
  store: ByteStore,
  header: Qcow2Header,
  snapshots: readonly Snapshot[],
  external: boolean,
): Promise<void> {
  const cs = header.clusterSize;
  const bits = header.clusterBits;
  const extended = header.features.extendedL2;
  const eb = extended ? 16 : 8;
  const fileClusters = Math.ceil(store.size / cs);
  const counts = new Uint32Array(fileClusters + 1);
  const inc = (offset: number, bytes: number) => {
    const first = Math.floor(offset / cs);
    const last = Math.floor((offset + Math.max(bytes, 1) - 1) / cs);
    for (let c = first; c <= last && c < counts.length; c++) counts[c]++;
  };
  inc(0, cs);
  const walk = async (l1Offset: number, l1Size: number) => {
    if (l1Size === 0) return;
    inc(l1Offset, l1Size * 8);
    const l1 = new Uint8Array(l1Size * 8);
    await store.readAt(l1Offset, l1);
    const l1View = new DataView(l1.buffer);
    const table = new Uint8Array(cs);
    const view = new DataView(table.buffer);
    for (let i = 0; i < l1Size; i++) {
      const e = decodeL1(l1View, i, cs);
      if (typeof e === "string" || e.offset === 0) continue;
      inc(e.offset, cs);
      table.fill(0, await store.readAt(e.offset, table));
      for (let j = 0; j < cs / eb; j++) {
        const m = decodeL2(view, j, extended, bits, external, header.version);
        if (typeof m === "string") continue;
        if (m.compressed) inc(m.host, m.compressedLength);
        else if (m.host !== 0 && !external) inc(m.host, cs);
      }
    }
  };
  await walk(header.l1TableOffset, header.l1Size);
  for (const s of snapshots) await walk(s.l1TableOffset, s.l1Size);
  if (header.nbSnapshots > 0) {
    inc(header.snapshotsOffset, await snapshotTableBytes(store, header));
  }
  inc(header.refcountTableOffset, header.refcountTableClusters * cs);
  const taken = new Set<number>();
  const refcounts = await Refcounts.load(store, {
    clusterBits: bits,
    refcountOrder: header.refcountOrder,
    tableOffset: header.refcountTableOffset,
    tableClusters: header.refcountTableClusters,
  }, {
    writeTableLocation: async (offset, clusters) => {
      const at = HEADER.refcountTableOffset.offset;
      const bytes = new Uint8Array(12);
      const v = new DataView(bytes.buffer);
      v.setBigUint64(0, BigInt(offset));
      v.setUint32(HEADER.refcountTableClusters.offset - at, clusters);
      await store.writeAt(at, bytes);
      await store.flush?.();
    },
    reserved: (c) => c < counts.length && counts[c] > 0,
    taken: (c) => taken.add(c),
  });
  for (const offset of refcounts.blockOffsets) {
    if (offset !== 0) inc(offset, cs);
  }
  const want = (c: number) =>
    (c < counts.length ? counts[c] : 0) + (taken.has(c) ? 1 : 0);
  // Clusters the file or a refcount block covers.
  const per = refcounts.perBlock;
  const limit = Math.max(counts.length, refcounts.coveredClusters);
  for (let c = 0; c < limit; c++) {
    const index = Math.floor(c / per);
    const hasBlock = index < refcounts.blockOffsets.length &&
      refcounts.blockOffsets[index] !== 0;
    if (!hasBlock && want(c) === 0) {
      c = (index + 1) * per - 1; // nothing counted, nothing to clear
      if (c >= counts.length && index >= refcounts.blockOffsets.length) break;
      continue;
    }
    const have = await refcounts.get(c);
    const w = Math.min(want(c), refcounts.maxRefcount);
    if (have !== w) await refcounts.set(c, w);
  }
  await refcounts.writeDirty();
  await store.flush?.();
  await fixCopied(store, header, refcounts, external);
}

/** Sets COPIED in the active L1 and L2 tables where the refcount is 1. */
async function fixCopied(
  store: ByteStore,
  header: Qcow2Header,
  refcounts: Refcounts,
  external: boolean,
): Promise<void> {
  const cs = header.clusterSize;
  const extended = header.features.extendedL2;
  const eb = extended ? 16 : 8;
  if (header.l1Size === 0) return;
  const l1 = new Uint8Array(header.l1Size * 8);
  await store.readAt(header.l1TableOffset, l1);
  const l1View = new DataView(l1.buffer);
  let l1Changed = false;
  const table = new Uint8Array(cs);
  const view = new DataView(table.buffer);
  for (let i = 0; i < header.l1Size; i++) {
    const e = decodeL1(l1View, i, cs);
    if (typeof e === "string" || e.offset === 0) continue;
    const copied = (await refcounts.get(e.offset / cs)) === 1;
    if (copied !== e.copied) {
      const raw = l1View.getBigUint64(i * 8);
      l1View.setBigUint64(i * 8, copied ? raw | COPIED : raw & ~COPIED);
      l1Changed = true;
    }
    table.fill(0, await store.readAt(e.offset, table));
    let changed = false;
    for (let j = 0; j < cs / eb; j++) {
      const m = decodeL2(
        view,
        j,
        extended,
        header.clusterBits,
        external,
        header.version,
      );
      if (typeof m === "string" || m.compressed || m.host === 0 || external) {
        continue;
      }
      const want = (await refcounts.get(m.host / cs)) === 1;
      if (want !== m.copied) {
        encodeL2(view, j, extended, header.clusterBits, {
          ...m,
          copied: want,
        });
        changed = true;
      }
    }
    if (changed) await store.writeAt(e.offset, table);
  }
  if (l1Changed) await store.writeAt(header.l1TableOffset, l1);
  await store.flush?.();
}
