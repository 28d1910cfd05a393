/**
 * Persistent dirty bitmaps: the bitmap directory and each bitmap's table,
 * read and checked as QEMU 7.2 checks them when it opens an image
 * (block/qcow2-bitmap.c `bitmap_list_load`, `check_dir_entry`,
 * `bitmap_table_load`, `check_table_entry`, `load_bitmap_data`).
 *
 * @module
 */

import { imageName } from "./names.ts";
import { hex, Qcow2Error } from "../errors.ts";
import type { ByteSource } from "../io/source.ts";
import type { Qcow2Header } from "./header.ts";
import {
  BITMAP_DIRECTORY_ENTRY as E,
  BITMAP_DIRECTORY_ENTRY_SIZE,
  BITMAP_FLAGS,
  BITMAP_TABLE_ALL_ONES,
  BITMAP_TABLE_OFFSET_MASK,
  BITMAP_TABLE_RESERVED_MASK,
} from "./layout.ts";

/** `BME_MAX_TABLE_SIZE`: most entries in a bitmap table. */
const MAX_TABLE_SIZE = 0x8000000;
/** `BME_MAX_PHYS_SIZE`: most bytes of bitmap data. */
const MAX_PHYS_SIZE = 0x20000000;
const MIN_GRANULARITY_BITS = 9;
const MAX_GRANULARITY_BITS = 31;
const MAX_NAME_SIZE = 1023;
/** `BT_DIRTY_TRACKING_BITMAP`: the one bitmap type. */
const DIRTY_TRACKING = 1;
/** `QCOW2_MAX_BITMAP_DIRECTORY_SIZE`: 1024 bytes for each of 65535 bitmaps. */
const MAX_DIRECTORY_SIZE = 1024 * 65535;

/**
 * One persistent dirty bitmap, as its directory entry describes it.
 *
 * @example The bitmaps of an image
 * ```ts
 * import { bytesSource, parseHeader, readBitmaps } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/bitmaps/bitmaps.qcow2", import.meta.url));
 * const bitmaps = await readBitmaps(bytesSource(bytes), parseHeader(bytes));
 * assertEquals(bitmaps.map((b) => [b.name, b.granularity, b.inUse, b.auto]), [
 *   ["b0", 16384, true, true], // the default granularity: one cluster
 *   ["off", 16384, false, false],
 *   ["fine", 512, false, true],
 *   ["été", 1048576, false, true],
 * ]);
 * ```
 */
export interface Bitmap {
  /**
   * The bitmap's name, up to its first NUL byte (UTF-8; bytes that are not
   * show as U+FFFD).
   */
  name: string;
  /** Guest bytes per bit: a power of two from 512 bytes to 2 GiB. */
  granularity: number;
  /** Flag `in_use`: a program had it open and did not store it: its data is stale. */
  inUse: boolean;
  /** Flag `auto`: QEMU keeps it up to date on writes (it is enabled). */
  auto: boolean;
  /** File offset of its bitmap table. */
  tableOffset: number;
  /** Entries in its bitmap table. */
  tableSize: number;
}

function broken(message: string, offset?: number): Qcow2Error {
  return new Qcow2Error(
    "BAD_BITMAP_DIRECTORY",
    `Cannot read qcow2 image: ${message}`,
    offset === undefined ? undefined : { offset },
  );
}

/**
 * Reads and checks the persistent dirty bitmaps of an image, as QEMU does
 * when it opens one: the bitmap directory (sizes, count, every entry's
 * constraints) and, for each bitmap not in use, its bitmap table (reserved
 * bits, alignment, and a size that fits the disk). An image without the
 * bitmaps extension, or whose autoclear bit 0 is clear (a program without
 * bitmap support wrote it: QEMU then ignores the bitmaps), has none.
 *
 * @param source The image file.
 * @param header Its header.
 * @param diskSize The virtual disk size the bitmaps cover (default: the
 * header's size, rounded down to 512 bytes).
 * @returns The bitmaps, in directory order.
 * @throws {Qcow2Error} `BAD_BITMAP_DIRECTORY` naming what is broken. What
 * lies past the end of the file reads as zeros, as in QEMU.
 *
 * @example A broken directory is one clear error
 * ```ts
 * import { bytesSource, parseHeader, Qcow2Error, readBitmaps } from "@qcow2/qcow2";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/bitmaps/bitmaps_small.qcow2", import.meta.url));
 * const header = parseHeader(bytes);
 * const at = header.extensions.bitmaps!.directoryOffset;
 * bytes[at + 17] = 40; // granularity_bits past the limit of 31
 * const error = await assertRejects(() => readBitmaps(bytesSource(bytes), header), Qcow2Error);
 * assertEquals(error.code, "BAD_BITMAP_DIRECTORY");
 * ```
 */
export async function readBitmaps(
  source: ByteSource,
  header: Qcow2Header,
  diskSize: number = Math.floor(header.size / 512) * 512,
): Promise<Bitmap[]> {
  const ext = header.extensions.bitmaps;
  if (!ext || !header.features.bitmaps) return [];
  const { count, directorySize: size, directoryOffset: offset } = ext;
  if (size === 0) throw broken("the bitmap directory size is zero");
  if (size > MAX_DIRECTORY_SIZE) {
    throw broken(
      `the bitmap directory is ${size} bytes, above QEMU's limit of ${MAX_DIRECTORY_SIZE}`,
    );
  }
  const dir = await readZeroFilled(source, offset, size);
  const view = new DataView(dir.buffer, dir.byteOffset, dir.byteLength);
  const bitmaps: Bitmap[] = [];
  const clusterSize = header.clusterSize;
  let at = 0;
  while (at < size) {
    const where = offset + at;
    if (at + BITMAP_DIRECTORY_ENTRY_SIZE > size) {
      throw broken(
        `the bitmap directory is broken: entry ${bitmaps.length} at ${
          hex(where)
        } runs past its end`,
        where,
      );
    }
    if (bitmaps.length + 1 > count) {
      throw broken(
        `the bitmap directory holds more bitmaps than the ${count} its header extension counts`,
        where,
      );
    }
    const tableOffset = view.getBigUint64(at + E.bitmapTableOffset.offset);
    const tableSize = view.getUint32(at + E.bitmapTableSize.offset);
    const flags = view.getUint32(at + E.flags.offset);
    const type = view.getUint8(at + E.type.offset);
    const granularityBits = view.getUint8(at + E.granularityBits.offset);
    const nameSize = view.getUint16(at + E.nameSize.offset);
    const extraDataSize = view.getUint32(at + E.extraDataSize.offset);
    const entrySize = Math.ceil(
      (BITMAP_DIRECTORY_ENTRY_SIZE + nameSize + extraDataSize) / 8,
    ) * 8;
    if (at + entrySize > size) {
      throw broken(
        `the bitmap directory is broken: entry ${bitmaps.length} at ${
          hex(where)
        } (${entrySize} bytes with its name) runs past its end`,
        where,
      );
    }
    if (extraDataSize !== 0) {
      throw broken(
        `bitmap entry ${bitmaps.length} at ${
          hex(where)
        } has extra data, which QEMU does not support`,
        where,
      );
    }
    const nameStart = at + BITMAP_DIRECTORY_ENTRY_SIZE + extraDataSize;
    // g_strndup in QEMU's bitmap_list_load: cut at NUL.
    const name = imageName(dir.subarray(nameStart, nameStart + nameSize)).text;
    const why = entryProblem({
      tableOffset,
      tableSize,
      flags,
      type,
      granularityBits,
      nameSize,
      clusterSize,
      diskSize,
    });
    if (why) {
      throw broken(
        `bitmap '${name}' (directory entry at ${
          hex(where)
        }) breaks the format's constraints: ${why}`,
        where,
      );
    }
    bitmaps.push({
      name,
      granularity: 2 ** granularityBits,
      inUse: (flags & BITMAP_FLAGS.inUse) !== 0,
      auto: (flags & BITMAP_FLAGS.auto) !== 0,
      tableOffset: Number(tableOffset),
      tableSize,
    });
    at += entrySize;
  }
  if (bitmaps.length !== count) {
    throw broken(
      `the bitmap directory holds ${bitmaps.length} bitmaps, fewer than the ${count} its header extension counts`,
      offset,
    );
  }
  for (const bitmap of bitmaps) {
    if (!bitmap.inUse) {
      await checkTable(source, bitmap, clusterSize, diskSize);
    }
  }
  return bitmaps;
}

/**
 * Reads `length` bytes at `offset`, with zeros for what lies past the end of
 * the file, as QEMU's reads of the image file give them.
 */
async function readZeroFilled(
  source: ByteSource,
  offset: number,
  length: number,
): Promise<Uint8Array> {
  const buffer = new Uint8Array(length);
  const inside = Math.max(0, Math.min(length, source.size - offset));
  if (inside > 0) {
    const n = await source.readAt(offset, buffer.subarray(0, inside));
    if (n < inside) buffer.fill(0, n, inside);
  }
  return buffer;
}

/** What `check_dir_entry` refuses in an entry, or undefined. */
function entryProblem(e: {
  tableOffset: bigint;
  tableSize: number;
  flags: number;
  type: number;
  granularityBits: number;
  nameSize: number;
  clusterSize: number;
  diskSize: number;
}): string | undefined {
  if (e.tableSize === 0) return "its bitmap table has no entries";
  if (e.tableOffset === 0n) return "its bitmap table offset is 0";
  if (e.tableOffset % BigInt(e.clusterSize) !== 0n) {
    return `its bitmap table offset ${
      hex(e.tableOffset)
    } is not aligned to a cluster`;
  }
  if (e.tableSize > MAX_TABLE_SIZE) {
    return `its bitmap table has ${e.tableSize} entries, above ${MAX_TABLE_SIZE}`;
  }
  if (
    e.granularityBits > MAX_GRANULARITY_BITS ||
    e.granularityBits < MIN_GRANULARITY_BITS
  ) {
    return `granularity_bits is ${e.granularityBits}, not ${MIN_GRANULARITY_BITS} to ${MAX_GRANULARITY_BITS}`;
  }
  if ((e.flags & ~(BITMAP_FLAGS.inUse | BITMAP_FLAGS.auto)) !== 0) {
    return `reserved flags are set (${hex(e.flags)})`;
  }
  if (e.nameSize > MAX_NAME_SIZE) {
    return `its name is ${e.nameSize} bytes, above ${MAX_NAME_SIZE}`;
  }
  if (e.type !== DIRTY_TRACKING) {
    return `its type is ${e.type}, not 1 (dirty tracking)`;
  }
  const physBytes = e.tableSize * e.clusterSize;
  if (physBytes > MAX_PHYS_SIZE) {
    return `its data would take ${physBytes} bytes, above ${MAX_PHYS_SIZE}`;
  }
  if (
    (e.flags & BITMAP_FLAGS.inUse) === 0 &&
    BigInt(e.diskSize) > (BigInt(physBytes) * 8n) << BigInt(e.granularityBits)
  ) {
    return `its bitmap table is too small for the ${e.diskSize}-byte disk`;
  }
  return undefined;
}

/**
 * Checks a bitmap's table as `bitmap_table_load` and `load_bitmap_data` do:
 * its size is what the disk needs, and no entry has reserved bits set or
 * points at an unaligned offset.
 */
async function checkTable(
  source: ByteSource,
  bitmap: Bitmap,
  clusterSize: number,
  diskSize: number,
): Promise<void> {
  const table = await readZeroFilled(
    source,
    bitmap.tableOffset,
    bitmap.tableSize * 8,
  );
  const view = new DataView(table.buffer, table.byteOffset, table.byteLength);
  const cs = BigInt(clusterSize);
  for (let i = 0; i < bitmap.tableSize; i++) {
    const entry = view.getBigUint64(i * 8);
    if (!validBitmapTableEntry(entry, cs)) {
      throw broken(
        `entry ${i} of the bitmap table of bitmap '${bitmap.name}' is invalid (${
          hex(entry)
        })`,
        bitmap.tableOffset + i * 8,
      );
    }
  }
  // Serialized as 64-bit words (QEMU's hbitmap_serialization_size).
  const bits = Math.ceil(diskSize / bitmap.granularity);
  const needed = Math.ceil(Math.ceil(bits / 64) * 8 / clusterSize);
  if (needed !== bitmap.tableSize) {
    throw broken(
      `the bitmap table of bitmap '${bitmap.name}' has ${bitmap.tableSize} entries; the disk needs ${needed}`,
      bitmap.tableOffset,
    );
  }
}

/**
 * Whether a bitmap table entry is valid: no reserved bit set and, with a
 * cluster, an aligned offset and no all-ones flag.
 *
 * Source: QEMU `check_table_entry` (block/qcow2-bitmap.c).
 *
 * @param entry The entry.
 * @param clusterSize The image's cluster size.
 * @returns Whether it is valid.
 */
export function validBitmapTableEntry(
  entry: bigint,
  clusterSize: bigint,
): boolean {
  const offset = entry & BITMAP_TABLE_OFFSET_MASK;
  return (entry & BITMAP_TABLE_RESERVED_MASK) === 0n &&
    (offset === 0n ||
      ((entry & BITMAP_TABLE_ALL_ONES) === 0n && offset % clusterSize === 0n));
}
