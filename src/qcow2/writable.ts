/**
 * A qcow2 image open for writing: guest writes, zero writes, discards and
 * flushes, with the semantics of QEMU's qcow2 driver (block/qcow2.c,
 * qcow2-cluster.c, qcow2-refcount.c) and its crash-safe order of metadata
 * updates.
 *
 * Every operation runs alone, in call order, through one queue. Metadata is
 * written through at once, in this order, so that a process killed at any
 * moment leaves refcounts that are never lower than the references (leaks
 * at worst, as QEMU promises):
 * 1. refcount increments of new clusters (and new refcount blocks or a
 *    relocated refcount table, with the header pointed at it);
 * 2. guest data, with the untouched parts of its clusters copied (COW);
 * 3. the L2 entries (a new L2 table first, then the L1 entry naming it);
 * 4. refcount decrements of the clusters no longer referenced.
 *
 * @module
 */

import type { ImageEncryption } from "../crypto/encryption.ts";
import { type Codecs, webCodecs } from "../codecs/codecs.ts";
import { readCompressedRuns } from "./cluster_reads.ts";
import {
  checkRange,
  type DiskImage,
  type Extent,
  readBacking,
  throughBacking,
} from "../disk.ts";
import type { ExtentRuns } from "../extent_runs.ts";
import { type L2Walk, readExtents, walkL2Tables } from "./walk.ts";
import { hex, Qcow2Error } from "../errors.ts";
import type { ByteStore } from "../io/store.ts";
import type { Qcow2Header } from "./header.ts";
import type { Snapshot } from "./snapshots.ts";
import { Allocator, refcountUnderflow } from "./allocator.ts";
import { HEADER, INCOMPATIBLE } from "./layout.ts";
import { Refcounts } from "./refcounts.ts";
import { snapshotTableBytes } from "./repair.ts";
import {
  decodeL1,
  decodeL2,
  encodeL1,
  encodeL2,
  type Mapping,
} from "./l2_entry.ts";

const INCOMPATIBLE_FEATURES_AT = HEADER.incompatibleFeatures.offset;
const DIRTY = 1n << BigInt(INCOMPATIBLE.dirty.bit);
const CORRUPT = 1n << BigInt(INCOMPATIBLE.corrupt.bit);
/** Default bytes of L2 tables kept in memory. */
const DEFAULT_L2_CACHE_BYTES = 4 * 1024 * 1024;

/** What a {@linkcode WritableQcow2Image} is built from; see `openImage`. */
export interface WritableParts {
  /** The parsed header (its feature bits as on disk now). */
  header: Qcow2Header;
  /** The image file, open for writing. */
  store: ByteStore;
  /** The external data file, open for writing, if the image has one. */
  dataStore?: ByteStore;
  /** The snapshot table. */
  snapshots: readonly Snapshot[];
  /** What unallocated clusters read from; zeros without one. */
  backing?: DiskImage;
  /**
   * Wraps the file data clusters are read from and written to (the image,
   * or its external data file), by host offset: the seam where an
   * encrypting store goes (LUKS encrypts by host sector). Metadata never
   * goes through it.
   */
  wrapData?: (data: ByteStore) => ByteStore;
  /** Decompressors (for copy-on-write of compressed clusters). */
  codecs?: Codecs;
  /**
   * The unlocked LUKS encryption: data is decrypted when read and
   * encrypted when written, whole subclusters at a time.
   */
  encryption?: ImageEncryption;
  /** Bytes of L2 tables to keep cached (default 4 MiB). */
  l2CacheBytes?: number;
  /** Closes what was opened for this image (backing and data files, the image file). */
  close?: () => void | Promise<void>;
}

/** Bytes of data a write group holds before it is written. */
const GROUP_BYTES = 32 * 1024 * 1024;

/** A guest write waiting in the queue. */
interface WriteRequest {
  position: number;
  bytes: Uint8Array;
  resolve: () => void;
  reject: (e: unknown) => void;
}

/** Writes planned together: their clusters, data and changed L2 entries. */
interface WriteGroup {
  touched: Set<number>;
  pieces: Piece[];
  pieceBytes: number;
  tables: Map<number, { table: { bytes: Uint8Array }; lo: number; hi: number }>;
  olds: Mapping[];
}

function newGroup(): WriteGroup {
  return {
    touched: new Set(),
    pieces: [],
    pieceBytes: 0,
    tables: new Map(),
    olds: [],
  };
}

/** One write into a guest cluster, planned. */
interface Piece {
  host: number;
  bytes: Uint8Array;
  external: boolean;
}

/**
 * A qcow2 image open read-write. Obtain one with
 * `openImage(input, { writable: true })`.
 *
 * @example Writing to an image in memory, then reading it back
 * ```ts
 * import { memoryStore, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * const store = memoryStore(bytes);
 * const image = await openImage(store, { writable: true });
 * await image.write(1000, new Uint8Array([1, 2, 3]));
 * await image.writeZeroes(0, 512);
 * const back = new Uint8Array(4);
 * await image.read(1000, back);
 * assertEquals(back, new Uint8Array([1, 2, 3, 0]));
 * await image.close();
 * ```
 */
export class WritableQcow2Image implements DiskImage {
  /** The format, for telling opened images apart. */
  readonly format = "qcow2" as const;
  /** Always true: this image can be written. */
  readonly writable = true as const;
  /** The header as opened. */
  readonly header: Qcow2Header;
  /** Virtual disk size in bytes. */
  readonly size: number;
  /** Cluster size in bytes. */
  readonly clusterSize: number;
  /** The internal snapshots. */
  readonly snapshots: readonly Snapshot[];
  /** The next layer of the backing chain, if any. */
  readonly backing?: DiskImage;
  readonly #store: ByteStore;
  readonly #data: ByteStore;
  readonly #wrapped: boolean;
  readonly #external: boolean;
  readonly #raw: boolean;
  readonly #codecs: Codecs;
  /** The unlocked encryption of a LUKS image. */
  readonly encryption?: ImageEncryption;
  readonly #cs: number;
  readonly #bits: number;
  readonly #extended: boolean;
  readonly #entryBytes: number;
  readonly #l2Entries: number;
  readonly #subclusters: number;
  readonly #all: number;
  readonly #version: number;
  readonly #lazy: boolean;
  readonly #l1Offset: number;
  readonly #l1: Uint8Array;
  readonly #l1View: DataView;
  readonly #l2 = new Map<number, { bytes: Uint8Array; view: DataView }>();
  readonly #l2Capacity: number;
  /** Clusters holding metadata, and what. */
  readonly #meta = new Map<number, string>();
  #refcounts!: Refcounts;
  #allocator!: Allocator;
  #incompatible: bigint;
  #dirtySet = false;
  #broken?: Qcow2Error;
  #closed = false;
  #tail: Promise<unknown> = Promise.resolve();
  /** Writes queued together, not yet started. */
  #batch?: WriteRequest[];
  /** L2 tables changed in memory by the group being planned, by offset. */
  readonly #dirtyTables = new Map<
    number,
    { bytes: Uint8Array; view: DataView }
  >();
  #close?: () => void | Promise<void>;
  readonly #walk: L2Walk;

  private constructor(parts: WritableParts, l1: Uint8Array) {
    const { header } = parts;
    this.header = header;
    this.size = Math.floor(header.size / 512) * 512;
    this.clusterSize = this.#cs = header.clusterSize;
    this.#bits = header.clusterBits;
    this.snapshots = parts.snapshots;
    this.backing = parts.backing;
    this.#store = parts.store;
    this.#external = parts.dataStore !== undefined;
    this.#raw = this.#external && header.features.rawExternalData;
    const data = parts.dataStore ?? parts.store;
    this.#data = parts.wrapData ? parts.wrapData(data) : data;
    this.#wrapped = parts.wrapData !== undefined;
    this.#codecs = parts.codecs ?? webCodecs;
    this.encryption = parts.encryption;
    this.#extended = header.features.extendedL2;
    this.#entryBytes = this.#extended ? 16 : 8;
    this.#l2Entries = this.#cs / this.#entryBytes;
    this.#subclusters = this.#extended ? 32 : 1;
    this.#all = this.#extended ? 0xffffffff : 1;
    this.#version = header.version;
    this.#lazy = header.features.lazyRefcounts;
    this.#l1Offset = header.l1TableOffset;
    this.#l1 = l1;
    this.#l1View = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
    this.#l2Capacity = Math.max(
      2,
      Math.floor((parts.l2CacheBytes ?? DEFAULT_L2_CACHE_BYTES) / this.#cs),
    );
    this.#incompatible = header.incompatibleFeatures;
    this.#close = parts.close;
    this.#walk = {
      size: this.size,
      clusterSize: this.#cs,
      l2Entries: this.#l2Entries,
      addSpan: (runs, l1Index, span) => this.#addSpan(runs, l1Index, span),
    };
  }

  /**
   * Opens the parts for writing: reads the L1 and refcount tables and maps
   * where metadata lies.
   *
   * @param parts The image and what it needs.
   * @returns The image.
   * @throws {Qcow2Error} `CORRUPT` if the metadata is inconsistent.
   */
  static async open(parts: WritableParts): Promise<WritableQcow2Image> {
    const { header, store } = parts;
    const l1 = new Uint8Array(header.l1Size * 8);
    const n = await store.readAt(header.l1TableOffset, l1);
    l1.fill(0, n);
    const image = new WritableQcow2Image(parts, l1);
    await image.#init();
    return image;
  }

  async #init(): Promise<void> {
    const header = this.header;
    const cs = this.#cs;
    this.#refcounts = await Refcounts.load(this.#store, {
      clusterBits: header.clusterBits,
      refcountOrder: header.refcountOrder,
      tableOffset: header.refcountTableOffset,
      tableClusters: header.refcountTableClusters,
    }, {
      writeTableLocation: (offset, clusters) =>
        this.#writeTableLocation(offset, clusters),
      taken: (cluster, what) => this.#meta.set(cluster, what),
    });
    this.#allocator = new Allocator(this.#refcounts);
    const mark = (offset: number, bytes: number, what: string) => {
      for (let c = 0; c < Math.max(1, Math.ceil(bytes / cs)); c++) {
        this.#meta.set(offset / cs + c, what);
      }
    };
    mark(0, cs, "header");
    if (header.l1Size > 0) {
      mark(header.l1TableOffset, header.l1Size * 8, "active L1 table");
    }
    mark(
      header.refcountTableOffset,
      header.refcountTableClusters * cs,
      "refcount table",
    );
    this.#refcounts.blockOffsets.forEach((offset) => {
      if (offset !== 0) this.#meta.set(offset / cs, "refcount block");
    });
    if (header.nbSnapshots > 0) {
      for (const s of this.snapshots) {
        if (s.l1Size > 0) {
          mark(
            s.l1TableOffset,
            s.l1Size * 8,
            `L1 table of snapshot '${s.name}'`,
          );
        }
      }
      mark(
        header.snapshotsOffset,
        await snapshotTableBytes(this.#store, header),
        "snapshot table",
      );
    }
    for (let i = 0; i < header.l1Size; i++) {
      const e = decodeL1(this.#l1View, i, cs);
      if (typeof e === "string") continue; // reported when used
      if (e.offset !== 0) this.#meta.set(e.offset / cs, "active L2 table");
    }
  }

  /** Points the header at a new refcount table, durably. */
  async #writeTableLocation(offset: number, clusters: number): Promise<void> {
    const cs = this.#cs;
    const old = this.#refcounts;
    // refcount_table_offset and refcount_table_clusters, in one write.
    const at = HEADER.refcountTableOffset.offset;
    const bytes = new Uint8Array(HEADER.refcountTableClusters.offset + 4 - at);
    const view = new DataView(bytes.buffer);
    view.setBigUint64(0, BigInt(offset));
    view.setUint32(HEADER.refcountTableClusters.offset - at, clusters);
    await this.#store.writeAt(at, bytes);
    await this.#store.flush?.();
    if (old) {
      for (let c = 0; c < old.tableClusters; c++) {
        this.#meta.delete(old.tableOffset / cs + c);
      }
    }
  }

  // ---- the queue ----------------------------------------------------------

  /** Runs `op` after every operation called before it. */
  #enqueue<T>(op: () => Promise<T>): Promise<T> {
    this.#batch = undefined; // later writes queue after this operation
    const run = this.#tail.then(() => {
      if (this.#closed) {
        throw new TypeError("Cannot use qcow2 image: it is closed");
      }
      if (this.#broken) throw this.#broken;
      return op();
    });
    this.#tail = run.catch(() => {});
    return run;
  }

  // ---- reading ------------------------------------------------------------

  /**
   * Fills `buffer` with the guest bytes at `position`, as every write made
   * before this call left them.
   *
   * @param position Guest offset.
   * @param buffer Where the bytes go.
   * @throws {RangeError} If the range runs past the virtual size.
   * @throws {Qcow2Error} If the image is corrupt there.
   */
  read(position: number, buffer: Uint8Array): Promise<void> {
    checkRange(position, buffer.length, this.size);
    return this.#enqueue(() => this.#read(position, buffer));
  }

  async #read(position: number, buffer: Uint8Array): Promise<void> {
    const extents = await this.#ownExtents(position, position + buffer.length);
    // Every read settles before the queue moves on: see src/jobs.ts.
    await readExtents(extents, position, buffer, {
      readData: (e, into) => this.#readHost(this.#data, e.hostOffset!, into),
      readCompressed: (compressed) =>
        readCompressedRuns(
          this.#store,
          compressed,
          this.#cs,
          this.#codecs,
          this.header.compressionType,
          "qcow2",
        ),
      backing: this.backing,
    });
  }

  async #readHost(
    file: ByteStore,
    host: number,
    into: Uint8Array,
  ): Promise<void> {
    const encryption = this.encryption;
    if (encryption) {
      // Whole sectors, decrypted by their host offsets (LUKS).
      const lead = host % 512;
      const length = Math.ceil((lead + into.length) / 512) * 512;
      const sectors = lead === 0 && length === into.length
        ? into
        : new Uint8Array(length);
      const at = host - lead;
      const n = at >= file.size ? 0 : await file.readAt(at, sectors);
      sectors.fill(0, n);
      await encryption.decrypt(at, sectors);
      if (sectors !== into) {
        into.set(sectors.subarray(lead, lead + into.length));
      }
      return;
    }
    const n = host >= file.size ? 0 : await file.readAt(host, into);
    into.fill(0, n);
  }

  /**
   * The extents of guest bytes `[start, end)` through the backing chain,
   * as every write made before this call left them.
   *
   * @param start First guest byte (default 0).
   * @param end Guest byte after the last (default the virtual size).
   * @returns The extents in order.
   */
  async *extents(start = 0, end: number = this.size): AsyncGenerator<Extent> {
    yield* throughBacking(this.ownExtents(start, end), this.backing);
  }

  /**
   * The extents of this layer alone (`unallocated` where it falls through).
   *
   * @param start First guest byte (default 0).
   * @param end Guest byte after the last (default the virtual size).
   * @returns The extents in order, at depth 0.
   */
  async *ownExtents(
    start = 0,
    end: number = this.size,
  ): AsyncGenerator<Extent> {
    checkRange(start, end - start, this.size);
    const span = this.#cs * this.#l2Entries;
    for (let from = start; from < end;) {
      const to = Math.min(end, (Math.floor(from / span) + 1) * span);
      yield* await this.#enqueue(() => this.#ownExtents(from, to));
      from = to;
    }
  }

  /** The extents of `[start, end)` of this layer, read now (in a queue slot). */
  async #ownExtents(start: number, end: number): Promise<Extent[]> {
    const out: Extent[] = [];
    for await (const batch of walkL2Tables(this.#walk, start, end)) {
      out.push(...batch);
    }
    return out;
  }

  /** Adds the entries `[first, last)` of L1 entry `l1Index`'s L2 table. */
  async #addSpan(
    runs: ExtentRuns,
    l1Index: number,
    { spanStart, first, last }: {
      spanStart: number;
      first: number;
      last: number;
    },
  ): Promise<boolean> {
    const l2 = await this.#l2Table(l1Index);
    if (!l2) return false;
    const cs = this.#cs;
    for (let i = first; i < last; i++) {
      const g = spanStart + i * cs;
      const m = await this.#mapping(l2, i, g);
      if (m.compressed) {
        runs.addCompressed(g, g + cs, m.host, m.compressedLength);
        continue;
      }
      if (m.alloc === this.#all) {
        runs.add("data", g, g + cs, this.#hostOf(m, g));
      } else if (m.zero === this.#all) runs.add("zero", g, g + cs);
      else if (m.alloc === 0 && m.zero === 0) {
        runs.add("unallocated", g, g + cs);
      } else {
        const sc = cs / 32;
        for (let j = 0; j < 32; j++) {
          const from = g + j * sc;
          if (m.alloc & (1 << j)) {
            runs.add("data", from, from + sc, this.#hostOf(m, g) + j * sc);
          } else if (m.zero & (1 << j)) runs.add("zero", from, from + sc);
          else runs.add("unallocated", from, from + sc);
        }
      }
    }
    return true;
  }

  /** Where an allocated cluster's data lies (the guest offset with a raw data file). */
  #hostOf(m: Mapping, g: number): number {
    return this.#raw ? g : m.host;
  }

  // ---- L1 / L2 ------------------------------------------------------------

  /** The L2 table of L1 entry `l1Index`, or undefined when there is none. */
  async #l2Table(
    l1Index: number,
  ): Promise<
    | { offset: number; copied: boolean; bytes: Uint8Array; view: DataView }
    | undefined
  > {
    if (l1Index * 8 >= this.#l1.length) return undefined;
    const e = decodeL1(this.#l1View, l1Index, this.#cs);
    if (typeof e === "string") {
      throw await this.#corrupt(`${e} (L1 index ${l1Index})`);
    }
    if (e.offset === 0) return undefined;
    return { ...e, ...(await this.#loadL2(e.offset)) };
  }

  async #loadL2(
    offset: number,
  ): Promise<{ bytes: Uint8Array; view: DataView }> {
    let table = this.#l2.get(offset);
    if (table) {
      this.#l2.delete(offset);
      this.#l2.set(offset, table);
      return table;
    }
    if (offset + this.#cs > this.#store.size) {
      throw await this.#corrupt(
        `L2 table at ${hex(offset)} runs past the end of the file`,
      );
    }
    const bytes = new Uint8Array(this.#cs);
    await this.#store.readAt(offset, bytes);
    table = { bytes, view: new DataView(bytes.buffer) };
    this.#cache(offset, table);
    return table;
  }

  #cache(offset: number, table: { bytes: Uint8Array; view: DataView }): void {
    this.#l2.set(offset, table);
    while (this.#l2.size > this.#l2Capacity) {
      this.#l2.delete(this.#l2.keys().next().value!);
    }
  }

  /** Entry `i` of `l2`, for guest offset `g`; corruption if it is invalid. */
  async #mapping(
    l2: { offset: number; view: DataView },
    i: number,
    g: number,
  ): Promise<Mapping> {
    const m = decodeL2(
      l2.view,
      i,
      this.#extended,
      this.#bits,
      this.#external,
      this.#version,
    );
    if (typeof m === "string") {
      throw await this.#corrupt(
        `${m} (L2 table at ${hex(l2.offset)}, index ${i}, guest offset ${
          hex(g)
        })`,
      );
    }
    if (
      !this.#external && !m.compressed && m.host !== 0 &&
      this.#meta.has(m.host / this.#cs)
    ) {
      throw await this.#corrupt(
        `cluster at guest offset ${hex(g)} lies on the image's metadata (${
          this.#meta.get(m.host / this.#cs)
        } at ${hex(m.host)})`,
      );
    }
    return m;
  }

  /**
   * The L2 table of `l1Index` ready to be changed: made (zero-filled) when
   * missing, copied when shared with a snapshot (its L1 entry lacks
   * COPIED), as l2_allocate does: the new table's refcount, then the table,
   * then the L1 entry, then the old table's refcount.
   */
  async #l2ForWrite(
    l1Index: number,
  ): Promise<{ offset: number; bytes: Uint8Array; view: DataView }> {
    const current = await this.#l2Table(l1Index);
    if (current?.copied) return current;
    const cs = this.#cs;
    const cluster = await this.#allocate();
    await this.#refcounts.writeDirty();
    const offset = cluster * cs;
    const bytes = current ? current.bytes.slice() : new Uint8Array(cs);
    this.#meta.set(cluster, "active L2 table");
    await this.#store.writeAt(offset, bytes);
    encodeL1(this.#l1View, l1Index, offset);
    await this.#store.writeAt(
      this.#l1Offset + l1Index * 8,
      this.#l1.subarray(l1Index * 8, l1Index * 8 + 8),
    );
    const table = { bytes, view: new DataView(bytes.buffer) };
    this.#cache(offset, table);
    if (current) {
      await this.#release(current.offset / cs);
      await this.#refcounts.writeDirty();
    }
    return { offset, ...table };
  }

  /** Allocates a host cluster (refcount 1, in memory). */
  #allocate(): Promise<number> {
    return this.#allocator.allocate();
  }

  /** Drops a reference to a host cluster; corruption if it would underflow. */
  async #release(cluster: number): Promise<void> {
    try {
      await this.#allocator.release(cluster);
    } catch (e) {
      if (e instanceof Qcow2Error && e.code === "CORRUPT") {
        throw await this.#corrupt(refcountUnderflow(cluster));
      }
      throw e;
    }
    if ((await this.#refcounts.get(cluster)) === 0) this.#meta.delete(cluster);
  }

  /** Drops the references an old mapping held (after its L2 entry changed). */
  async #releaseMapping(m: Mapping): Promise<void> {
    if (this.#external) return;
    const cs = this.#cs;
    if (m.compressed) {
      const first = Math.floor(m.host / cs);
      const last = Math.floor((m.host + m.compressedLength - 1) / cs);
      for (let c = first; c <= last; c++) await this.#release(c);
    } else if (m.host !== 0) await this.#release(m.host / cs);
  }

  // ---- header bits --------------------------------------------------------

  async #writeIncompatible(): Promise<void> {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, this.#incompatible);
    await this.#store.writeAt(INCOMPATIBLE_FEATURES_AT, bytes);
    await this.#store.flush?.();
  }

  /** With lazy refcounts, sets the dirty bit (durably) before the first change. */
  async #markDirty(): Promise<void> {
    if (!this.#lazy || this.#dirtySet || this.#version < 3) return;
    this.#incompatible |= DIRTY;
    await this.#writeIncompatible();
    this.#dirtySet = true;
  }

  /**
   * Marks the image corrupt (header bit 1, as qcow2_signal_corruption) and
   * returns the error that every later operation fails with.
   */
  async #corrupt(why: string): Promise<Qcow2Error> {
    const error = new Qcow2Error(
      "CORRUPT",
      `Cannot write qcow2 image: ${why}; the image is marked corrupt (run 'qemu-img check -r all' to repair it)`,
    );
    this.#broken = error;
    if (this.#version >= 3) {
      try {
        this.#incompatible |= CORRUPT;
        await this.#writeIncompatible();
      } catch {
        // The error says what matters.
      }
    }
    return error;
  }

  // ---- writing ------------------------------------------------------------

  /**
   * Writes `bytes` at guest offset `position`. Clusters are allocated as
   * needed; the untouched parts of a partly written cluster (subcluster,
   * with extended L2 entries) are copied from what it held: the backing
   * file (zeros past its end), a compressed cluster, or a cluster shared
   * with a snapshot (one without the COPIED flag is never written in place).
   *
   * @param position Guest offset.
   * @param bytes The data (not kept once the promise resolves).
   * @throws {RangeError} If the range runs past the virtual size.
   * @throws {Qcow2Error} `CORRUPT` if the image is found corrupt (it is
   * then marked so and nothing more is written).
   */
  write(position: number, bytes: Uint8Array): Promise<void> {
    checkRange(position, bytes.length, this.size);
    return new Promise<void>((resolve, reject) => {
      const request: WriteRequest = { position, bytes, resolve, reject };
      if (this.#batch) {
        this.#batch.push(request);
        return;
      }
      const batch = [request];
      this.#enqueue(() => {
        if (this.#batch === batch) this.#batch = undefined;
        return this.#writeBatch(batch);
      }).catch((e) => {
        // Refused before it ran (closed, or corrupt): settle every request.
        for (const r of batch) r.reject(e);
      });
      this.#batch = batch;
    });
  }

  /**
   * Writes queued requests in call order, as few metadata writes as
   * possible: requests are planned into a group (clusters allocated, L2
   * entries changed in memory) until one touches a cluster the group
   * already has; then the group is written (refcounts, data, L2 entries,
   * releases) and its requests resolved.
   */
  async #writeBatch(batch: WriteRequest[]): Promise<void> {
    let group = newGroup();
    let settled = 0;
    try {
      if (this.#closed) {
        throw new TypeError("Cannot use qcow2 image: it is closed");
      }
      if (this.#broken) throw this.#broken;
      await this.#markDirty();
      for (let k = 0; k < batch.length; k++) {
        const r = batch[k];
        if (
          this.#conflicts(group, r.position, r.bytes.length) ||
          group.pieceBytes > GROUP_BYTES
        ) {
          await this.#commit(group);
          for (; settled < k; settled++) batch[settled].resolve();
          group = newGroup();
        }
        await this.#planWrite(group, r.position, r.bytes);
      }
      await this.#commit(group);
      for (; settled < batch.length; settled++) batch[settled].resolve();
    } catch (e) {
      this.#dirtyTables.clear();
      for (; settled < batch.length; settled++) batch[settled].reject(e);
    }
  }

  /** Whether guest bytes `[position, +length)` touch a cluster of `group`. */
  #conflicts(group: WriteGroup, position: number, length: number): boolean {
    if (length === 0) return false;
    const cs = this.#cs;
    for (
      let c = Math.floor(position / cs);
      c <= Math.floor((position + length - 1) / cs);
      c++
    ) {
      if (group.touched.has(c)) return true;
    }
    return false;
  }

  /** Writes guest bytes at once (as a group of one). */
  async #write(position: number, bytes: Uint8Array): Promise<void> {
    if (bytes.length === 0) return;
    await this.#markDirty();
    const group = newGroup();
    try {
      await this.#planWrite(group, position, bytes);
      await this.#commit(group);
    } finally {
      this.#dirtyTables.clear();
    }
  }

  /** Plans guest bytes into `group`, table by table. */
  async #planWrite(
    group: WriteGroup,
    position: number,
    bytes: Uint8Array,
  ): Promise<void> {
    const cs = this.#cs;
    const span = cs * this.#l2Entries;
    const end = position + bytes.length;
    for (let from = position; from < end;) {
      const l1Index = Math.floor(from / span);
      const to = Math.min(end, (l1Index + 1) * span);
      const part = bytes.subarray(from - position, to - position);
      const l2 = await this.#l2ForWrite(l1Index);
      this.#dirtyTables.set(l2.offset, l2);
      const base = l1Index * span;
      const first = Math.floor((from - base) / cs);
      const last = Math.floor((to - 1 - base) / cs);
      for (let i = first; i <= last; i++) {
        const g = base + i * cs;
        const a = Math.max(from, g) - g;
        const b = Math.min(to, g + cs) - g;
        const data = part.subarray(g + a - from, g + b - from);
        const m = await this.#mapping(l2, i, g);
        const plan = await this.#planCluster(m, g, a, b, data);
        for (const p of plan.pieces) {
          group.pieces.push(p);
          group.pieceBytes += p.bytes.length;
        }
        encodeL2(l2.view, i, this.#extended, this.#bits, plan.next);
        const range = group.tables.get(l2.offset);
        if (range) {
          range.lo = Math.min(range.lo, i);
          range.hi = Math.max(range.hi, i);
        } else group.tables.set(l2.offset, { table: l2, lo: i, hi: i });
        if (plan.old) group.olds.push(plan.old);
        group.touched.add(g / cs);
      }
      from = to;
    }
  }

  /**
   * Writes a planned group in crash-safe order: refcount increments, data,
   * L2 entries, then the releases of what the entries no longer name.
   */
  async #commit(group: WriteGroup): Promise<void> {
    await this.#refcounts.writeDirty();
    await this.#writePieces(group.pieces);
    const eb = this.#entryBytes;
    for (const [offset, { table, lo, hi }] of group.tables) {
      await this.#store.writeAt(
        offset + lo * eb,
        table.bytes.subarray(lo * eb, (hi + 1) * eb),
      );
    }
    this.#dirtyTables.clear();
    if (group.olds.length > 0) {
      for (const old of group.olds) await this.#releaseMapping(old);
      await this.#refcounts.writeDirty();
    }
  }

  /**
   * Plans the write of guest bytes `[a, b)` of the cluster at guest offset
   * `g`, now mapped by `m`: where the data goes (in place, or in a new
   * cluster with the rest copied), the new mapping, and the old one to
   * release.
   */
  async #planCluster(
    m: Mapping,
    g: number,
    a: number,
    b: number,
    data: Uint8Array,
  ): Promise<{ pieces: Piece[]; next: Mapping; old?: Mapping }> {
    const cs = this.#cs;
    const n = this.#subclusters;
    const sc = cs / n;
    const allocated = m.compressed || m.host !== 0 ||
      (this.#external && m.copied);
    const inPlace = !m.compressed && allocated && (m.copied || this.#external);
    let host: number;
    let fresh: boolean;
    if (inPlace) {
      host = this.#raw ? g : m.host;
      fresh = false;
    } else if (this.#external) {
      host = g; // QEMU maps a data file's clusters at their guest offsets
      fresh = !this.#wrapped && host >= this.#data.size;
    } else {
      const c = await this.#allocate();
      host = c * cs;
      // A fresh cluster past the end of the file reads as zeros, so its
      // untouched part need not be written (not so through a wrapping
      // store, such as an encrypting one: a hole does not decrypt to zeros).
      fresh = !this.#wrapped && host >= this.#store.size;
      if (this.#meta.has(c)) {
        throw await this.#corrupt(
          `Preventing invalid write on metadata (${this.#meta.get(c)} at ${
            hex(host)
          })`,
        );
      }
    }
    const sa = Math.floor(a / sc);
    const sb = Math.ceil(b / sc);
    // Which subclusters are written: the touched ones, and when moving to
    // a new cluster every one holding data.
    const hadData = m.compressed ? this.#all : m.alloc;
    let write = 0;
    for (let j = sa; j < sb; j++) write |= 1 << j;
    if (!inPlace) write = (write | hadData) >>> 0;
    if (n === 1) write = 1;
    let lo = n;
    let hi = -1;
    for (let j = 0; j < n; j++) {
      if (write & (1 << j)) {
        lo = Math.min(lo, j);
        hi = j;
      }
    }
    // The byte range to write, trimmed where nothing needs writing: in
    // place over data already there; on a fresh cluster over zeros.
    let from = lo * sc;
    let to = (hi + 1) * sc;
    const kindAt = (j: number) =>
      m.compressed
        ? "compressed"
        : m.alloc & (1 << j)
        ? "data"
        : m.zero & (1 << j)
        ? "zero"
        : "backing";
    const skippable = async (j: number, x: number, y: number) => {
      const kind = kindAt(j);
      if (inPlace && kind === "data") return true;
      if (!fresh) return false;
      if (kind === "zero") return true;
      if (kind === "backing") return await this.#backingIsZero(g + x, y - x);
      return false;
    };
    // Encrypted data is written whole subclusters at a time: what is not
    // written would not decrypt to what it held.
    if (!this.encryption) {
      if (from < a && await skippable(sa, from, a)) from = a;
      if (to > b && await skippable(sb - 1, b, to)) to = b;
    }
    let bytes: Uint8Array;
    if (from === a && to === b) {
      bytes = data;
    } else {
      bytes = new Uint8Array(to - from);
      let decompressed: Uint8Array | undefined;
      for (let j = Math.floor(from / sc); j * sc < to; j++) {
        if (!(write & (1 << j)) && n > 1) continue;
        const x = Math.max(from, j * sc);
        const y = Math.min(to, (j + 1) * sc);
        // The parts of [x, y) outside [a, b) need the old contents.
        for (const [p, q] of [[x, Math.min(y, a)], [Math.max(x, b), y]]) {
          if (p >= q) continue;
          const into = bytes.subarray(p - from, q - from);
          const kind = kindAt(j);
          if (kind === "data") {
            if (!inPlace) {
              await this.#readHost(this.#data, this.#hostOf(m, g) + p, into);
            } else await this.#readHost(this.#data, host + p, into);
          } else if (kind === "compressed") {
            decompressed ??= await this.#decompress(m, g);
            into.set(decompressed.subarray(p, q));
          } else if (kind === "backing") {
            await readBacking(this.backing, g + p, into);
          }
        }
      }
      bytes.set(data, a - from);
    }
    if (this.encryption && to > from) {
      if (bytes === data) bytes = data.slice();
      await this.encryption.encrypt(host + from, bytes);
    }
    const next: Mapping = {
      host: this.#raw ? (inPlace ? m.host : g) : host,
      copied: true,
      compressed: false,
      compressedLength: 0,
      alloc: n === 1 ? 1 : ((m.compressed ? 0 : m.alloc) | write) >>> 0,
      zero: n === 1 ? 0 : (m.zero & ~write) >>> 0,
    };
    if (this.#raw) next.host = g;
    if (m.compressed && n > 1) next.alloc = this.#all;
    return {
      pieces: to > from
        ? [{ host: host + from, bytes, external: this.#external }]
        : [],
      next,
      old: !inPlace && allocated && !this.#external ? m : undefined,
    };
  }

  /** Whether guest bytes `[g, g + length)` of the backing chain read as zeros. */
  async #backingIsZero(g: number, length: number): Promise<boolean> {
    if (!this.backing || g >= this.backing.size) return true;
    for await (
      const e of this.backing.extents(
        g,
        Math.min(g + length, this.backing.size),
      )
    ) {
      if (e.kind !== "zero" && e.kind !== "unallocated") return false;
    }
    return true;
  }

  /** The whole guest cluster a compressed mapping holds. */
  async #decompress(m: Mapping, g: number): Promise<Uint8Array> {
    const into = new Uint8Array(this.#cs);
    await readCompressedRuns(
      this.#store,
      [{
        extent: {
          start: g,
          length: this.#cs,
          kind: "compressed",
          hostOffset: m.host,
          compressedLength: m.compressedLength,
          depth: 0,
        },
        into,
      }],
      this.#cs,
      this.#codecs,
      this.header.compressionType,
      "qcow2",
    );
    return into;
  }

  /**
   * Writes the planned data, merging pieces that are contiguous in file and
   * memory; many at once where the store can.
   */
  async #writePieces(pieces: Piece[]): Promise<void> {
    const merged: { store: ByteStore; position: number; bytes: Uint8Array }[] =
      [];
    let i = 0;
    while (i < pieces.length) {
      const p = pieces[i];
      let bytes = p.bytes;
      let j = i + 1;
      while (
        j < pieces.length &&
        pieces[j].external === p.external &&
        pieces[j].host === p.host + bytes.length &&
        pieces[j].bytes.buffer === bytes.buffer &&
        pieces[j].bytes.byteOffset === bytes.byteOffset + bytes.length
      ) {
        bytes = new Uint8Array(
          bytes.buffer,
          bytes.byteOffset,
          bytes.length + pieces[j].bytes.length,
        );
        j++;
      }
      merged.push({
        store: this.#data,
        position: p.host,
        bytes,
      });
      i = j;
    }
    for (const store of new Set(merged.map((m) => m.store))) {
      const mine = merged.filter((m) => m.store === store);
      if (store.writeMany) await store.writeMany(mine);
      else for (const m of mine) await store.writeAt(m.position, m.bytes);
    }
  }

  /** Sets L2 entries and writes the span of the table they lie in. */
  async #writeEntries(
    l2: { offset: number; bytes: Uint8Array; view: DataView },
    updates: [number, Mapping][],
  ): Promise<void> {
    if (updates.length === 0) return;
    let lo = Infinity;
    let hi = -1;
    for (const [i, m] of updates) {
      encodeL2(l2.view, i, this.#extended, this.#bits, m);
      lo = Math.min(lo, i);
      hi = Math.max(hi, i);
    }
    const eb = this.#entryBytes;
    await this.#store.writeAt(
      l2.offset + lo * eb,
      l2.bytes.subarray(lo * eb, (hi + 1) * eb),
    );
  }

  // ---- zeroes and discard ---------------------------------------------------

  /**
   * Makes guest bytes `[position, position + length)` read as zeros. On
   * version 3 whole clusters (subclusters with extended L2 entries) become
   * zero clusters, keeping their host cluster, and compressed ones are
   * freed (zero_in_l2_slice); a partial one becomes a zero cluster only if
   * the rest of it already reads as zeros, else zeros are written. On
   * version 2 without a backing file zeroing is a discard; with one, zeros
   * are written.
   *
   * @param position Guest offset.
   * @param length Bytes to zero.
   * @throws {RangeError} If the range runs past the virtual size.
   * @throws {Qcow2Error} `CORRUPT` if the image is found corrupt.
   */
  writeZeroes(position: number, length: number): Promise<void> {
    checkRange(position, length, this.size);
    return this.#enqueue(() => this.#writeZeroes(position, length));
  }

  async #writeZeroes(position: number, length: number): Promise<void> {
    if (length === 0) return;
    await this.#markDirty();
    const unit = this.#cs / this.#subclusters;
    const end = position + length;
    const headEnd = Math.min(end, Math.ceil(position / unit) * unit);
    const tailStart = Math.max(headEnd, Math.floor(end / unit) * unit);
    for (const [x, y] of [[position, headEnd], [tailStart, end]]) {
      if (x < y) await this.#zeroPartial(x, y);
    }
    if (headEnd < tailStart) await this.#zeroAligned(headEnd, tailStart);
  }

  /** Zeroes `[x, y)` inside one subcluster (cluster): as the zero flag if possible. */
  async #zeroPartial(x: number, y: number): Promise<void> {
    const unit = this.#cs / this.#subclusters;
    const s = Math.floor(x / unit) * unit;
    const e = Math.min(s + unit, this.size);
    const rest = new Uint8Array(e - s);
    await this.#read(s, rest);
    rest.fill(0, x - s, y - s);
    const zero = rest.every((v) => v === 0);
    if (zero && e === s + unit) {
      const m = await this.#mappingAt(s);
      const j = Math.floor((s % this.#cs) / unit);
      const bit = this.#subclusters === 1 ? 1 : 1 << j;
      if (!m || (!m.compressed && !(m.alloc & bit))) {
        await this.#zeroAligned(s, s + unit);
        return;
      }
    }
    await this.#write(x, new Uint8Array(y - x));
  }

  /** The mapping of the cluster holding guest offset `g` (undefined: no L2 table). */
  async #mappingAt(g: number): Promise<Mapping | undefined> {
    const cs = this.#cs;
    const span = cs * this.#l2Entries;
    const l2 = await this.#l2Table(Math.floor(g / span));
    if (!l2) return undefined;
    const i = Math.floor((g % span) / cs);
    return this.#mapping(l2, i, g - (g % cs));
  }

  /** Zeroes subcluster-aligned `[x, y)`. */
  async #zeroAligned(x: number, y: number): Promise<void> {
    if (this.#version < 3) {
      if (!this.backing) return this.#discardClusters(x, y, false);
      // Version 2 has no zero flag: zeros are written.
      for (let at = x; at < y;) {
        const n = Math.min(y - at, 4 * 1024 * 1024);
        await this.#write(at, new Uint8Array(n));
        at += n;
      }
      return;
    }
    const cs = this.#cs;
    const span = cs * this.#l2Entries;
    const unit = cs / this.#subclusters;
    for (let from = x; from < y;) {
      const l1Index = Math.floor(from / span);
      const to = Math.min(y, (l1Index + 1) * span);
      const l2 = await this.#l2ForWrite(l1Index);
      const base = l1Index * span;
      const updates: [number, Mapping][] = [];
      const olds: Mapping[] = [];
      const compressedPartial: [number, number][] = [];
      for (let i = Math.floor((from - base) / cs); base + i * cs < to; i++) {
        const g = base + i * cs;
        const a = Math.max(from, g) - g;
        const b = Math.min(to, g + cs) - g;
        const m = await this.#mapping(l2, i, g);
        if (a === 0 && b === cs) {
          // zero_in_l2_slice: compressed clusters are freed; others keep
          // their host cluster and get the zero flag (all zero bits).
          const next: Mapping = m.compressed
            ? {
              host: 0,
              copied: false,
              compressed: false,
              compressedLength: 0,
              alloc: 0,
              zero: this.#all,
            }
            : { ...m, alloc: 0, zero: this.#all };
          if (m.compressed) olds.push(m);
          if (!sameMapping(m, next)) updates.push([i, next]);
          continue;
        }
        // zero_l2_subclusters: not on a compressed cluster (zeros are
        // written instead).
        if (m.compressed) {
          compressedPartial.push([g + a, g + b]);
          continue;
        }
        let bits = 0;
        for (let j = a / unit; j < b / unit; j++) bits |= 1 << j;
        const next = {
          ...m,
          alloc: (m.alloc & ~bits) >>> 0,
          zero: (m.zero | bits) >>> 0,
        };
        if (!sameMapping(m, next)) updates.push([i, next]);
      }
      await this.#writeEntries(l2, updates);
      if (olds.length > 0) {
        for (const old of olds) await this.#releaseMapping(old);
        await this.#refcounts.writeDirty();
      }
      for (const [p, q] of compressedPartial) {
        await this.#write(p, new Uint8Array(q - p));
      }
      from = to;
    }
  }

  /**
   * Discards guest bytes: whole clusters only, as QEMU (a partial cluster
   * is left as it is, except the image's last one). A discarded cluster
   * reads as zeros on version 3 (zero flag); on version 2 it is
   * unallocated, and nothing is discarded over a backing file (it would
   * show through). Its host cluster is freed.
   *
   * @param position Guest offset.
   * @param length Bytes to discard.
   * @throws {RangeError} If the range runs past the virtual size.
   * @throws {Qcow2Error} `CORRUPT` if the image is found corrupt.
   */
  discard(position: number, length: number): Promise<void> {
    checkRange(position, length, this.size);
    return this.#enqueue(async () => {
      // qcow2_co_pdiscard: without the zero flag (version 2) a discarded
      // cluster would show the backing file's stale data, so nothing is done.
      if (length === 0 || (this.#version < 3 && this.backing)) return;
      await this.#markDirty();
      const cs = this.#cs;
      const end = position + length;
      const x = Math.ceil(position / cs) * cs;
      let y = Math.floor(end / cs) * cs;
      if (end === this.size && end % cs !== 0 && x <= y) y = end;
      if (x < y) await this.#discardClusters(x, y, false);
    });
  }

  /** discard_in_l2_slice over clusters `[x, y)` (y may be the image's end). */
  async #discardClusters(x: number, y: number, full: boolean): Promise<void> {
    const cs = this.#cs;
    const span = cs * this.#l2Entries;
    for (let from = x; from < y;) {
      const l1Index = Math.floor(from / span);
      const to = Math.min(y, (l1Index + 1) * span);
      const base = l1Index * span;
      const existing = await this.#l2Table(l1Index);
      if (!existing && (!this.backing || full || this.#version < 3)) {
        from = to;
        continue;
      }
      const l2 = await this.#l2ForWrite(l1Index);
      const updates: [number, Mapping][] = [];
      const olds: Mapping[] = [];
      for (let i = Math.floor((from - base) / cs); base + i * cs < to; i++) {
        const g = base + i * cs;
        const m = await this.#mapping(l2, i, g);
        const allocated = m.compressed || m.host !== 0 ||
          (this.#external && m.copied);
        let next = m;
        const none: Mapping = {
          host: 0,
          copied: false,
          compressed: false,
          compressedLength: 0,
          alloc: 0,
          zero: 0,
        };
        if (full) next = none;
        else if (this.backing || allocated) {
          next = this.#version >= 3 ? { ...none, zero: this.#all } : none;
        }
        if (sameMapping(m, next)) continue;
        updates.push([i, next]);
        if (allocated) olds.push(m);
      }
      await this.#writeEntries(l2, updates);
      if (olds.length > 0) {
        for (const old of olds) await this.#releaseMapping(old);
        await this.#refcounts.writeDirty();
      }
      from = to;
    }
  }

  // ---- flush and close ------------------------------------------------------

  /**
   * Makes every operation called before it durable: once it resolves, a
   * crash (even of the machine, if the store's flush reaches the disk)
   * loses none of them.
   */
  flush(): Promise<void> {
    return this.#enqueue(() => this.#flush());
  }

  async #flush(): Promise<void> {
    await this.#refcounts.writeDirty();
    if (this.#data !== this.#store) await this.#data.flush?.();
    await this.#store.flush?.();
  }

  /**
   * Flushes, clears the dirty bit this image set (lazy refcounts), and
   * closes the files it opened. Later calls fail.
   */
  close(): Promise<void> {
    this.#batch = undefined;
    const run = this.#tail.then(async () => {
      if (this.#closed) return;
      try {
        if (!this.#broken) {
          await this.#flush();
          if (this.#dirtySet) {
            this.#incompatible &= ~DIRTY;
            await this.#writeIncompatible();
            this.#dirtySet = false;
          }
        }
      } finally {
        this.#closed = true;
        const close = this.#close;
        this.#close = undefined;
        await close?.();
      }
    });
    this.#tail = run.catch(() => {});
    return run;
  }
}

function sameMapping(a: Mapping, b: Mapping): boolean {
  return a.host === b.host && a.copied === b.copied &&
    a.compressed === b.compressed && a.alloc === b.alloc && a.zero === b.zero;
}
