/**
 * The guest view every image format gives: a virtual disk of `size` bytes,
 * described as extents and read at any offset. `convert` knows only this.
 *
 * @module
 */

/** What a run of guest bytes is backed by. */
export type ExtentKind = "data" | "zero" | "unallocated" | "compressed";

/**
 * A run of guest bytes that share one kind. `data` runs are contiguous in
 * their file too; each `compressed` run lies inside one cluster.
 * `unallocated` runs read as zeros: no layer of the chain holds them.
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
   * `compressed`: the file offset of the compressed stream.
   */
  hostOffset?: number;
  /** For `compressed`: how many bytes of the file the compressed cluster may span. */
  compressedLength?: number;
  /** Which layer of the backing chain holds the bytes: 0 is the image itself. */
  depth: number;
}

/** A virtual disk: what every image format offers to readers and `convert`. */
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
