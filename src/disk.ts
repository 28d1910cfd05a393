/**
 * The guest view every image format gives: a virtual disk of `size` bytes,
 * described as extents and read at any offset. `convert` knows only this.
 *
 * @module
 */

/**
 * What a run of guest bytes is backed by.
 *
 * @example How much of a compressed image is compressed
 * ```ts
 * import { type ExtentKind, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../tests/fixtures/zlib.qcow2", import.meta.url));
 * const image = await openImage(bytes);
 * const bytesOf: Record<ExtentKind, number> = { data: 0, zero: 0, unallocated: 0, compressed: 0 };
 * for await (const extent of image.extents()) bytesOf[extent.kind] += extent.length;
 * assertEquals(bytesOf.compressed, 9 * 65536);
 * assertEquals(bytesOf.data, 65536); // the random cluster: it did not compress
 * assertEquals(bytesOf.unallocated, image.size - 10 * 65536);
 * ```
 */
export type ExtentKind = "data" | "zero" | "unallocated" | "compressed";

/**
 * A run of guest bytes that share one kind. `data` runs are contiguous in
 * their file too; each `compressed` run lies inside one cluster.
 * `unallocated` runs read as zeros: no layer of the chain holds them.
 *
 * @example The first extents of an image
 * ```ts
 * import { type Extent, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const image = await openImage(bytes);
 * const extents: Extent[] = [];
 * for await (const extent of image.extents(0, 3 * 65536)) extents.push(extent);
 * assertEquals(extents, [
 *   { start: 0, length: 65536, kind: "data", depth: 0, hostOffset: 0x50000 },
 *   { start: 65536, length: 65536, kind: "zero", depth: 0, hostOffset: 0x60000 },
 *   { start: 131072, length: 65536, kind: "unallocated", depth: 0 },
 * ]);
 * ```
 */
export interface Extent {
  /** Guest offset of the first byte. */
  start: number;
  /** Length in bytes. */
  length: number;
  /** What backs these bytes: file data, zeros, compressed data, or nothing. */
  kind: ExtentKind;
  /**
   * For `data`: the offset of `start` in the file that holds it (the image,
   * its external data file, or a backing file at `depth`). For
   * `compressed`: the file offset of the compressed stream. For `zero`: the
   * host cluster a zero cluster keeps allocated (QEMU's ZERO_ALLOC), if any.
   * For `unallocated`, from `ownExtents` only: the host cluster of
   * unallocated subclusters in an allocated extended-L2 cluster.
   */
  hostOffset?: number;
  /** For `compressed`: how many bytes of the file the compressed cluster may span. */
  compressedLength?: number;
  /** Which layer of the backing chain holds the bytes: 0 is the image itself. */
  depth: number;
}

/**
 * A virtual disk: what every image format offers to readers and `convert`.
 *
 * @example Converting a disk of your own
 * ```ts
 * import { convert, type DiskImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const data = new Uint8Array(1024 * 1024);
 * data.fill(0xaa, 0, 4096);
 * const disk: DiskImage = {
 *   size: data.length,
 *   async *extents(start = 0, end = data.length) {
 *     yield { start, length: end - start, kind: "data", depth: 0 };
 *   },
 *   read(position, buffer) {
 *     buffer.set(data.subarray(position, position + buffer.length));
 *     return Promise.resolve();
 *   },
 *   close() {},
 * };
 * const summary = await convert(disk, new WritableStream());
 * assertEquals(summary.virtualSize, 1024 * 1024);
 * assertEquals(summary.bytesWritten, 4096); // all-zero blocks count as holes
 * ```
 */
export interface DiskImage {
  /** Virtual disk size in bytes. */
  readonly size: number;
  /**
   * The extents covering guest bytes `[start, end)` in order, through the
   * whole backing chain.
   */
  extents(start?: number, end?: number): AsyncGenerator<Extent>;
  /** Fills `buffer` with the guest bytes at `position`. */
  read(position: number, buffer: Uint8Array): Promise<void>;
  /** Closes the files this image opened itself (backing and data files). */
  close(): void;
}

/** Throws a `RangeError` unless `[position, position + length)` lies in the disk. */
export function checkRange(
  position: number,
  length: number,
  size: number,
): void {
  if (
    !Number.isSafeInteger(position) || !Number.isSafeInteger(length) ||
    position < 0 || length < 0 || position + length > size
  ) {
    throw new RangeError(
      `Cannot read guest bytes ${position}..${
        position + length
      }: the virtual disk has ${size} bytes`,
    );
  }
}

/**
 * Reads `[position, position + buffer.length)` of `backing` into `buffer`,
 * with zeros past the end of `backing` (or everywhere, without one).
 */
export async function readBacking(
  backing: DiskImage | undefined,
  position: number,
  buffer: Uint8Array,
): Promise<void> {
  const inside = backing
    ? Math.max(0, Math.min(buffer.length, backing.size - position))
    : 0;
  if (inside > 0) await backing!.read(position, buffer.subarray(0, inside));
  buffer.fill(0, inside);
}

/**
 * The extents of `[start, end)` of `backing`, one layer down, with an
 * `unallocated` run for what lies past its end.
 */
export async function* backingExtents(
  backing: DiskImage | undefined,
  start: number,
  end: number,
): AsyncGenerator<Extent> {
  const inside = backing ? Math.min(end, backing.size) : start;
  if (backing && start < inside) {
    for await (const e of backing.extents(start, inside)) {
      yield { ...e, depth: e.depth + 1 };
    }
  }
  const from = Math.max(start, inside);
  if (from < end) {
    yield { start: from, length: end - from, kind: "unallocated", depth: 0 };
  }
}

/**
 * A layer's own extents with each `unallocated` run described by the layers
 * below it: the extents of the whole chain.
 */
export async function* throughBacking(
  own: AsyncGenerator<Extent>,
  backing: DiskImage | undefined,
): AsyncGenerator<Extent> {
  for await (const e of own) {
    if (e.kind === "unallocated") {
      yield* backingExtents(backing, e.start, e.start + e.length);
    } else yield e;
  }
}
