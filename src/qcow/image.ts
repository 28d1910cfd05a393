/**
 * Legacy qcow (version 1) images: header, two-level cluster map and
 * zlib-compressed clusters. Shares the extent model, the L2 cache, the codecs
 * and backing-file handling with qcow2.
 *
 * @module
 */

import type { Codecs } from "../codecs/codecs.ts";
import type { ImageEncryption } from "../crypto/encryption.ts";
import type { DiskImage } from "../disk.ts";
import type { ExtentRuns } from "../extent_runs.ts";
import { checkOpenable, imageName } from "../qcow2/names.ts";
import { type L2Span, TwoLevelImage } from "../qcow2/walk.ts";
import { hex, Qcow2Error } from "../errors.ts";
import { QCOW2_MAGIC } from "../qcow2/header.ts";
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
  const safe = (at: number, field: string) => {
    const value = view.getBigUint64(at);
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Qcow2Error(
        "TOO_LARGE",
        `Cannot read qcow image: header field ${field} = ${
          hex(value)
        } is larger than 2^53 - 1`,
        {
          offset: at,
        },
      );
    }
    return Number(value);
  };
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

/** What {@linkcode openQcowImage} needs beyond the file. */
export interface QcowOpenOptions {
  /** Decompressors (zlib is used). */
  codecs?: Codecs;
  /** Opens the backing file by the name the image stores. */
  openBacking?: (name: string) => Promise<DiskImage>;
  /** Closes the files opened for this image. */
  close?: () => void;
  /** Opens the image's legacy AES encryption (with the password). */
  openEncryption?: (header: QcowHeader) => Promise<ImageEncryption | undefined>;
}

/**
 * Opens a qcow version 1 image.
 *
 * @param source The image file.
 * @param options Codecs and how to open the backing file.
 * @returns The image.
 */
export async function openQcowImage(
  source: ByteSource,
  options: QcowOpenOptions = {},
): Promise<QcowImage> {
  const header = await readQcowHeader(source);
  let encryption: ImageEncryption | undefined;
  if (header.cryptMethod !== CRYPT_METHOD.none) {
    if (!options.openEncryption) {
      throw new Qcow2Error(
        "ENCRYPTED",
        "Cannot read qcow image: it is encrypted (legacy AES): give --password-file FILE (in the library, the 'password' option)",
        { offset: 36 },
      );
    }
    encryption = await options.openEncryption(header);
  }

  if (header.l1TableOffset + header.l1Size * 8 > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read qcow image: the L1 table at ${
        hex(header.l1TableOffset)
      } (${header.l1Size} entries) runs past the end of the file (${source.size} bytes)`,
      { offset: header.l1TableOffset },
    );
  }
  const l1 = await readExact(
    source,
    header.l1TableOffset,
    header.l1Size * 8,
    "L1 table",
  );
  if (header.backingFile !== undefined && options.openBacking) {
    checkOpenable("backing", header.backingFile, header.backingFileUtf8);
  }
  const backing = header.backingFile !== undefined && options.openBacking
    ? await options.openBacking(header.backingFile)
    : undefined;
  return new QcowImage(header, source, l1, backing, {
    ...options,
    encryption,
  });
}

/**
 * An open qcow version 1 image. Obtain one with `openImage`.
 *
 * @example Reading a compressed qcow image
 * ```ts
 * import { openImage, type QcowImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/v1_comp.qcow", import.meta.url));
 * const image = await openImage(bytes) as QcowImage;
 * assertEquals(image.header.version, 1);
 * const first = new Uint8Array(512);
 * await image.read(0, first);
 * ```
 */
export class QcowImage extends TwoLevelImage {
  /** Tells a qcow image from the other formats `openImage` returns. */
  readonly format = "qcow" as const;
  /** The parsed header. */
  readonly header: QcowHeader;
  #l1: DataView;

  /** @internal Use `openImage`. */
  constructor(
    header: QcowHeader,
    source: ByteSource,
    l1: Uint8Array,
    backing: DiskImage | undefined,
    options: QcowOpenOptions & { encryption?: ImageEncryption },
  ) {
    super({
      source,
      // Rounded down to 512, as QEMU does.
      size: Math.floor(header.size / 512) * 512,
      clusterBits: header.clusterBits,
      l2Entries: 2 ** header.l2Bits,
      l2TableBytes: 8 * 2 ** header.l2Bits,
      cachedTables: 64,
      l1TableOffset: header.l1TableOffset,
      backing,
      compressionType: "zlib",
      codecs: options.codecs,
      close: options.close,
      encryption: options.encryption,
    });
    this.header = header;
    this.#l1 = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
  }

  /**
   * The L2 table offset in L1 entry `l1Index`, or 0.
   * @ignore
   */
  protected l2TableOffset(l1Index: number): number {
    return l1Index < this.header.l1Size
      ? this.#safe(
        this.#l1.getBigUint64(l1Index * 8),
        this.header.l1TableOffset + l1Index * 8,
      )
      : 0;
  }

  /**
   * Adds L2 entries `[first, last)`: data, compressed or unallocated.
   * @ignore
   */
  protected addEntries(runs: ExtentRuns, view: DataView, span: L2Span): void {
    const { l2Offset, spanStart, first, last } = span;
    const bits = this.header.clusterBits;
    const cs = this.clusterSize;
    for (let i = first; i < last; i++) {
      const g = spanStart + i * cs;
      const raw = view.getBigUint64(i * 8);
      if (raw >> 63n) {
        // Compressed: the byte count above bit 63 - cluster_bits, the
        // offset below it.
        const shift = BigInt(63 - bits);
        const length = Number((raw >> shift) & BigInt(cs - 1));
        const host = this.#safe(raw & ((1n << shift) - 1n), l2Offset + i * 8);
        runs.addCompressed(g, g + cs, host, length);
      } else if (raw === 0n) {
        runs.add("unallocated", g, g + cs);
      } else {
        runs.add("data", g, g + cs, this.#safe(raw, l2Offset + i * 8));
      }
    }
  }

  #safe(value: bigint, at: number): number {
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Qcow2Error(
        "BAD_TABLE_ENTRY",
        `Cannot read qcow image: table entry at ${hex(at)} points to ${
          hex(value)
        }, past any file`,
        {
          offset: at,
        },
      );
    }
    return Number(value);
  }
}
