/**
 * `qemu-img check` for qcow2: the refcounts rebuilt from everything that
 * references a host cluster, compared with the refcounts on disk, and the
 * COPIED flags of the active tables checked against them. Follows QEMU
 * 7.2's `qcow2_check_refcounts` (block/qcow2-refcount.c: `calculate_refcounts`,
 * `check_refcounts_l1`, `check_refcounts_l2`, `qcow2_inc_refcounts_imrt`,
 * `check_refblocks`, `compare_refcounts`, `check_oflag_copied`) and
 * `qcow2_check_bitmaps_refcounts` (block/qcow2-bitmap.c): the same counts,
 * and the same messages in the same order.
 *
 * Memory is bounded whatever the file's size: the rebuilt refcounts of at
 * most {@linkcode DEFAULT_WINDOW_CLUSTERS} host clusters are held at a time
 * in one reused array, and the metadata is walked once per window (twice
 * when there is more than one window, so that messages keep QEMU's order).
 *
 * @module
 */

import { checkKnownFeatures, readHeader } from "./header.ts";
import type { Qcow2Header } from "./header.ts";
import type { ByteSource } from "../io/source.ts";
import {
  BITMAP_TABLE_OFFSET_MASK,
  COMPRESSED,
  COPIED,
  L1_OFFSET_MASK,
  L1_RESERVED_MASK,
  L2_OFFSET_MASK,
  L2_STD_RESERVED_MASK,
  REFCOUNT_TABLE_OFFSET_MASK,
  REFCOUNT_TABLE_RESERVED_MASK,
  ZERO_FLAG,
} from "./layout.ts";
import { validBitmapTableEntry } from "./bitmaps.ts";
import { refcountAt, setRefcountAt } from "./refcount_reader.ts";
import type { ByteStore } from "../io/store.ts";
import { Qcow2Error } from "../errors.ts";

/**
 * Host clusters whose rebuilt refcounts are held at once (4 bytes each:
 * 8 MiB).
 */
export const DEFAULT_WINDOW_CLUSTERS = 1 << 21;

/** Largest L1 table QEMU accepts, in bytes (`QCOW_MAX_L1_SIZE`). */
const MAX_L1_BYTES = 32 * 1024 * 1024;

/**
 * What `qemu-img check` counts (QEMU's `BdrvCheckResult`).
 *
 * @example A clean image
 * ```ts
 * import { bytesSource, checkQcow2 } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zlib.qcow2", import.meta.url));
 * const result = await checkQcow2(bytesSource(bytes));
 * assertEquals(result.corruptions + result.leaks + result.checkErrors, 0);
 * assertEquals(result.compressedClusters, 9);
 * ```
 */
export interface CheckResult {
  /** Errors that kept the check from reading something. */
  checkErrors: number;
  /** Refcounts too low, bad entries, references past the end of the file… */
  corruptions: number;
  /** Clusters whose refcount is higher than their references. */
  leaks: number;
  /** Byte after the last host cluster in use or referenced. */
  imageEndOffset: number;
  /** Clusters of the virtual disk. */
  totalClusters: number;
  /** Clusters the active L1 table allocates (data, zero with a host cluster, compressed). */
  allocatedClusters: number;
  /** Allocated clusters not right after the previous one of their L2 table. */
  fragmentedClusters: number;
  /** Compressed clusters of the active L1 table. */
  compressedClusters: number;
  /** Corruptions repaired (with `repair`). */
  corruptionsFixed: number;
  /** Leaked clusters repaired (with `repair`). */
  leaksFixed: number;
  /**
   * Why the check stopped without a report, as qemu-img's "Check failed:
   * REASON" says it ("Input/output error" where `repair: "leaks"` would need
   * the refcount structure rebuilt).
   */
  failed?: string;
}

/**
 * Options of {@linkcode checkQcow2}.
 *
 * @example Collecting the messages
 * ```ts
 * import type { CheckOptions } from "@qcow2/qcow2";
 *
 * const lines: string[] = [];
 * const options: CheckOptions = { onMessage: (line) => lines.push(line) };
 * ```
 */
export interface CheckOptions {
  /**
   * Receives each message qemu-img prints to standard error while checking
   * ("Leaked cluster 3 refcount=1 reference=0"), without its newline.
   */
  onMessage?: (line: string) => void;
  /** Host clusters whose refcounts are rebuilt at once (default 2 Mi). */
  windowClusters?: number;
  /**
   * Repair as `qemu-img check -r` does: `"leaks"` lowers refcounts that are
   * too high; `"all"` also raises those too low, rebuilds the refcount
   * structure when a used cluster has refcount 0 or a refcount block is
   * bad, and fixes the COPIED flags. The source must be a `ByteStore`
   * (`writeAt`), and the image at most `windowClusters` host clusters.
   */
  repair?: "leaks" | "all";
}

/**
 * Checks a qcow2 image's refcounts and COPIED flags as `qemu-img check`
 * does (without repairing anything).
 *
 * @param source The image file.
 * @param options Where messages go; the window size.
 * @returns The counts.
 * @throws {Qcow2Error} If the header cannot be read (as opening fails in
 * qemu-img).
 *
 * @example A leaked cluster
 * ```ts
 * import { bytesSource, checkQcow2 } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/e2image.qcow2", import.meta.url));
 * const lines: string[] = [];
 * const result = await checkQcow2(bytesSource(bytes), { onMessage: (l) => lines.push(l) });
 * assertEquals(result.leaks, 1);
 * assertEquals(lines, ["Leaked cluster 3 refcount=1 reference=0"]);
 * ```
 */
export async function checkQcow2(
  source: ByteSource,
  options: CheckOptions = {},
): Promise<CheckResult> {
  const header = await readHeader(source, { check: true });
  // What QEMU refuses to open, it does not check either.
  checkKnownFeatures(header);
  return await new Checker(source, header, options).run();
}

/** Hex as C's `%x`. */
function x(n: number | bigint): string {
  return n.toString(16);
}

/** Hex as C's `%#x`: 0x-prefixed, plain 0 for zero. */
function hx(n: number | bigint): string {
  return n === 0 || n === 0n ? "0" : `0x${n.toString(16)}`;
}

/** One snapshot table entry, as the check reads it. */
interface SnapshotEntry {
  id: string;
  name: string;
  l1TableOffset: bigint;
  l1Size: number;
  extraSize: number;
  /** The fixed 40 bytes, the extra data, the ID and name bytes. */
  fixed: Uint8Array;
  extra: Uint8Array;
  idBytes: Uint8Array;
  nameBytes: Uint8Array;
}

class Checker {
  #source: ByteSource;
  #h: Qcow2Header;
  #cs: number;
  #bits: number;
  #csBig: bigint;
  #fileLength: number;
  #dataFile: boolean;
  #extended: boolean;
  #entryBytes: number;
  #refcountMax: number;
  #say: (line: string) => void;
  #windowClusters: number;
  #res: CheckResult;

  // The current window: rebuilt refcounts of clusters [from, from + length).
  #from = 0;
  #counts: Uint32Array;
  /** Whether messages are printed and walk-time problems counted. */
  #emit = true;
  /** Clusters the image has: the file's, plus one referenced just past it. */
  #nbClusters: number;
  #grown = false;
  /** The number of the current reference in the walk. */
  #seq = 0;
  /** Clusters that overflowed in silent windows, by reference number. */
  #overflows = new Map<number, number[]>();
  #reftable: BigUint64Array | undefined;
  #snapshots: SnapshotEntry[] = [];
  #snapshotsSize = 0;
  /** `-r`: what may be repaired, and where. */
  #fixLeaks: boolean;
  #fixErrors: boolean;
  #store: ByteStore | undefined;
  /** Snapshot table entries found incomplete. */
  #snapshotCorruptions = 0;
  /** QEMU's `rebuild`: the refcount structure itself is broken. */
  #rebuild = false;

  constructor(source: ByteSource, header: Qcow2Header, options: CheckOptions) {
    this.#source = source;
    this.#h = header;
    this.#cs = header.clusterSize;
    this.#bits = header.clusterBits;
    this.#csBig = BigInt(header.clusterSize);
    // QEMU counts the file in 512-byte sectors.
    this.#fileLength = Math.ceil(source.size / 512) * 512;
    this.#dataFile = header.features.externalDataFile;
    this.#extended = header.features.extendedL2;
    this.#entryBytes = this.#extended ? 16 : 8;
    this.#refcountMax = header.refcountBits >= 32
      ? 0xffffffff
      : 2 ** header.refcountBits - 1;
    this.#say = options.onMessage ?? (() => {});
    this.#fixLeaks = options.repair !== undefined;
    this.#fixErrors = options.repair === "all";
    if (options.repair !== undefined) {
      if (!("writeAt" in source)) {
        throw new TypeError("check with repair needs a ByteStore (writeAt)");
      }
      this.#store = source as ByteStore;
    }
    this.#windowClusters = Math.max(
      1,
      options.windowClusters ?? DEFAULT_WINDOW_CLUSTERS,
    );
    this.#nbClusters = Math.ceil(this.#fileLength / this.#cs);
    this.#counts = new Uint32Array(
      Math.min(this.#windowClusters, this.#nbClusters + 1),
    );
    this.#res = {
      checkErrors: 0,
      corruptions: 0,
      leaks: 0,
      imageEndOffset: 0,
      totalClusters: Math.ceil(
        Math.ceil(header.size / 512) * 512 / header.clusterSize,
      ),
      allocatedClusters: 0,
      fragmentedClusters: 0,
      compressedClusters: 0,
      corruptionsFixed: 0,
      leaksFixed: 0,
    };
  }

  async run(): Promise<CheckResult> {
    await this.#readSnapshotTable();
    // qcow2_check_read_snapshot_table: entries without the 16 bytes of
    // extra data that hold the VM state size and the disk size.
    // Counted apart, as QEMU's snapshot_res, and added at the end.
    let incomplete = 0;
    this.#snapshots.forEach((sn, i) => {
      if (sn.extraSize < 16) {
        incomplete++;
        this.#say(
          `${
            this.#fixErrors ? "Repairing" : "ERROR"
          } snapshot table entry ${i} is incomplete`,
        );
      }
    });
    this.#snapshotCorruptions = incomplete;
    const span = this.#counts.length;
    // The rebuilt refcounts may reach one cluster past the file's.
    const windows = Math.ceil((this.#nbClusters + 1) / span);
    const refblockCounts = new Map<number, number>();
    if (this.#store) {
      if (windows > 1) {
        throw new Qcow2Error(
          "TOO_LARGE",
          `Cannot repair the image: it has ${this.#nbClusters} host clusters, more than the ${span} whose refcounts are held at once`,
        );
      }
      return await this.#repair(refblockCounts);
    }
    this.#res.corruptions += this.#snapshotCorruptions;
    if (windows === 1) {
      this.#from = 0;
      this.#emit = true;
      await this.#walk();
      await this.#refblocks(refblockCounts, true);
      await this.#compare();
    } else {
      // Pass 1: each refcount block's own count, and the overflows of the
      // later windows, found silently; then the walk's messages with the
      // first window. Pass 2: the comparison, window by window.
      for (let w = 1; w <= windows; w++) {
        this.#load((w % windows) * span);
        this.#emit = w === windows;
        await this.#walk();
        this.#emit = false;
        await this.#refblocks(refblockCounts, false);
      }
      this.#emit = true;
      await this.#refblocks(refblockCounts, true, true);
      for (let w = 0; w < windows; w++) {
        this.#load(w * span);
        this.#emit = false;
        await this.#walk();
        await this.#refblocks(refblockCounts, false);
        this.#emit = true;
        await this.#compare();
      }
    }
    await this.#checkCopied();
    return this.#res;
  }

  /**
   * `qcow2_check_refcounts` with `fix`, the image in one window: leaks
   * lowered, low refcounts raised, the refcount structure rebuilt where it
   * is broken (`-r all`), then the COPIED flags, and the dirty and corrupt
   * bits cleared when nothing is left.
   */
  async #repair(refblockCounts: Map<number, number>): Promise<CheckResult> {
    this.#from = 0;
    this.#emit = true;
    await this.#walk();
    await this.#refblocks(refblockCounts, true);
    const pre = { ...this.#res };
    await this.#compare();
    if (this.#pendingCorrupt) await this.#setFeatures(2n, 0n);
    if (this.#rebuild && this.#fixErrors) {
      const old = { ...this.#res };
      this.#say("Rebuilding refcount structure");
      if (this.#disabled) {
        this.#say("ERROR writing refblock: Input/output error");
        this.#res.checkErrors++;
        this.#res.failed = "Input/output error";
        return this.#res;
      }
      await this.#rebuildStructure();
      this.#res.corruptions = 0;
      this.#res.leaks = 0;
      this.#rebuild = false;
      this.#restart();
      await this.#walk();
      await this.#refblocks(refblockCounts, true);
      // The old structure's clusters are leaked now: repaired, not counted.
      const saved = { ...this.#res };
      this.#res = {
        ...saved,
        checkErrors: 0,
        corruptions: 0,
        leaks: 0,
        imageEndOffset: 0,
      };
      await this.#compare(true, false);
      if (this.#rebuild) {
        this.#say("ERROR rebuilt refcount structure is still broken");
      }
      const freshLeaks = this.#res.leaks;
      const end = this.#res.imageEndOffset;
      this.#res = { ...saved, imageEndOffset: end };
      if (this.#res.corruptions < old.corruptions) {
        this.#res.corruptionsFixed += old.corruptions - this.#res.corruptions;
      }
      if (this.#res.leaks < old.leaks) {
        this.#res.leaksFixed += old.leaks - this.#res.leaks;
      }
      this.#res.leaks += freshLeaks;
    } else {
      if (this.#rebuild) {
        this.#say("ERROR need to rebuild refcount structures");
        this.#res.corruptions += this.#snapshotCorruptions;
        this.#res.checkErrors++;
        this.#res.failed = "Input/output error";
        // Closing a writable image clears the dirty bit (qcow2_inactivate).
        if (!this.#disabled) await this.#setFeatures(0n, 1n);
        await this.#store!.flush?.();
        return this.#res;
      }
      if (this.#res.leaks || this.#res.corruptions) {
        this.#res = { ...pre };
        await this.#compare(this.#fixLeaks, this.#fixErrors);
      }
    }
    const r = this.#res;
    await this.#checkCopied(
      this.#fixErrors || (!r.checkErrors && !r.corruptions && !r.leaks),
    );
    // qcow2_check_fix_snapshot_table: the table written anew.
    if (this.#snapshotCorruptions && this.#fixErrors && !this.#disabled) {
      await this.#writeSnapshotTable();
      r.corruptionsFixed += this.#snapshotCorruptions;
    } else r.corruptions += this.#snapshotCorruptions;
    // qcow2_mark_clean and qcow2_mark_consistent when all is repaired; the
    // dirty bit goes in any case when the image is closed (qcow2_inactivate).
    if (!this.#disabled) {
      await this.#setFeatures(0n, !r.checkErrors && !r.corruptions ? 3n : 1n);
    }
    await this.#store!.flush?.();
    return this.#res;
  }

  /**
   * `qcow2_write_snapshots`, as `qcow2_check_fix_snapshot_table` calls it:
   * every entry with at least the 24 bytes of extra data QEMU knows, in a
   * table allocated first fit (`alloc_clusters_noref`), the header pointed
   * at it, the old table freed.
   */
  async #writeSnapshotTable(): Promise<void> {
    const cs = this.#cs;
    const nul = (b: Uint8Array) => {
      const at = b.indexOf(0);
      return at < 0 ? b : b.subarray(0, at);
    };
    const parts: Uint8Array[] = [];
    let size = 0;
    for (const sn of this.#snapshots) {
      const pad = (8 - size % 8) % 8;
      if (pad) parts.push(new Uint8Array(pad));
      size += pad;
      const v = new DataView(sn.fixed.buffer);
      const ev = new DataView(sn.extra.buffer);
      const vmState = sn.extraSize >= 8
        ? ev.getBigUint64(0)
        : BigInt(v.getUint32(32));
      const diskSize = sn.extraSize >= 16
        ? ev.getBigUint64(8)
        : BigInt(Math.floor(this.#h.size / 512) * 512);
      const icount = sn.extraSize >= 24 ? ev.getBigUint64(16) : 2n ** 64n - 1n;
      const id = nul(sn.idBytes);
      const name = nul(sn.nameBytes);
      const extraSize = Math.max(24, sn.extraSize);
      const h = new Uint8Array(40 + extraSize);
      const hv = new DataView(h.buffer);
      h.set(sn.fixed.subarray(0, 12));
      hv.setUint16(12, id.length);
      hv.setUint16(14, name.length);
      h.set(sn.fixed.subarray(16, 32), 16);
      hv.setUint32(32, vmState <= 0xffffffffn ? Number(vmState) : 0);
      hv.setUint32(36, extraSize);
      hv.setBigUint64(40, vmState);
      hv.setBigUint64(48, diskSize);
      hv.setBigUint64(56, icount);
      if (sn.extraSize > 24) h.set(sn.extra.subarray(24), 64);
      parts.push(h, id, name);
      size += h.length + id.length + name.length;
    }
    // alloc_clusters_noref from cluster 0, on the refcounts on disk.
    const clusters = Math.ceil(size / cs);
    let first = 0;
    for (let run = 0; run < clusters;) {
      const refcount = await this.#onDisk(first + run);
      if (refcount !== 0) {
        first += run + 1;
        run = 0;
      } else run++;
    }
    for (let c = first; c < first + clusters; c++) {
      await this.#addOnDisk(c, 1);
    }
    const table = new Uint8Array(size);
    let at = 0;
    for (const part of parts) {
      table.set(part, at);
      at += part.length;
    }
    const offset = first * cs;
    await this.#store!.writeAt(offset, table);
    await this.#store!.flush?.();
    const header = new Uint8Array(12);
    const hv = new DataView(header.buffer);
    hv.setUint32(0, this.#snapshots.length);
    hv.setBigUint64(4, BigInt(offset));
    await this.#store!.writeAt(60, header);
    await this.#store!.flush?.();
    // qcow2_free_clusters of the old table (QCOW2_DISCARD_SNAPSHOT).
    const old = this.#h.snapshotsOffset;
    if (this.#snapshotsSize > 0) {
      const last = Math.floor((old + this.#snapshotsSize - 1) / cs);
      for (let c = Math.floor(old / cs); c <= last; c++) {
        if (await this.#addOnDisk(c, -1) === 0) await this.#discard(c);
      }
    }
    this.#h = { ...this.#h, snapshotsOffset: offset };
  }

  /**
   * Adds `delta` to the on-disk refcount of `cluster` (in a refcount block
   * that exists) and returns the new refcount.
   */
  async #addOnDisk(cluster: number, delta: number): Promise<number> {
    const table = await this.#table();
    const per = this.#perBlock;
    const index = Math.floor(cluster / per);
    const offset = index < table.length
      ? Number(table[index] & REFCOUNT_TABLE_OFFSET_MASK)
      : 0;
    if (offset === 0 || offset % this.#cs !== 0) {
      throw new Qcow2Error(
        "NOT_WRITABLE",
        `Cannot repair the snapshot table: no refcount block covers cluster ${cluster}`,
      );
    }
    const block = await this.#read(offset, this.#cs);
    const value = refcountAt(block, this.#h.refcountOrder, cluster % per) +
      delta;
    setRefcountAt(block, this.#h.refcountOrder, cluster % per, value);
    await this.#store!.writeAt(offset, block);
    this.#blockIndex = -1;
    return value;
  }

  /** A fresh window over the file as it is now (after a rebuild). */
  #restart(): void {
    this.#fileLength = Math.ceil(this.#source.size / 512) * 512;
    this.#nbClusters = Math.ceil(this.#fileLength / this.#cs);
    this.#counts = new Uint32Array(this.#nbClusters + 1);
    this.#grown = false;
    this.#reftable = undefined;
    this.#blockIndex = -1;
    this.#overflows.clear();
    this.#from = 0;
  }

  /**
   * QEMU's `rebuild_refcount_structure`: refcount blocks written from the
   * rebuilt refcounts, each where `alloc_clusters_imrt` finds room (in the
   * block's own range or later), then the refcount table, first fit, until
   * it no longer grows; then the header points at it.
   */
  async #rebuildStructure(): Promise<void> {
    const cs = this.#cs;
    const order = this.#h.refcountOrder;
    const per = cs * 8 / this.#h.refcountBits;
    const store = this.#store!;
    let counts = this.#counts;
    let size = this.#nbClusters + (this.#grown ? 1 : 0);
    const count = (c: number) => c < counts.length ? counts[c] : 0;
    const ensure = (n: number) => {
      if (n > counts.length) {
        const grown = new Uint32Array(Math.max(n, counts.length * 2));
        grown.set(counts);
        counts = grown;
      }
      if (n > size) size = n;
    };
    // alloc_clusters_imrt
    const alloc = (n: number, free: { at: number }): number => {
      let cluster = free.at;
      let firstGap = true;
      let contiguous = 0;
      for (; cluster < size && contiguous < n; cluster++) {
        if (!count(cluster)) {
          contiguous++;
          if (firstGap) {
            free.at = cluster;
            firstGap = false;
          }
        } else contiguous = 0;
      }
      if (contiguous < n) ensure(cluster + n - contiguous);
      cluster -= contiguous;
      for (let i = 0; i < n; i++) counts[cluster + i] = 1;
      return cluster * cs;
    };
    const table: number[] = [];
    // rebuild_refcounts_write_refblocks
    const writeBlocks = async (first: number, end: number) => {
      const free = { at: 0 };
      let grown = false;
      for (let cluster = first; cluster < end; cluster++) {
        if (!count(cluster)) continue;
        const index = Math.floor(cluster / per);
        const start = index * per;
        let offset: number;
        if (table.length > index && table[index]) {
          offset = table[index];
        } else {
          if (free.at < start) free.at = start;
          offset = alloc(1, free);
          if (offset / cs >= end) end = offset / cs + 1;
          if (table.length <= index) {
            const entries = Math.ceil((index + 1) * 8 / cs) * cs / 8;
            while (table.length < entries) table.push(0);
            grown = true;
          }
          table[index] = offset;
        }
        const block = new Uint8Array(cs);
        for (let i = 0; i < per; i++) {
          const value = count(start + i);
          if (value) setRefcountAt(block, order, i, value);
        }
        await store.writeAt(offset, block);
        cluster = start + per - 1;
      }
      return grown;
    };
    await writeBlocks(0, size);
    let tableOffset: number;
    let tableClusters: number;
    let changed: boolean;
    do {
      tableClusters = Math.ceil(table.length * 8 / cs);
      tableOffset = alloc(tableClusters, { at: 0 });
      const first = tableOffset / cs;
      changed = await writeBlocks(first, first + tableClusters);
    } while (changed);
    const bytes = new Uint8Array(table.length * 8);
    const view = new DataView(bytes.buffer);
    table.forEach((offset, i) => view.setBigUint64(i * 8, BigInt(offset)));
    await store.writeAt(tableOffset, bytes);
    await store.flush?.();
    const location = new Uint8Array(12);
    const lv = new DataView(location.buffer);
    lv.setBigUint64(0, BigInt(tableOffset));
    lv.setUint32(8, tableClusters);
    await store.writeAt(48, location);
    await store.flush?.();
    this.#h = {
      ...this.#h,
      refcountTableOffset: tableOffset,
      refcountTableClusters: tableClusters,
    };
  }

  /** Makes the window start at cluster `from`, with no references counted. */
  #load(from: number): void {
    this.#from = from;
    this.#counts.fill(0);
  }

  #corruption(line: string): void {
    if (!this.#emit) return;
    this.#res.corruptions++;
    this.#say(line);
  }

  /** Reads `length` bytes at `offset`; what lies past the file reads as 0. */
  async #read(offset: number, length: number): Promise<Uint8Array> {
    const bytes = new Uint8Array(length);
    if (offset < this.#source.size) await this.#source.readAt(offset, bytes);
    return bytes;
  }

  /**
   * QEMU's `qcow2_inc_refcounts_imrt`: one more reference to each host
   * cluster of `[offset, offset + size)`, unless the range ends a cluster
   * or more past the end of the file.
   */
  #inc(offset: bigint, size: bigint): void {
    const seq = this.#seq++;
    if (size <= 0n) return;
    if (offset + size - BigInt(this.#fileLength) >= this.#csBig) {
      this.#corruption(
        `ERROR: counting reference for region exceeding the end of the file by one cluster or more: offset 0x${
          x(offset)
        } size 0x${x(size)}`,
      );
      return;
    }
    const bits = BigInt(this.#bits);
    const first = Number(offset >> bits);
    const last = Number((offset + size - 1n) >> bits);
    if (last >= this.#nbClusters) this.#grown = true;
    const from = Math.max(first, this.#from);
    const to = Math.min(last, this.#from + this.#counts.length - 1);
    for (let k = from; k <= to; k++) {
      const i = k - this.#from;
      if (this.#counts[i] >= this.#refcountMax) {
        if (this.#emit) this.#overflow(k);
        else if (!this.#overflows.get(seq)?.includes(k)) {
          this.#overflows.set(seq, [...this.#overflows.get(seq) ?? [], k]);
        }
        continue;
      }
      this.#counts[i]++;
    }
    // Overflows found in later windows, said where QEMU says them.
    if (this.#emit) {
      for (const k of this.#overflows.get(seq) ?? []) this.#overflow(k);
    }
  }

  /** `#inc` of the one cluster at `offset`, aligned and inside the file. */
  #incCluster(offset: number): void {
    const k = offset / this.#cs - this.#from;
    if (
      offset < this.#fileLength && k >= 0 && k < this.#counts.length &&
      this.#counts[k] < this.#refcountMax && !this.#overflows.size
    ) {
      this.#seq++;
      this.#counts[k]++;
      return;
    }
    if (
      offset >= this.#fileLength || (k >= 0 && k < this.#counts.length) ||
      this.#overflows.size
    ) {
      this.#inc(BigInt(offset), this.#csBig);
    } else this.#seq++;
  }

  #overflow(cluster: number): void {
    this.#say(`ERROR: overflow cluster offset=0x${x(cluster * this.#cs)}`);
    this.#say(
      "Use qemu-img amend to increase the refcount entry width or qemu-img convert to create a clean copy if the image cannot be opened for writing",
    );
    this.#res.corruptions++;
  }

  /** The walk of `calculate_refcounts` up to the refcount blocks. */
  async #walk(): Promise<void> {
    this.#seq = 0;
    const h = this.#h;
    const cs = this.#csBig;
    this.#inc(0n, cs);
    await this.#l1(BigInt(h.l1TableOffset), h.l1Size, true);
    if (this.#dataFile && h.nbSnapshots > 0) {
      this.#corruption(
        `ERROR ${h.nbSnapshots} snapshots in image with data file`,
      );
    }
    for (const sn of this.#snapshots) {
      if (sn.l1TableOffset % cs !== 0n) {
        this.#corruption(
          `ERROR snapshot ${sn.id} (${sn.name}) l1_offset=${
            hx(sn.l1TableOffset)
          }: L1 table is not cluster aligned; snapshot table entry corrupted`,
        );
        continue;
      }
      if (sn.l1Size > MAX_L1_BYTES / 8) {
        this.#corruption(
          `ERROR snapshot ${sn.id} (${sn.name}) l1_size=${
            hx(sn.l1Size)
          }: L1 table is too large; snapshot table entry corrupted`,
        );
        continue;
      }
      await this.#l1(sn.l1TableOffset, sn.l1Size, false);
    }
    this.#inc(BigInt(h.snapshotsOffset), BigInt(this.#snapshotsSize));
    this.#inc(
      BigInt(h.refcountTableOffset),
      BigInt(h.refcountTableClusters) * cs,
    );
    const crypto = h.extensions.encryption;
    if (crypto && crypto.length > 0) {
      this.#inc(BigInt(crypto.offset), BigInt(crypto.length));
    }
    await this.#bitmaps();
  }

  /** `check_refcounts_l1`. */
  async #l1(offset: bigint, l1Size: number, active: boolean): Promise<void> {
    if (l1Size === 0) return;
    this.#inc(offset, BigInt(l1Size) * 8n);
    if (offset > BigInt(Number.MAX_SAFE_INTEGER)) return;
    const table = await this.#read(Number(offset), l1Size * 8);
    const view = new DataView(table.buffer);
    for (let i = 0; i < l1Size; i++) {
      const entry = view.getBigUint64(i * 8);
      if (entry === 0n) continue;
      if (entry & L1_RESERVED_MASK) {
        this.#corruption(
          `ERROR found L1 entry with reserved bits set: ${x(entry)}`,
        );
      }
      const l2Offset = entry & L1_OFFSET_MASK;
      this.#inc(l2Offset, this.#csBig);
      if (l2Offset % this.#csBig !== 0n) {
        this.#corruption(
          `ERROR l2_offset=${
            x(l2Offset)
          }: Table is not cluster aligned; L1 entry corrupted`,
        );
      }
      await this.#l2(Number(l2Offset), active);
    }
  }

  /** `check_refcounts_l2`. */
  async #l2(l2Offset: number, active: boolean): Promise<void> {
    const table = await this.#read(l2Offset, this.#cs);
    const view = new DataView(table.buffer);
    const words = new Uint32Array(table.buffer);
    const wpe = this.#entryBytes / 4;
    const entries = this.#cs / this.#entryBytes;
    const frag = active && this.#emit;
    const cs = this.#cs;
    let nextContiguous = 0;
    for (let i = 0; i < entries; i++) {
      if (
        words[i * wpe] === 0 && words[i * wpe + 1] === 0 &&
        (wpe === 2 || (words[i * wpe + 2] === 0 && words[i * wpe + 3] === 0))
      ) {
        continue; // unallocated, nothing to check
      }
      // The common case in numbers: a standard entry of an allocated,
      // aligned data cluster, no reserved bit, below 2^53.
      const hi = view.getUint32(i * this.#entryBytes);
      const lo = view.getUint32(i * this.#entryBytes + 4);
      if (
        wpe === 2 && (hi & 0x7fe00000) === 0 && (lo & 0x1ff) === 0 &&
        ((hi & 0x001fffff) !== 0 || lo !== 0)
      ) {
        const offset = (hi & 0x001fffff) * 2 ** 32 + lo;
        if (offset % cs === 0) {
          if (frag) {
            this.#res.allocatedClusters++;
            if (nextContiguous && offset !== nextContiguous) {
              this.#res.fragmentedClusters++;
            }
            nextContiguous = offset + cs;
          }
          if (!this.#dataFile) this.#incCluster(offset);
          continue;
        }
      }
      let entry = view.getBigUint64(i * this.#entryBytes);
      const bitmap = this.#extended
        ? view.getBigUint64(i * this.#entryBytes + 8)
        : 0n;
      const type = this.#clusterType(entry);
      if (type !== "compressed" && (entry & L2_STD_RESERVED_MASK)) {
        this.#corruption(
          `ERROR found l2 entry with reserved bits set: ${x(entry)}`,
        );
      }
      switch (type) {
        case "compressed": {
          const shift = BigInt(62 - (this.#bits - 8));
          const offsetMask = (1n << shift) - 1n;
          if (entry & COPIED) {
            this.#corruption(
              `ERROR: coffset=0x${
                x(entry & offsetMask)
              }: copied flag must never be set for compressed clusters`,
            );
            entry &= ~COPIED;
          }
          if (this.#dataFile) {
            this.#corruption(
              `ERROR compressed cluster ${i} with data file, entry=0x${
                x(entry)
              }`,
            );
            break;
          }
          if (bitmap) {
            this.#corruption(
              `ERROR compressed cluster ${i} with non-zero subcluster allocation bitmap, entry=0x${
                x(entry)
              }`,
            );
            break;
          }
          const coffset = entry & offsetMask;
          const sectors = ((entry >> shift) &
            ((1n << BigInt(this.#bits - 8)) - 1n)) + 1n;
          this.#inc(coffset, sectors * 512n - (coffset & 511n));
          if (frag) {
            this.#res.allocatedClusters++;
            this.#res.compressedClusters++;
            this.#res.fragmentedClusters++;
          }
          break;
        }
        case "zero-alloc":
        case "normal": {
          const offset = entry & L2_OFFSET_MASK;
          if ((bitmap >> 32n) & bitmap) {
            this.#corruption(
              `ERROR offset=${
                x(offset)
              }: Allocated cluster has corrupted subcluster allocation bitmap`,
            );
          }
          if (offset % this.#csBig !== 0n) {
            const data = this.#extended
              ? (bitmap & 0xffffffffn) !== 0n
              : (entry & ZERO_FLAG) === 0n;
            if (!data && this.#fixErrors && this.#emit) {
              // Repaired: the entry becomes a plain zero cluster, and the
              // cluster is not counted.
              this.#say(
                `Repairing offset=${
                  x(offset)
                }: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
              );
              const fixed = new Uint8Array(8);
              new DataView(fixed.buffer).setBigUint64(
                0,
                this.#extended ? 0n : ZERO_FLAG,
              );
              await this.#store!.writeAt(
                l2Offset + i * this.#entryBytes,
                fixed,
              );
              this.#res.corruptionsFixed++;
              break;
            }
            this.#corruption(
              data
                ? `ERROR offset=${
                  x(offset)
                }: Data cluster is not properly aligned; L2 entry corrupted.`
                : `ERROR offset=${
                  x(offset)
                }: Preallocated cluster is not properly aligned; L2 entry corrupted.`,
            );
          }
          if (frag) {
            this.#res.allocatedClusters++;
            if (nextContiguous && Number(offset) !== nextContiguous) {
              this.#res.fragmentedClusters++;
            }
            nextContiguous = Number(offset) + cs;
          }
          if (!this.#dataFile) this.#inc(offset, this.#csBig);
          break;
        }
        case "zero-plain":
          break;
        case "unallocated":
          if (bitmap & 0xffffffffn) {
            this.#corruption(
              "ERROR: Unallocated cluster has non-zero subcluster allocation map",
            );
          }
          break;
      }
    }
  }

  /** `qcow2_get_cluster_type`. */
  #clusterType(
    entry: bigint,
  ): "compressed" | "zero-alloc" | "zero-plain" | "unallocated" | "normal" {
    if (entry & COMPRESSED) return "compressed";
    if ((entry & ZERO_FLAG) && !this.#extended) {
      return entry & L2_OFFSET_MASK ? "zero-alloc" : "zero-plain";
    }
    if (!(entry & L2_OFFSET_MASK)) {
      return this.#dataFile && (entry & COPIED) ? "normal" : "unallocated";
    }
    return "normal";
  }

  /** `qcow2_check_bitmaps_refcounts`, with the directory as QEMU reads it. */
  async #bitmaps(): Promise<void> {
    const ext = this.#h.extensions.bitmaps;
    if (!ext || !this.#h.features.bitmaps) return;
    this.#inc(BigInt(ext.directoryOffset), BigInt(ext.directorySize));
    const dir = await this.#read(ext.directoryOffset, ext.directorySize);
    const view = new DataView(dir.buffer);
    const tables: { offset: bigint; size: number }[] = [];
    for (let at = 0; at + 24 <= dir.length && tables.length < ext.count;) {
      const offset = view.getBigUint64(at);
      const size = view.getUint32(at + 8);
      const nameSize = view.getUint16(at + 18);
      const extra = view.getUint32(at + 20);
      tables.push({ offset, size });
      at += Math.ceil((24 + extra + nameSize) / 8) * 8;
    }
    for (const table of tables) {
      this.#inc(table.offset, BigInt(table.size) * 8n);
      if (
        table.offset % this.#csBig !== 0n ||
        table.offset > BigInt(Number.MAX_SAFE_INTEGER)
      ) {
        if (this.#emit) this.#res.corruptions++;
        break;
      }
      const bytes = await this.#read(Number(table.offset), table.size * 8);
      const tv = new DataView(bytes.buffer);
      for (let i = 0; i < table.size; i++) {
        const entry = tv.getBigUint64(i * 8);
        if (!validBitmapTableEntry(entry, this.#csBig)) {
          if (this.#emit) this.#res.corruptions++;
          continue;
        }
        const offset = entry & BITMAP_TABLE_OFFSET_MASK;
        if (offset !== 0n) this.#inc(offset, this.#csBig);
      }
    }
  }

  /** The refcount table, read once (what lies past the file reads as 0). */
  async #table(): Promise<BigUint64Array> {
    if (this.#reftable) return this.#reftable;
    const entries = this.#h.refcountTableClusters * this.#cs / 8;
    const bytes = await this.#read(this.#h.refcountTableOffset, entries * 8);
    const view = new DataView(bytes.buffer);
    const table = new BigUint64Array(entries);
    for (let i = 0; i < entries; i++) table[i] = view.getBigUint64(i * 8);
    return this.#reftable = table;
  }

  /**
   * `check_refblocks`: each refcount block counts once and must be
   * referenced once. `counts` keeps, across windows, what each block's own
   * count was when it was reached; with `print` the blocks' messages are
   * said (from `counts` when `stored`).
   */
  async #refblocks(
    counts: Map<number, number>,
    print: boolean,
    stored = false,
  ): Promise<void> {
    const table = await this.#table();

    for (let i = 0; i < table.length; i++) {
      const raw = table[i];
      if (raw & REFCOUNT_TABLE_RESERVED_MASK) {
        if (print) {
          this.#corruption(
            `ERROR refcount table entry ${i} has reserved bits set`,
          );
          this.#rebuild = true;
        }
        continue;
      }
      const offset = raw & REFCOUNT_TABLE_OFFSET_MASK;
      if (offset % this.#csBig !== 0n) {
        if (print) {
          this.#corruption(
            `ERROR refcount block ${i} is not cluster aligned; refcount table entry corrupted`,
          );
          this.#rebuild = true;
        }
        continue;
      }
      const cluster = Number(offset >> BigInt(this.#bits));
      if (cluster >= this.#nbClusters + (this.#grown ? 1 : 0)) {
        if (print && this.#fixErrors && this.#store?.truncate) {
          // check_refblocks with BDRV_FIX_ERRORS: the file grows to hold
          // the block, which is then counted (zeros: refcount 0 on disk).
          this.#say(`Repairing refcount block ${i} is outside image`);
          await this.#store.truncate(Number(offset) + this.#cs);
          this.#fileLength = Math.ceil(this.#source.size / 512) * 512;
          this.#nbClusters = Math.ceil(this.#fileLength / this.#cs);
          if (this.#counts.length < this.#nbClusters + 1) {
            const counts = new Uint32Array(this.#nbClusters + 1);
            counts.set(this.#counts);
            this.#counts = counts;
          }
          this.#res.corruptionsFixed++;
          this.#inc(offset, this.#csBig);
          counts.set(i, 1);
          continue;
        }
        if (print) {
          this.#corruption(`ERROR refcount block ${i} is outside image`);
        }
        continue;
      }
      if (offset === 0n) continue;
      let count: number | undefined;
      if (!stored) {
        this.#inc(offset, this.#csBig);
        const k = cluster - this.#from;
        if (k >= 0 && k < this.#counts.length) {
          count = this.#counts[k];
          counts.set(i, count);
        }
      } else {
        count = counts.get(i);
      }
      if (print && count !== undefined && count !== 1) {
        this.#corruption(`ERROR refcount block ${i} refcount=${count}`);
        this.#rebuild = true;
      }
    }
  }

  /**
   * `compare_refcounts` over the window; with `leaks`/`errors`, refcounts
   * too high/too low (but not 0) are set to the count on disk.
   */
  async #compare(leaks = false, errors = false): Promise<void> {
    const table = await this.#table();
    const nb = this.#nbClusters + (this.#grown ? 1 : 0);
    const end = Math.min(nb, this.#from + this.#counts.length);
    const order = this.#h.refcountOrder;
    const per = this.#cs * 8 / this.#h.refcountBits;
    for (let i = this.#from; i < end;) {
      const index = Math.floor(i / per);
      const blockEnd = Math.min(end, (index + 1) * per);
      let block: Uint8Array | undefined;
      let blockOffset = 0;
      let dirty = false;
      const freed: number[] = [];
      let failed = false;
      if (index < table.length) {
        const offset = table[index] & REFCOUNT_TABLE_OFFSET_MASK;
        if (offset !== 0n) {
          if ((offset & (this.#csBig - 1n)) !== 0n) {
            failed = true;
            this.#unalignedRefblock(offset, index);
          } else {
            blockOffset = Number(offset);
            block = await this.#read(blockOffset, this.#cs);
          }
        }
      }
      for (; i < blockEnd; i++) {
        if (failed) {
          this.#say(
            `Can't get refcount for cluster ${i}: Input/output error`,
          );
          this.#res.checkErrors++;
          continue;
        }
        const onDisk = block ? refcountAt(block, order, i % per) : 0;
        const rebuilt = this.#counts[i - this.#from];
        if (onDisk > 0 || rebuilt > 0) {
          this.#res.imageEndOffset = (i + 1) * this.#cs;
        }
        if (onDisk !== rebuilt) {
          let fixed: "corruptionsFixed" | "leaksFixed" | undefined;
          if (onDisk === 0) this.#rebuild = true;
          else if (onDisk > rebuilt && leaks) fixed = "leaksFixed";
          else if (onDisk < rebuilt && errors) fixed = "corruptionsFixed";
          this.#say(
            `${
              fixed ? "Repairing" : onDisk < rebuilt ? "ERROR" : "Leaked"
            } cluster ${i} refcount=${onDisk} reference=${rebuilt}`,
          );
          if (fixed && block) {
            setRefcountAt(block, order, i % per, rebuilt);
            dirty = true;
            this.#res[fixed]++;
            if (rebuilt === 0) freed.push(i);
            continue;
          }
          if (onDisk < rebuilt) this.#res.corruptions++;
          else this.#res.leaks++;
        }
      }
      if (dirty) {
        await this.#store!.writeAt(blockOffset, block!);
        this.#blockIndex = -1;
        for (const cluster of freed.splice(0)) await this.#discard(cluster);
      }
    }
    if (this.#res.imageEndOffset === 0) this.#res.imageEndOffset = this.#cs;
  }

  /** `#onDisk` when the refcount block is the one last read, else null. */
  #onDiskCached(cluster: number): number | null {
    const per = this.#perBlock;
    if (Math.floor(cluster / per) !== this.#blockIndex || !this.#block) {
      return null;
    }
    return refcountAt(this.#block, this.#h.refcountOrder, cluster % per);
  }

  /** The on-disk refcount of `cluster`, or undefined where QEMU fails. */
  async #onDisk(cluster: number): Promise<number | undefined> {
    const table = await this.#table();
    const per = this.#cs * 8 / this.#h.refcountBits;
    const index = Math.floor(cluster / per);
    if (index >= table.length) return 0;
    const offset = table[index] & REFCOUNT_TABLE_OFFSET_MASK;
    if (offset === 0n) return 0;
    if (offset % this.#csBig !== 0n) {
      this.#unalignedRefblock(offset, index);
      return undefined;
    }
    if (this.#blockIndex !== index) {
      this.#block = await this.#read(Number(offset), this.#cs);
      this.#blockIndex = index;
    }
    return refcountAt(this.#block!, this.#h.refcountOrder, cluster % per);
  }
  #blockIndex = -1;
  #block: Uint8Array | undefined;
  get #perBlock(): number {
    return this.#cs * 8 / this.#h.refcountBits;
  }
  #signaled = false;

  /** `qcow2_signal_corruption` of `qcow2_get_refcount`, said once. */
  #unalignedRefblock(offset: bigint, index: number): void {
    if (this.#signaled) return;
    this.#signaled = true;
    const what = `Refblock offset ${hx(offset)} unaligned (reftable index: ${
      hx(index)
    })`;
    if (this.#store) {
      // Fatal on a writable image: marked corrupt, and nothing more is
      // written to it.
      this.#say(
        `qcow2: Marking image as corrupt: ${what}; further corruption events will be suppressed`,
      );
      this.#disabled = true;
      this.#pendingCorrupt = true;
    } else {
      this.#say(
        `qcow2: Image is corrupt: ${what}; further non-fatal corruption events will be suppressed`,
      );
    }
  }
  /** A fatal corruption disabled the image (QEMU's `bs->drv = NULL`). */
  #disabled = false;
  /** The corrupt bit is to be set in the header. */
  #pendingCorrupt = false;

  /** Sets or clears incompatible feature bits in the header. */
  async #setFeatures(set: bigint, clear: bigint): Promise<void> {
    const bits = this.#h.incompatibleFeatures;
    const next = (bits | set) & ~clear;
    if (this.#h.version < 3 || next === bits) return;
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, next);
    await this.#store!.writeAt(72, bytes);
    this.#h = { ...this.#h, incompatibleFeatures: next };
  }

  /**
   * What QEMU does to a freed cluster (`QCOW2_DISCARD_ALWAYS`): the host
   * file forgets it; here its bytes are zeroed, inside the file.
   */
  async #discard(cluster: number): Promise<void> {
    const from = cluster * this.#cs;
    const to = Math.min(from + this.#cs, this.#source.size);
    if (from < to) await this.#store!.writeAt(from, new Uint8Array(to - from));
  }

  /**
   * `check_oflag_copied`: COPIED iff the refcount is 1, in the active
   * tables; set right where `repair`.
   */
  async #checkCopied(repair = false): Promise<void> {
    const h = this.#h;
    const word = repair ? "Repairing" : "ERROR";
    const l1 = await this.#read(h.l1TableOffset, h.l1Size * 8);
    const view = new DataView(l1.buffer);
    for (let i = 0; i < h.l1Size; i++) {
      const l1Entry = view.getBigUint64(i * 8);
      const l2Offset = l1Entry & L1_OFFSET_MASK;
      if (!l2Offset) continue;
      const refcount = await this.#onDisk(
        Number(l2Offset >> BigInt(this.#bits)),
      );
      // QEMU skips the table when the refcount cannot be read.
      if (refcount === undefined) continue;
      if ((refcount === 1) !== ((l1Entry & COPIED) !== 0n)) {
        this.#say(
          `${word} OFLAG_COPIED L2 cluster: l1_index=${i} l1_entry=${
            x(l1Entry)
          } refcount=${refcount}`,
        );
        if (repair) {
          const fixed = refcount === 1 ? l1Entry | COPIED : l1Entry & ~COPIED;
          view.setBigUint64(i * 8, fixed);
          await this.#store!.writeAt(
            h.l1TableOffset + i * 8,
            l1.subarray(i * 8, i * 8 + 8),
          );
          this.#res.corruptionsFixed++;
        } else this.#res.corruptions++;
      }
      const table = await this.#read(Number(l2Offset), this.#cs);
      const tv = new DataView(table.buffer);
      const entries = this.#cs / this.#entryBytes;
      let dirty = 0;
      const per = this.#perBlock;
      const order = this.#h.refcountOrder;
      for (let j = 0; j < entries; j++) {
        const hi = tv.getUint32(j * this.#entryBytes);
        const lo = tv.getUint32(j * this.#entryBytes + 4);
        if (hi === 0 && lo === 0) continue;
        // The common case in numbers: a standard data cluster, COPIED as
        // its refcount (in the refcount block last read) says.
        if (
          !this.#dataFile && (hi & 0x40e00000) === 0 && (lo & 1) === 0 &&
          ((hi & 0x001fffff) !== 0 || (lo & 0xfffffe00) !== 0) && this.#block
        ) {
          const cluster = Math.floor(
            ((hi & 0x001fffff) * 2 ** 32 + ((lo & 0xfffffe00) >>> 0)) /
              this.#cs,
          );
          if (Math.floor(cluster / per) === this.#blockIndex) {
            const count = refcountAt(this.#block, order, cluster % per);
            if ((count === 1) === ((hi & 0x80000000) !== 0)) continue;
          }
        }
        const entry = tv.getBigUint64(j * this.#entryBytes);
        const type = this.#clusterType(entry);
        if (type !== "normal" && type !== "zero-alloc") continue;
        const data = Number((entry & L2_OFFSET_MASK) >> BigInt(this.#bits));
        const count = this.#dataFile
          ? 1
          : this.#onDiskCached(data) ?? await this.#onDisk(data);
        if (count === undefined) continue;
        if ((count === 1) !== ((entry & COPIED) !== 0n)) {
          this.#say(
            `${word} OFLAG_COPIED data cluster: l2_entry=${
              x(entry)
            } refcount=${count}`,
          );
          if (repair) {
            tv.setBigUint64(
              j * this.#entryBytes,
              count === 1 ? entry | COPIED : entry & ~COPIED,
            );
            dirty++;
          } else this.#res.corruptions++;
        }
      }
      if (dirty > 0) {
        await this.#store!.writeAt(Number(l2Offset), table);
        this.#res.corruptionsFixed += dirty;
      }
    }
  }

  /** `qcow2_read_snapshots`: the entries' L1 tables, and the table's size. */
  async #readSnapshotTable(): Promise<void> {
    const h = this.#h;
    let offset = h.snapshotsOffset;
    const decoder = new TextDecoder();
    for (let i = 0; i < h.nbSnapshots; i++) {
      offset = Math.ceil(offset / 8) * 8;
      const fixed = await this.#read(offset, 40);
      const v = new DataView(fixed.buffer);
      const idSize = v.getUint16(12);
      const nameSize = v.getUint16(14);
      const extra = v.getUint32(36);
      const extraBytes = await this.#read(offset + 40, extra);
      offset += 40 + extra;
      const id = await this.#read(offset, idSize);
      offset += idSize;
      const name = await this.#read(offset, nameSize);
      offset += nameSize;
      this.#snapshots.push({
        id: decoder.decode(id),
        name: decoder.decode(name),
        l1TableOffset: v.getBigUint64(0),
        l1Size: v.getUint32(8),
        extraSize: extra,
        fixed,
        extra: extraBytes,
        idBytes: id,
        nameBytes: name,
      });
    }
    this.#snapshotsSize = offset - h.snapshotsOffset;
  }
}
