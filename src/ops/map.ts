/**
 * Where an image's guest bytes live, layer by layer, as `qemu-img map`
 * reports it (QEMU 7.2: `img_map`, `get_block_status`, `entry_mergeable` in
 * qemu-img.c, over `bdrv_co_block_status` in block/io.c).
 *
 * Only metadata is read. What QEMU learns from the host file's holes
 * (SEEK_DATA/SEEK_HOLE, and the allocated size for qcow2's metadata
 * preallocation test) comes from an injected {@linkcode HostAllocation};
 * without one, every byte of a file counts as data.
 *
 * @module
 */

import type { DiskImage, Extent } from "../disk.ts";
import type { ByteSource } from "../io/source.ts";
import { QcowImage } from "../qcow/image.ts";
import { Qcow2Image } from "../qcow2/image.ts";
import { refcountAt, RefcountReader } from "../qcow2/refcount_reader.ts";
import { RawImage } from "../raw.ts";

/**
 * One run of guest bytes as `qemu-img map --output=json` prints it.
 *
 * @example The first entries of an image's map
 * ```ts
 * import { mapImage, type MapEntry, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const entries: MapEntry[] = [];
 * for await (const e of mapImage(await openImage(bytes), { length: 3 * 65536 })) {
 *   const { file: _, ...printed } = e;
 *   entries.push(printed);
 * }
 * assertEquals(entries, [
 *   { start: 0, length: 65536, depth: 0, present: true, zero: false, data: true, offset: 0x50000 },
 *   { start: 65536, length: 65536, depth: 0, present: true, zero: true, data: false, offset: 0x60000 },
 *   { start: 131072, length: 65536, depth: 0, present: false, zero: true, data: false },
 * ]);
 * ```
 */
export interface MapEntry {
  /** Guest offset of the first byte. */
  start: number;
  /** Length in bytes. */
  length: number;
  /**
   * The layer that answers for these bytes: 0 the image, 1 its backing file,
   * and so on; for bytes no layer allocates, the deepest layer looked at.
   */
  depth: number;
  /** Whether a layer allocates the bytes (QEMU's BDRV_BLOCK_ALLOCATED). */
  present: boolean;
  /** Whether the bytes are known to read as zeros. */
  zero: boolean;
  /** Whether the bytes are stored as data (QEMU's BDRV_BLOCK_DATA). */
  data: boolean;
  /** Where the bytes lie in `file`, when they lie as they are in one file. */
  offset?: number;
  /** The file `offset` refers to (not printed in JSON). */
  file?: ByteSource;
}

/**
 * A run of a host file from a position: data, or a hole.
 *
 * @example
 * ```ts
 * import type { HostRun } from "@qcow2/qcow2";
 *
 * const run: HostRun = { data: false, end: 65536 }; // a hole up to 64 KiB
 * ```
 */
export interface HostRun {
  /** Whether the run holds data (else it is a hole). */
  data: boolean;
  /** The file offset after the run's last byte. */
  end: number;
}

/**
 * What the host's file system tells about a file: how much it occupies, and
 * where its holes are (what QEMU learns with `fstat` and
 * `lseek(SEEK_DATA/SEEK_HOLE)`).
 *
 * @example A file without holes
 * ```ts
 * import type { HostAllocation } from "@qcow2/qcow2";
 *
 * const size = 1 << 20;
 * const allocation: HostAllocation = {
 *   allocatedBytes: size,
 *   at: (position) => position < size ? { data: true, end: size } : null,
 * };
 * ```
 */
export interface HostAllocation {
  /** Bytes the file occupies on its storage (`st_blocks` × 512). */
  allocatedBytes: number;
  /**
   * The run at `position`: `null` in the hole that ends the file (or past
   * the end), `undefined` when the file system cannot tell (read as data).
   */
  at(position: number): HostRun | null | undefined;
}

/**
 * Options of {@linkcode mapImage}.
 *
 * @example The map of 64 KiB from 1 MiB on
 * ```ts
 * import type { MapOptions } from "@qcow2/qcow2";
 *
 * const options: MapOptions = { start: 1 << 20, length: 65536 };
 * ```
 */
export interface MapOptions {
  /** First guest byte (qemu-img's `--start-offset`; default 0). */
  start?: number;
  /** At most this many bytes (qemu-img's `--max-length`; default all). */
  length?: number;
  /** What the file system tells about each file of the chain, if anything. */
  allocation?: (file: ByteSource) => HostAllocation | undefined;
}

/**
 * The virtual size `qemu-img map` walks: a raw image's file size rounded up
 * to 512 bytes (QEMU counts sectors), else the image's size.
 *
 * @param image The image.
 * @returns The size in bytes.
 *
 * @example
 * ```ts
 * import { mapSize, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * assertEquals(mapSize(await openImage(bytes)), 4 * 1024 * 1024);
 * ```
 */
export function mapSize(image: DiskImage): number {
  return image instanceof RawImage ? roundUp512(image.size) : image.size;
}

/**
 * The map of `image` through its backing chain, entries merged as
 * `qemu-img map` merges them (equal flags and depth, and file offsets that
 * continue each other). Nothing is yielded for an empty range.
 *
 * @param image An image opened with `openImage` (qcow2, qcow) or raw; any
 * other {@linkcode DiskImage} is described by its extents.
 * @param options The range, and the host files' allocation.
 * @returns The entries, in guest order.
 * @throws {RangeError} If `start` or `length` is negative or not an integer.
 * @throws {Qcow2Error} For an invalid L1 or L2 entry, as reading does.
 *
 * @example Where a chain's bytes come from
 * ```ts
 * import { bytesSource, mapImage, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../../tests/fixtures/layouts/", import.meta.url);
 * const image = await openImage(await Deno.readFile(new URL("chain_top.qcow2", dir)), {
 *   openFile: async (path) => bytesSource(await Deno.readFile(new URL(path, dir))),
 * });
 * const depths = new Set<number>();
 * for await (const e of mapImage(image)) depths.add(e.depth);
 * assertEquals([...depths].sort(), [0, 1, 2]);
 * ```
 */
export async function* mapImage(
  image: DiskImage,
  options: MapOptions = {},
): AsyncGenerator<MapEntry> {
  const start = options.start ?? 0;
  const size = mapSize(image);
  const given: [string, number | undefined][] = [
    ["start", start],
    ["length", options.length],
  ];
  for (const [name, value] of given) {
    if (value !== undefined && (!Number.isSafeInteger(value) || value < 0)) {
      throw new RangeError(`map ${name} must be a byte count, not ${value}`);
    }
  }
  const end = options.length === undefined
    ? size
    : Math.min(size, start + options.length);
  if (start >= end) return;
  const walk = new Walk(options.allocation ?? (() => undefined));
  let curr: MapEntry | undefined;
  for await (const next of walk.layer(image, start, end, 0)) {
    if (next.length === 0) continue;
    if (curr && mergeable(curr, next)) {
      curr.length += next.length;
      continue;
    }
    if (curr) yield curr;
    curr = { ...next };
  }
  if (curr) yield curr;
}

/** qemu-img's `entry_mergeable`: `next` continues `curr`. */
function mergeable(curr: MapEntry, next: MapEntry): boolean {
  if (
    curr.zero !== next.zero || curr.data !== next.data ||
    curr.present !== next.present || curr.depth !== next.depth ||
    (curr.offset === undefined) !== (next.offset === undefined) ||
    curr.file !== next.file
  ) {
    return false;
  }
  return curr.offset === undefined ||
    curr.offset + curr.length === next.offset;
}

function roundUp512(n: number): number {
  return Math.ceil(n / 512) * 512;
}

/** One walk down a chain, with what it learnt about each layer. */
class Walk {
  #allocation: (file: ByteSource) => HostAllocation | undefined;
  #preallocated = new Map<DiskImage, Promise<boolean>>();

  constructor(allocation: (file: ByteSource) => HostAllocation | undefined) {
    this.#allocation = allocation;
  }

  /** Fine-grained entries of `[start, end)` of `image`, at `depth`. */
  async *layer(
    image: DiskImage,
    start: number,
    end: number,
    depth: number,
  ): AsyncGenerator<MapEntry> {
    if (image instanceof RawImage) {
      yield* this.#raw(image.source, start, end, depth);
      return;
    }
    if (!(image instanceof Qcow2Image || image instanceof QcowImage)) {
      for await (const e of image.extents(start, end)) {
        yield fromExtent(e, depth);
      }
      return;
    }
    const file = image instanceof Qcow2Image
      ? image.dataFile ?? image.source
      : image.source;
    const recurse = image instanceof Qcow2Image &&
      await this.#metadataPreallocated(image);
    for await (const e of image.ownExtents(start, end)) {
      const { start: s, length } = e;
      switch (e.kind) {
        case "data":
          // QEMU gives no offset for encrypted clusters (qcow2_co_block_status).
          if (image.encryption) {
            yield entry(s, length, depth, true, false, true);
          } else if (recurse) yield* this.#host(file, e, depth);
          else {
            yield entry(
              s,
              length,
              depth,
              true,
              false,
              true,
              e.hostOffset,
              file,
            );
          }
          break;
        case "compressed":
          yield entry(s, length, depth, true, false, true);
          break;
        case "zero":
          yield entry(s, length, depth, true, true, false, e.hostOffset, file);
          break;
        case "unallocated":
          yield* this.#below(image.backing, e, depth, file);
          break;
      }
    }
  }

  /**
   * Bytes a layer does not allocate: the backing file's answer where it
   * has bytes, zeros past its end (or without one), at this depth.
   */
  async *#below(
    backing: DiskImage | undefined,
    e: Extent,
    depth: number,
    file: ByteSource,
  ): AsyncGenerator<MapEntry> {
    const end = e.start + e.length;
    const inside = backing ? Math.min(end, mapSize(backing)) : e.start;
    if (backing && e.start < inside) {
      yield* this.layer(backing, e.start, inside, depth + 1);
    }
    const from = Math.max(e.start, inside);
    if (from < end) {
      const offset = e.hostOffset === undefined
        ? undefined
        : e.hostOffset + (from - e.start);
      yield entry(from, end - from, depth, false, true, false, offset, file);
    }
  }

  /** A raw layer: data and holes of its file, zeros past its end. */
  async *#raw(
    file: ByteSource,
    start: number,
    end: number,
    depth: number,
  ): AsyncGenerator<MapEntry> {
    const allocation = this.#allocation(file);
    for (let pos = start; pos < end;) {
      const run = pos < file.size ? allocation?.at(pos) : null;
      const to = run ? Math.min(end, run.end) : end;
      const data = run === undefined || (run !== null && run.data);
      yield entry(pos, to - pos, depth, true, !data, data, pos, file);
      pos = to;
    }
  }

  /**
   * A data run of a qcow2 layer whose metadata is preallocated: QEMU asks
   * the file too (BDRV_BLOCK_RECURSE), so holes and bytes past its end
   * read as zeros while still counted as data.
   */
  async *#host(
    file: ByteSource,
    e: Extent,
    depth: number,
  ): AsyncGenerator<MapEntry> {
    const allocation = this.#allocation(file);
    const host = e.hostOffset!;
    const end = e.start + e.length;
    for (let g = e.start; g < end;) {
      const at = host + (g - e.start);
      const run = at < file.size ? allocation?.at(at) : null;
      const to = run ? Math.min(end, g + (run.end - at)) : end;
      const zero = run === null || (run !== undefined && !run.data);
      yield entry(g, to - g, depth, true, zero, true, at, file);
      g = to;
    }
  }

  /**
   * QEMU's `qcow2_detect_metadata_preallocation`: more clusters have a
   * refcount than the file occupies on disk (with a margin), which makes
   * QEMU ask the file about each data cluster. Unknown without the file's
   * allocated size; false where a refcount cannot be read.
   */
  #metadataPreallocated(image: Qcow2Image): Promise<boolean> {
    let known = this.#preallocated.get(image);
    if (!known) {
      known = detect(image, this.#allocation(image.source)).catch(() => false);
      this.#preallocated.set(image, known);
    }
    return known;
  }
}

async function detect(
  image: Qcow2Image,
  allocation: HostAllocation | undefined,
): Promise<boolean> {
  if (!allocation) return false;
  const cs = image.clusterSize;
  const realClusters = Math.floor(allocation.allocatedBytes / cs);
  const threshold = Math.max(
    Math.floor(realClusters * 10 / 9),
    realClusters + 2,
  );
  const endCluster = Math.ceil(roundUp512(image.source.size) / cs);
  const refcounts = new RefcountReader(image.source, image.header);
  const per = refcounts.entriesPerBlock;
  const order = image.header.refcountOrder;
  let count = 0;
  for (let b = 0; b * per < endCluster && count < threshold; b++) {
    const block = await refcounts.block(b);
    if (!block) continue;
    const last = Math.min(per, endCluster - b * per);
    for (let i = 0; i < last && count < threshold; i++) {
      if (refcountAt(block, order, i) !== 0) count++;
    }
  }
  return count >= threshold;
}

function entry(
  start: number,
  length: number,
  depth: number,
  present: boolean,
  zero: boolean,
  data: boolean,
  offset?: number,
  file?: ByteSource,
): MapEntry {
  const e: MapEntry = { start, length, depth, present, zero, data };
  if (offset !== undefined) {
    e.offset = offset;
    e.file = file;
  }
  return e;
}

/** An entry for an extent of a disk this walk knows nothing else of. */
function fromExtent(e: Extent, depth: number): MapEntry {
  const data = e.kind === "data" || e.kind === "compressed";
  return entry(
    e.start,
    e.length,
    depth + e.depth,
    e.kind !== "unallocated",
    !data,
    data,
    e.kind === "data" ? e.hostOffset : undefined,
  );
}
