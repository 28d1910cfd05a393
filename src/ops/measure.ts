/**
 * `measure`: how big a new image would be, for a virtual size or for the
 * contents of an existing disk, as `qemu-img measure` computes it (QEMU 7.2
 * block/qcow2.c `qcow2_measure`, block/raw-format.c `raw_measure`).
 *
 * @module
 */

import type { DiskImage } from "../disk.ts";
import type { ByteSource } from "../io/source.ts";
import { type HostAllocation, mapImage, mapSize } from "./map.ts";
import {
  bitmapsSize,
  type BitmapToMeasure,
  luksPayloadSize,
  preallocSize,
} from "../qcow2/measure.ts";

/** Preallocation modes of a new image (qemu-img's `preallocation`). */
export type MeasurePreallocation = "off" | "metadata" | "falloc" | "full";

/**
 * What the new image would be. Every field is optional; the defaults are
 * qemu-img 7.2's for a qcow2 image.
 *
 * @example Options of a measure
 * ```ts
 * import { measure, type MeasureOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const options: MeasureOptions = { size: 1n << 30n, clusterSize: 2 * 1024 * 1024, extendedL2: true };
 * assertEquals((await measure(undefined, options)).fullyAllocated, 1084227584n);
 * ```
 */
export interface MeasureOptions {
  /** The new image's format: `"qcow2"` (the default) or `"raw"`. */
  format?: "qcow2" | "raw";
  /** The virtual size, when no image is measured (ignored otherwise). */
  size?: number | bigint;
  /** Cluster size in bytes: a power of two from 512 to 2 MiB (default 65536). */
  clusterSize?: number;
  /** `"1.1"` (version 3, the default) or `"0.10"` (version 2). */
  compat?: "0.10" | "1.1";
  /** Refcount width in bits: 1 to 64, a power of two (default 16; v2: only 16). */
  refcountBits?: number;
  /** Extended L2 entries (clusters of 16 KiB or more). */
  extendedL2?: boolean;
  /**
   * A LUKS-encrypted image (`encrypt.format=luks`): its header and key
   * slots come first, by cipher (default aes-256 in xts mode).
   */
  luks?: { cipherAlg?: string; cipherMode?: string };
  /** `full` and `falloc` count every data cluster as required. */
  preallocation?: MeasurePreallocation;
  /**
   * The new image has a backing file: nothing of the disk can be assumed
   * shared with it, so every cluster counts as required (as QEMU assumes).
   */
  backingFile?: string;
  /**
   * The persistent dirty bitmaps of the measured image, when it can hold
   * them (a qcow2 version 3 image; `readBitmaps` reads them): then a
   * version 3 measure reports `bitmaps`, even for none.
   */
  bitmaps?: readonly BitmapToMeasure[];
  /**
   * What the file system tells about each file of the chain (see
   * `mapImage`): QEMU counts the holes of a raw file, and of a qcow2 file
   * with preallocated metadata, as zeros, not data.
   */
  allocation?: (file: ByteSource) => HostAllocation | undefined;
  /**
   * The disk length to measure, when it is not the image's: qemu-img
   * measures a snapshot (`-l`) at the active state's length; what the
   * image does not reach counts as unallocated.
   */
  diskSize?: number;
  /** Stops the walk over the disk's extents. */
  signal?: AbortSignal;
}

/**
 * The sizes `qemu-img measure` prints.
 *
 * @example The sizes for a new 1 GiB image
 * ```ts
 * import { measure, type Measurement } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const sizes: Measurement = await measure(undefined, { size: 1n << 30n });
 * assertEquals(sizes, { required: 393216n, fullyAllocated: 1074135040n });
 * ```
 */
export interface Measurement {
  /** Bytes the new image needs for the data it would hold. */
  required: bigint;
  /** Bytes it takes with every cluster allocated. */
  fullyAllocated: bigint;
  /** Bytes the persistent dirty bitmaps need (reported when both images can hold them). */
  bitmaps?: bigint;
}

const MIN_CLUSTER_SIZE = 512;
const MAX_CLUSTER_SIZE = 2 * 1024 * 1024;
/** `QCOW_MAX_L1_SIZE`: 32 MiB of L1 entries. */
const MAX_L1_BYTES = 32n * 1024n * 1024n;

function isPowerOfTwo(n: number): boolean {
  return Number.isInteger(n) && n > 0 && (n & (n - 1)) === 0;
}

/**
 * Measures the image `qemu-img measure` would describe: for `image`, the
 * clusters its data needs in the new format; without one, an empty image of
 * `options.size`. The data of the disk is never read: only its block status
 * counts (as `mapImage` gives it), each cluster of the new image that any
 * allocated, non-zero byte falls in.
 *
 * @param image The disk to measure (through its backing chain), or
 * undefined to measure an empty image of `options.size` bytes.
 * @param options The new image's format and options.
 * @returns The required and fully allocated sizes, and the bitmaps' size
 * where qemu-img reports it.
 * @throws {RangeError} for options qemu-img refuses, with its words:
 * "Cluster size must be a power of two between 512 and 2048k", "Refcount
 * width must be a power of two and may not exceed 64 bits", "Different
 * refcount widths than 16 bits require compatibility level 1.1 or above
 * (use compat=1.1 or greater)", "Extended L2 entries are only supported
 * with cluster sizes of at least 16384 bytes", "The image size is too large
 * (try using a larger cluster size)".
 *
 * @example Measuring an image's contents
 * ```ts
 * import { measure, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const image = await openImage(bytes);
 * // qemu-img measure -O qcow2 v3_64k.qcow2 (a v3 input: bitmaps too)
 * const sizes = await measure(image, { bitmaps: [] });
 * assertEquals(sizes, { required: 393216n, fullyAllocated: 4521984n, bitmaps: 0n });
 * ```
 */
export async function measure(
  image: DiskImage | undefined,
  options: MeasureOptions = {},
): Promise<Measurement> {
  if (options.format === "raw") return await measureRaw(image, options);
  const extendedL2 = options.extendedL2 ?? false;
  const clusterSize = options.clusterSize ?? 65536;
  if (
    !isPowerOfTwo(clusterSize) || clusterSize < MIN_CLUSTER_SIZE ||
    clusterSize > MAX_CLUSTER_SIZE
  ) {
    throw new RangeError(
      "Cluster size must be a power of two between 512 and 2048k",
    );
  }
  if (extendedL2 && clusterSize < 16384) {
    throw new RangeError(
      "Extended L2 entries are only supported with cluster sizes of at least 16384 bytes",
    );
  }
  const version = options.compat === "0.10" ? 2 : 3;
  const refcountBits = options.refcountBits ?? 16;
  if (!isPowerOfTwo(refcountBits) || refcountBits > 64) {
    throw new RangeError(
      "Refcount width must be a power of two and may not exceed 64 bits",
    );
  }
  if (version < 3 && refcountBits !== 16) {
    throw new RangeError(
      "Different refcount widths than 16 bits require compatibility level 1.1 or above (use compat=1.1 or greater)",
    );
  }
  const cs = BigInt(clusterSize);
  const roundUp = (n: bigint) => (n + cs - 1n) / cs * cs;
  const luks = options.luks
    ? roundUp(
      BigInt(luksPayloadSize(options.luks.cipherAlg, options.luks.cipherMode)),
    )
    : 0n;
  let virtualSize = roundUp(BigInt(options.size ?? 0));
  const l2eSize = extendedL2 ? 16n : 8n;
  const l2Tables = (virtualSize / cs + cs / l2eSize - 1n) / (cs / l2eSize);
  if (l2Tables * 8n > MAX_L1_BYTES) {
    throw new RangeError(
      "The image size is too large (try using a larger cluster size)",
    );
  }
  let required = 0n;
  if (image) {
    virtualSize = roundUp(BigInt(options.diskSize ?? mapSize(image)));
    required = options.backingFile !== undefined
      ? virtualSize
      : BigInt(await dataClusters(image, clusterSize, options)) * cs;
  }
  if (options.preallocation === "full" || options.preallocation === "falloc") {
    required = virtualSize;
  }
  const fullyAllocated = luks + preallocSize(virtualSize, {
    clusterSize,
    refcountBits,
    extendedL2,
  });
  const result: Measurement = {
    required: fullyAllocated - virtualSize + required,
    fullyAllocated,
  };
  if (version >= 3 && image && options.bitmaps) {
    result.bitmaps = bitmapsSize(options.bitmaps, clusterSize);
  }
  return result;
}

/** `raw_measure`: the disk's length, or the size rounded up to 512 bytes. */
function measureRaw(
  image: DiskImage | undefined,
  options: MeasureOptions,
): Promise<Measurement> {
  const size = image
    ? BigInt(options.diskSize ?? mapSize(image))
    : (BigInt(options.size ?? 0) + 511n) / 512n * 512n;
  return Promise.resolve({ required: size, fullyAllocated: size });
}

/**
 * How many clusters of `clusterSize` bytes hold any allocated byte that is
 * not known to read as zeros (QEMU's block-status walk in `qcow2_measure`:
 * each such run counts from the start of its first cluster to the end of
 * its last).
 */
async function dataClusters(
  image: DiskImage,
  clusterSize: number,
  options: MeasureOptions,
): Promise<number> {
  let clusters = 0;
  let next = 0; // the first cluster not yet counted
  const length = Math.min(mapSize(image), options.diskSize ?? Infinity);
  const entries = mapImage(image, {
    length,
    allocation: options.allocation,
  });
  for await (const e of entries) {
    options.signal?.throwIfAborted();
    if (e.zero || !e.data || !e.present) continue;
    const first = Math.max(Math.floor(e.start / clusterSize), next);
    const end = Math.ceil((e.start + e.length) / clusterSize);
    if (end > first) {
      clusters += end - first;
      next = end;
    }
  }
  return clusters;
}
