/**
 * The header of a legacy qcow (version 1) image: parsing and validating it
 * with QEMU's checks, and reading it with its backing file name.
 *
 * Source: QEMU `qcow_open` (block/qcow.c).
 *
 * @module
 */

import { imageName } from "../qcow2/names.ts";
import { hex, Qcow2Error } from "../errors.ts";
import { headerNumber, QCOW2_MAGIC } from "../qcow2/header.ts";
import { CRYPT_METHOD } from "../qcow2/layout.ts";
import { type ByteSource, readExact } from "../io/source.ts";

/**
 * The header of a qcow version 1 image.
 *
 * @example The header of an open qcow image
 * ```ts
 * import { openImage, type QcowHeader, type QcowImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/v1.qcow", import.meta.url));
 * const image = await openImage(bytes) as QcowImage;
 * const header: QcowHeader = image.header;
 * assertEquals(header.version, 1);
 * assertEquals(header.clusterSize, 2 ** header.clusterBits);
 * assertEquals(header.l2Bits, 9); // 512 entries per L2 table
 * assertEquals(header.cryptMethod, 0);
 * assertEquals(header.backingFile, undefined);
 * ```
 */
export interface QcowHeader {
  /** Always 1. */
  version: 1;
  /** File offset of the backing file name, or 0. */
  backingFileOffset: number;
  /** Length of the backing file name. */
  backingFileSize: number;
  /**
   * The backing file name, if any: up to its first NUL byte, absent when
   * that leaves it empty, bytes that are not UTF-8 as U+FFFD (as for qcow2).
   */
  backingFile?: string;
  /** False when the backing file name's bytes are not UTF-8. */
  backingFileUtf8?: boolean;
  /** Modification time recorded by the writer (seconds since the epoch). */
  mtime: number;
  /** Virtual disk size in bytes, as stored. */
  size: number;
  /** log2 of the cluster size, 9 to 16. */
  clusterBits: number;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** log2 of the entries per L2 table, 6 to 13. */
  l2Bits: number;
  /** 0 none, 1 AES. */
  cryptMethod: number;
  /** File offset of the L1 table. */
  l1TableOffset: number;
  /** Entries in the L1 table (derived from the size). */
  l1Size: number;
}

const HEADER_LENGTH = 48;

/**
 * Parses and validates a qcow version 1 header, with QEMU's checks.
 *
 * @param bytes The start of the file (at least 48 bytes, plus the backing
 * name if it follows).
 * @param name The backing file name's bytes, if read separately.
 * @returns The header.
 * @throws {Qcow2Error} For anything QEMU would refuse.
 *
 * @example Parsing the header of a qcow version 1 image
 * ```ts
 * import { parseQcowHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/v1.qcow", import.meta.url));
 * const header = parseQcowHeader(bytes.subarray(0, 48));
 * assertEquals(header.version, 1);
 * assertEquals(header.size, 2 * 1024 * 1024);
 * assertEquals(header.clusterSize, 4096);
 * ```
 */
export function parseQcowHeader(
  bytes: Uint8Array,
  name?: Uint8Array,
): QcowHeader {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bad = (
    field: string,
    at: number,
    value: number | bigint,
    why: string,
  ) =>
    new Qcow2Error(
      "BAD_HEADER",
      `Cannot read qcow image: header field ${field} = ${hex(value)} ${why}`,
      { offset: at },
    );
  if (bytes.length < HEADER_LENGTH) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read qcow image: the file ends inside the 48-byte header`,
    );
  }
  if (view.getUint32(0) !== QCOW2_MAGIC || view.getUint32(4) !== 1) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      "Cannot read qcow image: it is not a qcow version 1 file",
      {
        offset: 0,
      },
    );
  }
  const safe = (at: number, field: string) =>
    headerNumber(view.getBigUint64(at), field, at, "qcow");
  const backingFileOffset = safe(8, "backing_file_offset");
  const backingFileSize = view.getUint32(16);
  const size = safe(24, "size");
  const clusterBits = bytes[32];
  const l2Bits = bytes[33];
  const cryptMethod = view.getUint32(36);
  const l1TableOffset = safe(40, "l1_table_offset");
  if (clusterBits < 9 || clusterBits > 16) {
    throw bad(
      "cluster_bits",
      32,
      clusterBits,
      "is outside 9..16 (cluster sizes 512 B to 64 KiB)",
    );
  }
  if (l2Bits < 6 || l2Bits > 13) {
    throw bad(
      "l2_bits",
      33,
      l2Bits,
      "is outside 6..13 (L2 tables of 512 B to 64 KiB)",
    );
  }
  if (cryptMethod > CRYPT_METHOD.aes) {
    throw bad("crypt_method", 36, cryptMethod, "is unknown (0 none, 1 AES)");
  }
  const span = 2 ** (clusterBits + l2Bits);
  const l1Size = Math.ceil(size / span);
  if (l1Size * 8 > 32 * 1024 * 1024) {
    throw new Qcow2Error(
      "TOO_LARGE",
      `Cannot read qcow image: the virtual size ${size} needs an L1 table above 32 MiB`,
      {
        offset: 24,
      },
    );
  }
  if (l1TableOffset % 8 !== 0) {
    throw bad(
      "l1_table_offset",
      40,
      l1TableOffset,
      "is not aligned to 8 bytes",
    );
  }
  let backingFile: string | undefined;
  let backingFileUtf8: boolean | undefined;
  if (backingFileOffset !== 0) {
    if (backingFileSize > 1023) {
      throw bad(
        "backing_file_size",
        16,
        backingFileSize,
        "is too long for a backing file name (at most 1023 bytes)",
      );
    }
    const end = backingFileOffset + backingFileSize;
    if (name === undefined && end > bytes.length) {
      throw new Qcow2Error(
        "TRUNCATED",
        "Cannot read qcow image: the file ends inside the backing file name",
        { offset: backingFileOffset },
      );
    }
    const read = imageName(name ?? bytes.subarray(backingFileOffset, end));
    if (read.text !== "") backingFile = read.text;
    if (read.text !== "" && !read.utf8) backingFileUtf8 = false;
  }
  return {
    version: 1,
    backingFileOffset,
    backingFileSize,
    backingFile,
    ...(backingFileUtf8 === false ? { backingFileUtf8 } : {}),
    mtime: view.getUint32(20),
    size,
    clusterBits,
    clusterSize: 2 ** clusterBits,
    l2Bits,
    cryptMethod,
    l1TableOffset,
    l1Size,
  };
}

/**
 * Reads and parses the header of a qcow version 1 image, with its backing
 * file name.
 *
 * @param source The image file.
 * @returns The header.
 * @throws {Qcow2Error} For anything QEMU would refuse.
 *
 * @example Reading the header of a qcow image from a Blob
 * ```ts
 * import { blobSource, readQcowHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/v1_over.qcow", import.meta.url));
 * const header = await readQcowHeader(blobSource(new Blob([bytes])));
 * assertEquals(header.backingFile, "v1.qcow");
 * ```
 */
export async function readQcowHeader(
  source: ByteSource,
): Promise<QcowHeader> {
  const start = new Uint8Array(Math.min(source.size, HEADER_LENGTH));
  await source.readAt(0, start);
  const header = parseQcowHeader(start, new Uint8Array(0));
  if (header.backingFileOffset === 0) return header;
  // The name may lie anywhere in the file: read just it.
  const { backingFileOffset: at, backingFileSize: length } = header;
  if (at + length > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      "Cannot read qcow image: the file ends inside the backing file name",
      { offset: at },
    );
  }
  return parseQcowHeader(
    start,
    await readExact(source, at, length, "backing file name"),
  );
}
