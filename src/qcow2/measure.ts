/**
 * How big a qcow2 file gets: the metadata a layout needs (header, L1 and L2
 * tables, refcount table and blocks, bitmaps), as QEMU 7.2 computes it for
 * `qemu-img measure` and for preallocation (block/qcow2.c
 * `qcow2_calc_prealloc_size`, `qcow2_refcount_metadata_size`;
 * block/qcow2-bitmap.c `qcow2_get_persistent_dirty_bitmap_size`).
 *
 * Sizes are `bigint`: a virtual size may exceed 2^53 bytes.
 *
 * @module
 */

/** The geometry that decides a qcow2 file's metadata size. */
export interface Qcow2Geometry {
  /** Cluster size in bytes: a power of two. */
  clusterSize: number;
  /** Refcount width in bits: 1, 2, 4, 8, 16, 32 or 64. */
  refcountBits: number;
  /** Whether L2 entries are extended (16 bytes, with subclusters). */
  extendedL2: boolean;
}

const L1E_SIZE = 8n;
const REFTABLE_ENTRY_SIZE = 8n;

function divRoundUp(a: bigint, b: bigint): bigint {
  return (a + b - 1n) / b;
}

function roundUp(a: bigint, b: bigint): bigint {
  return divRoundUp(a, b) * b;
}

/**
 * The refcount table and blocks that count `clusters` host clusters and
 * themselves: the fixed point of QEMU's `qcow2_refcount_metadata_size`.
 *
 * @param clusters Host clusters to count, besides the refcount metadata.
 * @param clusterSize Cluster size in bytes.
 * @param refcountBits Refcount width in bits.
 * @param generousIncrease Leave room for the table to grow by half (QEMU
 * does when it grows a live table).
 * @returns The bytes of refcount table and blocks, and the number of blocks.
 *
 * @example 1 GiB of 64 KiB clusters with 16-bit refcounts
 * ```ts
 * import { refcountMetadataSize } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * // 16384 clusters: one refcount block (32768 refcounts) and one table cluster.
 * assertEquals(refcountMetadataSize(16384n, 65536, 16), { bytes: 131072n, blocks: 1n });
 * ```
 */
export function refcountMetadataSize(
  clusters: bigint,
  clusterSize: number,
  refcountBits: number,
  generousIncrease = false,
): { bytes: bigint; blocks: bigint } {
  const cs = BigInt(clusterSize);
  const blocksPerTableCluster = cs / REFTABLE_ENTRY_SIZE;
  const refcountsPerBlock = cs * 8n / BigInt(refcountBits);
  let table = 0n;
  let blocks = 0n;
  let n = 0n;
  let last: bigint;
  do {
    last = n;
    blocks = divRoundUp(clusters + table + blocks, refcountsPerBlock);
    table = divRoundUp(blocks, blocksPerTableCluster);
    n = clusters + blocks + table;
    if (n === last && generousIncrease) {
      clusters += divRoundUp(table, 2n);
      n = 0n;
      generousIncrease = false;
    }
  } while (n !== last);
  return { bytes: (blocks + table) * cs, blocks };
}

/**
 * The file size of a fully allocated image of `virtualSize` bytes: one
 * header cluster, L2 tables for every cluster, the L1 table, the refcount
 * metadata for all of it, and the data (QEMU's `qcow2_calc_prealloc_size`).
 *
 * @param virtualSize Guest bytes; rounded up to a cluster.
 * @param geometry Cluster size, refcount width, extended L2.
 * @returns The size in bytes.
 *
 * @example The size of `qemu-img create -o preallocation=full` of 1 GiB
 * ```ts
 * import { preallocSize } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const g = { clusterSize: 65536, refcountBits: 16, extendedL2: false };
 * assertEquals(preallocSize(1n << 30n, g), 1074135040n); // qemu-img measure's "fully allocated size"
 * ```
 */
export function preallocSize(
  virtualSize: bigint,
  geometry: Qcow2Geometry,
): bigint {
  const cs = BigInt(geometry.clusterSize);
  const l2eSize = geometry.extendedL2 ? 16n : 8n;
  const aligned = roundUp(virtualSize, cs);
  let meta = cs; // the header
  let nl2e = aligned / cs;
  nl2e = roundUp(nl2e, cs / l2eSize);
  meta += nl2e * l2eSize;
  let nl1e = nl2e * l2eSize / cs;
  nl1e = roundUp(nl1e, cs / L1E_SIZE);
  meta += nl1e * L1E_SIZE;
  meta += refcountMetadataSize(
    (meta + aligned) / cs,
    geometry.clusterSize,
    geometry.refcountBits,
  ).bytes;
  return meta + aligned;
}

/** A persistent dirty bitmap, as far as its size goes. */
export interface BitmapToMeasure {
  /** Its name (its UTF-8 length counts). */
  name: string;
  /** Bytes of guest data per bit. */
  granularity: number;
  /** Guest bytes it covers (the disk size when it was made). */
  size: bigint;
}

/**
 * The bytes persistent dirty bitmaps need in a qcow2 file of `clusterSize`
 * clusters: each bitmap fully allocated, its bitmap table, and the bitmap
 * directory (QEMU's `qcow2_get_persistent_dirty_bitmap_size`).
 *
 * @param bitmaps The bitmaps.
 * @param clusterSize The new image's cluster size.
 * @returns The size in bytes.
 *
 * @example One bitmap of 64 KiB granularity over 1 GiB
 * ```ts
 * import { bitmapsSize } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * // 16384 bits = 2 KiB: one cluster, one table cluster, one directory cluster.
 * assertEquals(bitmapsSize([{ name: "b0", granularity: 65536, size: 1n << 30n }], 65536), 196608n);
 * ```
 */
export function bitmapsSize(
  bitmaps: readonly BitmapToMeasure[],
  clusterSize: number,
): bigint {
  const cs = BigInt(clusterSize);
  let total = 0n;
  let directory = 0n;
  for (const bitmap of bitmaps) {
    const bits = divRoundUp(bitmap.size, BigInt(bitmap.granularity));
    const clusters = divRoundUp(divRoundUp(bits, 8n), cs);
    total += clusters * cs;
    total += roundUp(clusters * 8n, cs);
    const nameBytes = BigInt(new TextEncoder().encode(bitmap.name).length);
    directory += roundUp(24n + nameBytes, 8n);
  }
  return total + roundUp(directory, cs);
}

/** Key bytes of the LUKS ciphers QEMU 7.2 creates (crypto/cipher.c `alg_key_len`). */
const LUKS_KEY_BYTES: Record<string, number> = {
  "aes-128": 16,
  "aes-192": 24,
  "aes-256": 32,
  "cast5-128": 16,
  "serpent-128": 16,
  "serpent-192": 24,
  "serpent-256": 32,
  "twofish-128": 16,
  "twofish-192": 24,
  "twofish-256": 32,
};

/** The cipher algorithms a LUKS image can be created with. */
export const LUKS_CIPHER_ALGS: readonly string[] = Object.keys(LUKS_KEY_BYTES);
/** The cipher modes a LUKS image can be created with. */
export const LUKS_CIPHER_MODES: readonly string[] = [
  "ecb",
  "cbc",
  "xts",
  "ctr",
];

/**
 * Bytes before the encrypted payload of a new LUKS1 header: the 4 KiB
 * header, then 8 key slots, each holding the master key split into 4000
 * stripes, in whole sectors rounded up to 4 KiB (QEMU's
 * `qcrypto_block_luks_create`, `qcrypto_block_calculate_payload_offset`).
 *
 * @param cipherAlg The cipher (default `"aes-256"`).
 * @param cipherMode The mode (default `"xts"`, which doubles the key).
 * @returns The payload offset in bytes.
 * @throws {RangeError} For a cipher or mode QEMU does not create.
 *
 * @example The default, aes-256-xts: 64-byte master keys
 * ```ts
 * import { luksPayloadSize } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(luksPayloadSize(), 2068480); // 4096 + 8 slots of 504 sectors
 * assertEquals(luksPayloadSize("aes-128", "cbc"), 528384);
 * ```
 */
export function luksPayloadSize(
  cipherAlg = "aes-256",
  cipherMode = "xts",
): number {
  const key = LUKS_KEY_BYTES[cipherAlg];
  if (key === undefined) {
    throw new RangeError(
      `Parameter 'cipher-alg' does not accept value '${cipherAlg}'`,
    );
  }
  if (!LUKS_CIPHER_MODES.includes(cipherMode)) {
    throw new RangeError(
      `Parameter 'cipher-mode' does not accept value '${cipherMode}'`,
    );
  }
  const masterKey = cipherMode === "xts" ? 2 * key : key;
  const headerSectors = 4096 / 512;
  const splitSectors =
    Math.ceil(Math.ceil(masterKey * 4000 / 512) / headerSectors) *
    headerSectors;
  return (headerSectors + 8 * splitSectors) * 512;
}
