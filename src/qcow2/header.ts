/**
 * The qcow2 header: every field of versions 2 and 3, named feature bits, and
 * the checks QEMU makes when it opens an image.
 *
 * @module
 */

import { imageName } from "./names.ts";
import { hex, Qcow2Error } from "../errors.ts";
import { type ByteSource, readExact } from "../io/source.ts";
import { type HeaderExtensions, parseExtensions } from "./extensions.ts";
import {
  AUTOCLEAR,
  COMPATIBLE,
  COMPRESSION_TYPE,
  CRYPT_METHOD,
  type CryptMethod,
  type Field,
  HEADER,
  INCOMPATIBLE,
  KNOWN_INCOMPATIBLE_MASK,
  MAGIC,
  MAX_BACKING_FILE_SIZE,
  MAX_CLUSTER_BITS,
  MAX_REFCOUNT_ORDER,
  MIN_CLUSTER_BITS,
  V2_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from "./layout.ts";

/**
 * The four bytes every qcow2 (and qcow) image starts with: `QFI\xfb`, read
 * big-endian.
 *
 * @example Checking the first bytes of a file
 * ```ts
 * import { QCOW2_MAGIC } from "@qcow2/qcow2";
 * import { assert } from "@std/assert";
 *
 * const start = new Uint8Array([0x51, 0x46, 0x49, 0xfb]);
 * assert(new DataView(start.buffer).getUint32(0) === QCOW2_MAGIC);
 * ```
 */
export const QCOW2_MAGIC: number = MAGIC;

/** Largest active L1 table QEMU opens (32 MiB). */
const MAX_L1_BYTES = 32 * 1024 * 1024;
/** Largest refcount table QEMU opens (8 MiB). */
const MAX_REFCOUNT_TABLE_BYTES = 8 * 1024 * 1024;
/** Most snapshots QEMU opens. */
const MAX_SNAPSHOTS = 65536;

/**
 * The compression types a qcow2 v3 header can name.
 *
 * @example Finding out which decompressor an image needs
 * ```ts
 * import { type CompressionType, readHeader } from "@qcow2/qcow2";
 * import { assert, assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zstd.qcow2", import.meta.url));
 * const header = await readHeader(bytes);
 * const type: CompressionType = header.compressionType;
 * assertEquals(type, "zstd");
 * assertEquals(header.features.compressionType, "zstd"); // incompatible bit 3 set
 * ```
 */
export type CompressionType = "zlib" | "zstd";

/**
 * Named feature bits of a header.
 *
 * @example Checking the feature bits of an image with lazy refcounts
 * ```ts
 * import { readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/lazy.qcow2", import.meta.url));
 * const { features, compatibleFeatures } = await readHeader(bytes);
 * assertEquals(features.lazyRefcounts, true);
 * assertEquals(features.dirty, false); // it was closed cleanly
 * assertEquals(compatibleFeatures, 1n); // the raw bits behind it
 * ```
 */
export interface Qcow2Features {
  /** Incompatible bit 0: refcounts may be stale (lazy refcounts in use). */
  dirty: boolean;
  /** Incompatible bit 1: QEMU found corruption; the image opens read-only. */
  corrupt: boolean;
  /** Incompatible bit 2: guest data lives in an external data file. */
  externalDataFile: boolean;
  /**
   * The compression type (header byte 104): incompatible bit 3 is set
   * exactly when it is not `"zlib"`. The same value as
   * {@linkcode Qcow2Header.compressionType}.
   */
  compressionType: CompressionType;
  /** Incompatible bit 4: L2 entries are 128 bits, with subclusters. */
  extendedL2: boolean;
  /** Compatible bit 0: lazy refcounts. */
  lazyRefcounts: boolean;
  /** Autoclear bit 0: the bitmaps extension is consistent. */
  bitmaps: boolean;
  /** Autoclear bit 1: the external data file is a valid raw image. */
  rawExternalData: boolean;
}

/**
 * Every field of a qcow2 header, with v2 images given the v3 defaults.
 *
 * @example The header of an overlay in a backing chain
 * ```ts
 * import { readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/chain_top.qcow2", import.meta.url));
 * const header = await readHeader(bytes);
 * assertEquals(header.version, 3);
 * assertEquals(header.size, 4 * 1024 * 1024);
 * assertEquals(header.clusterSize, 2 ** header.clusterBits);
 * assertEquals(header.refcountBits, 16);
 * assertEquals(header.backingFile, "chain_mid.qcow2");
 * assertEquals(header.extensions.backingFormat, "qcow2");
 * ```
 */
export interface Qcow2Header {
  /** Always {@linkcode QCOW2_MAGIC}. */
  magic: number;
  /** Format version: 2 (compat 0.10) or 3 (compat 1.1). */
  version: 2 | 3;
  /** File offset of the backing file name, or 0 when there is none. */
  backingFileOffset: number;
  /** Length in bytes of the backing file name. */
  backingFileSize: number;
  /**
   * The backing file name, when the image has one: up to its first NUL
   * byte, and absent when that leaves it empty (as in QEMU, where an empty
   * name is no backing file). Bytes that are not UTF-8 read as U+FFFD (see
   * {@linkcode backingFileUtf8}).
   */
  backingFile?: string;
  /**
   * False when the backing file name's bytes are not UTF-8: the name then
   * reads with U+FFFD, and the file cannot be opened by it.
   */
  backingFileUtf8?: boolean;
  /** log2 of the cluster size, 9 to 21. */
  clusterBits: number;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** Virtual disk size in bytes, as stored. */
  size: number;
  /** {@linkcode CRYPT_METHOD}: 0 none, 1 AES, 2 LUKS. */
  cryptMethod: CryptMethod;
  /** Entries in the active L1 table. */
  l1Size: number;
  /** File offset of the active L1 table. */
  l1TableOffset: number;
  /** File offset of the refcount table. */
  refcountTableOffset: number;
  /** Clusters the refcount table occupies. */
  refcountTableClusters: number;
  /** Number of internal snapshots. */
  nbSnapshots: number;
  /** File offset of the snapshot table. */
  snapshotsOffset: number;
  /** Raw incompatible feature bits (0 for v2). */
  incompatibleFeatures: bigint;
  /** Raw compatible feature bits (0 for v2). */
  compatibleFeatures: bigint;
  /** Raw autoclear feature bits (0 for v2). */
  autoclearFeatures: bigint;
  /** The known feature bits, by name. */
  features: Qcow2Features;
  /** Incompatible bits this library does not know (0n when none). */
  unknownIncompatibleFeatures: bigint;
  /** log2 of the refcount width in bits (4 for v2). */
  refcountOrder: number;
  /** Refcount width in bits. */
  refcountBits: number;
  /** Header length in bytes (72 for v2). */
  headerLength: number;
  /** Compression type for compressed clusters (zlib for v2). */
  compressionType: CompressionType;
  /** Header extensions. */
  extensions: HeaderExtensions;
}

/**
 * How many bytes at the start of a file {@linkcode parseHeader} may need,
 * given the first 24 bytes: the first cluster plus room for a backing name.
 * For a file too short or not qcow2, returns 112.
 *
 * @param start At least the first 24 bytes of the file.
 * @returns The byte count to read from offset 0.
 */
export function headerSpan(start: Uint8Array): number {
  if (start.length < 24) return 112;
  const view = new DataView(start.buffer, start.byteOffset, start.byteLength);
  const bits = view.getUint32(HEADER.clusterBits.offset);
  if (
    view.getUint32(HEADER.magic.offset) !== QCOW2_MAGIC ||
    bits < MIN_CLUSTER_BITS || bits > MAX_CLUSTER_BITS
  ) {
    return 112;
  }
  return (1 << bits) + MAX_BACKING_FILE_SIZE + 1;
}

/**
 * Parses and validates a qcow2 header from the first bytes of an image (the
 * first cluster, and the backing file name if it lies beyond it). Checks what
 * QEMU checks when it opens an image; feature support is checked later, by
 * {@linkcode openImage}.
 *
 * @param bytes The start of the file: at least `headerSpan(bytes)` bytes, or
 * the whole file if it is shorter.
 * @param options `check`: accept what QEMU accepts only when checking an
 * image (no refcount table: `refcount_table_clusters` 0).
 * @returns The header, with v3 defaults for a v2 image.
 * @throws {Qcow2Error} `BAD_MAGIC`, `UNSUPPORTED_VERSION`, `TRUNCATED`,
 * `BAD_HEADER`, `BAD_EXTENSION`, `TOO_LARGE`.
 *
 * @example Parsing a minimal version 3 header
 * ```ts
 * import { parseHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = new Uint8Array(65536);
 * const view = new DataView(bytes.buffer);
 * view.setUint32(0, 0x514649fb); // magic
 * view.setUint32(4, 3); // version
 * view.setUint32(20, 16); // 64 KiB clusters
 * view.setBigUint64(24, 1n << 20n); // 1 MiB virtual size
 * view.setUint32(36, 1); // one L1 entry
 * view.setBigUint64(40, 0x30000n); // L1 table offset
 * view.setBigUint64(48, 0x10000n); // refcount table offset
 * view.setUint32(56, 1); // refcount table clusters
 * view.setUint32(96, 4); // 16-bit refcounts
 * view.setUint32(100, 112); // header length
 * const header = parseHeader(bytes);
 * assertEquals(header.clusterSize, 65536);
 * assertEquals(header.size, 1048576);
 * assertEquals(header.compressionType, "zlib");
 * ```
 */
export function parseHeader(
  bytes: Uint8Array,
  options: { check?: boolean } = {},
): Qcow2Header {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const need = (end: number, what: string) => {
    if (bytes.length < end) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow2 image: the file ends at ${bytes.length} bytes, inside the ${what}`,
      );
    }
  };
  if (bytes.length < 4 || view.getUint32(HEADER.magic.offset) !== QCOW2_MAGIC) {
    throw new Qcow2Error(
      "BAD_MAGIC",
      "Cannot read qcow2 image: the file does not start with the qcow2 magic 'QFI\\xfb'",
      { offset: 0 },
    );
  }
  need(8, "header");
  const version = view.getUint32(HEADER.version.offset);
  if (version !== 2 && version !== 3) {
    throw new Qcow2Error(
      "UNSUPPORTED_VERSION",
      `Cannot read qcow2 image: unsupported qcow2 version ${version} (only 2 and 3 exist)`,
      { offset: HEADER.version.offset, field: "version", value: version },
    );
  }
  need(V2_HEADER_LENGTH, "header");
  const u32 = (field: Field) => view.getUint32(field.offset);
  const u64 = (field: Field) =>
    headerNumber(view.getBigUint64(field.offset), field.name, field.offset);
  const bad = (field: Field, value: number | bigint, why: string) =>
    new Qcow2Error(
      "BAD_HEADER",
      `Cannot read qcow2 image: header field ${field.name} = ${
        typeof value === "bigint" || value > 9 ? hex(value) : value
      } ${why}`,
      { offset: field.offset, field: field.name, value },
    );

  const clusterBits = u32(HEADER.clusterBits);
  if (clusterBits < MIN_CLUSTER_BITS || clusterBits > MAX_CLUSTER_BITS) {
    throw bad(
      HEADER.clusterBits,
      clusterBits,
      "is outside 9..21 (cluster sizes 512 B to 2 MiB)",
    );
  }
  const clusterSize = 2 ** clusterBits;
  const isAligned = (n: number) => n % clusterSize === 0;

  let headerLength = V2_HEADER_LENGTH;
  let incompatibleFeatures = 0n;
  let compatibleFeatures = 0n;
  let autoclearFeatures = 0n;
  let refcountOrder = 4;
  let compressionType: CompressionType = "zlib";
  if (version === 3) {
    need(V3_MIN_HEADER_LENGTH, "version 3 header");
    headerLength = u32(HEADER.headerLength);
    if (headerLength < V3_MIN_HEADER_LENGTH) {
      throw bad(
        HEADER.headerLength,
        headerLength,
        "is shorter than the 104 bytes a version 3 header has",
      );
    }
    if (headerLength > clusterSize) {
      throw bad(
        HEADER.headerLength,
        headerLength,
        `exceeds the cluster size (${clusterSize})`,
      );
    }
    incompatibleFeatures = view.getBigUint64(
      HEADER.incompatibleFeatures.offset,
    );
    compatibleFeatures = view.getBigUint64(HEADER.compatibleFeatures.offset);
    autoclearFeatures = view.getBigUint64(HEADER.autoclearFeatures.offset);
    refcountOrder = u32(HEADER.refcountOrder);
    if (refcountOrder > MAX_REFCOUNT_ORDER) {
      throw bad(
        HEADER.refcountOrder,
        refcountOrder,
        "is above 6 (refcounts are at most 64 bits wide)",
      );
    }
    if (headerLength > HEADER.compressionType.offset) {
      need(HEADER.compressionType.offset + 1, "header");
      const type = bytes[HEADER.compressionType.offset];
      if (type > COMPRESSION_TYPE.zstd) {
        throw bad(
          HEADER.compressionType,
          type,
          "is unknown (0 is zlib, 1 is zstd)",
        );
      }
      compressionType = type === COMPRESSION_TYPE.zstd ? "zstd" : "zlib";
    }
    const bit3 = bit(incompatibleFeatures, INCOMPATIBLE.compressionType.bit);
    if (bit3 !== (compressionType !== "zlib")) {
      throw bad(
        HEADER.incompatibleFeatures,
        incompatibleFeatures,
        bit3
          ? "has the compression type bit set, but the compression type is zlib"
          : `lacks the compression type bit, but the compression type is ${compressionType}`,
      );
    }
  }

  const backingFileOffset = u64(HEADER.backingFileOffset);
  const backingFileSize = u32(HEADER.backingFileSize);
  if (backingFileOffset > clusterSize) {
    throw bad(
      HEADER.backingFileOffset,
      backingFileOffset,
      `lies beyond the first cluster (${clusterSize} bytes)`,
    );
  }
  if (
    backingFileOffset !== 0 &&
    backingFileSize >
      Math.min(MAX_BACKING_FILE_SIZE, clusterSize - backingFileOffset)
  ) {
    throw bad(
      HEADER.backingFileSize,
      backingFileSize,
      "is too long for a backing file name (at most 1023 bytes, inside the first cluster)",
    );
  }

  const size = u64(HEADER.size);
  const cryptMethod = u32(HEADER.cryptMethod);
  if (cryptMethod > CRYPT_METHOD.luks) {
    throw bad(
      HEADER.cryptMethod,
      cryptMethod,
      "is unknown (0 none, 1 AES, 2 LUKS)",
    );
  }

  const refcountTableOffset = u64(HEADER.refcountTableOffset);
  const refcountTableClusters = u32(HEADER.refcountTableClusters);
  // QEMU opens an image without a refcount table only to check it
  // (BDRV_O_CHECK in qcow2_do_open).
  if (refcountTableClusters === 0 && !options.check) {
    throw bad(
      HEADER.refcountTableClusters,
      0,
      "is 0: the image has no refcount table",
    );
  }
  if (refcountTableClusters * clusterSize > MAX_REFCOUNT_TABLE_BYTES) {
    throw bad(
      HEADER.refcountTableClusters,
      refcountTableClusters,
      "makes the refcount table larger than 8 MiB",
    );
  }
  if (!isAligned(refcountTableOffset)) {
    throw bad(
      HEADER.refcountTableOffset,
      refcountTableOffset,
      "is not aligned to a cluster",
    );
  }

  const nbSnapshots = u32(HEADER.nbSnapshots);
  const snapshotsOffset = u64(HEADER.snapshotsOffset);
  if (nbSnapshots > MAX_SNAPSHOTS) {
    throw bad(HEADER.nbSnapshots, nbSnapshots, "is above 65536");
  }
  if (!isAligned(snapshotsOffset)) {
    throw bad(
      HEADER.snapshotsOffset,
      snapshotsOffset,
      "is not aligned to a cluster",
    );
  }

  const l1Size = u32(HEADER.l1Size);
  const l1TableOffset = u64(HEADER.l1TableOffset);
  if (l1Size > MAX_L1_BYTES / 8) {
    throw bad(
      HEADER.l1Size,
      l1Size,
      "makes the active L1 table larger than 32 MiB",
    );
  }
  if (!isAligned(l1TableOffset)) {
    throw bad(
      HEADER.l1TableOffset,
      l1TableOffset,
      "is not aligned to a cluster",
    );
  }
  // The L1 table must cover the virtual size.
  const extendedL2 = bit(incompatibleFeatures, INCOMPATIBLE.extendedL2.bit);
  const l2Bits = clusterBits - (extendedL2 ? 4 : 3);
  const bytesPerL1Entry = 2 ** (clusterBits + l2Bits);
  const l1Needed = Math.ceil(size / bytesPerL1Entry);
  if (l1Needed > MAX_L1_BYTES / 8) {
    throw new Qcow2Error(
      "TOO_LARGE",
      `Cannot read qcow2 image: the virtual size ${size} is too big for ${clusterSize}-byte clusters`,
      { offset: HEADER.size.offset },
    );
  }
  if (l1Size < l1Needed) {
    throw bad(
      HEADER.l1Size,
      l1Size,
      `is too small for the virtual size ${size} (needs ${l1Needed} entries)`,
    );
  }

  const features: Qcow2Features = {
    dirty: bit(incompatibleFeatures, INCOMPATIBLE.dirty.bit),
    corrupt: bit(incompatibleFeatures, INCOMPATIBLE.corrupt.bit),
    externalDataFile: bit(
      incompatibleFeatures,
      INCOMPATIBLE.externalDataFile.bit,
    ),
    compressionType,
    extendedL2,
    lazyRefcounts: bit(compatibleFeatures, COMPATIBLE.lazyRefcounts.bit),
    bitmaps: bit(autoclearFeatures, AUTOCLEAR.bitmaps.bit),
    rawExternalData: bit(autoclearFeatures, AUTOCLEAR.rawExternalData.bit),
  };
  if (extendedL2 && clusterSize / 32 < 512) {
    throw bad(
      HEADER.clusterBits,
      clusterBits,
      "is too small for extended L2 entries (subclusters must be at least 512 bytes)",
    );
  }

  const extensionsEnd = backingFileOffset !== 0
    ? backingFileOffset
    : clusterSize;
  const extensions = parseExtensions(
    bytes,
    headerLength,
    extensionsEnd,
    cryptMethod,
  );

  // A C string in QEMU: cut at NUL; empty is no backing file
  // (qcow2_do_open, then bdrv_open_backing_file's `backing_file[0]`).
  let backingFile: string | undefined;
  let backingFileUtf8: boolean | undefined;
  if (backingFileOffset !== 0) {
    need(backingFileOffset + backingFileSize, "backing file name");
    const name = imageName(
      bytes.subarray(backingFileOffset, backingFileOffset + backingFileSize),
    );
    if (name.text !== "") {
      backingFile = name.text;
      if (!name.utf8) backingFileUtf8 = false;
    }
  }
  if (cryptMethod === CRYPT_METHOD.luks && !extensions.encryption) {
    throw bad(
      HEADER.cryptMethod,
      2,
      "is LUKS, but the full disk encryption header extension is missing",
    );
  }

  return {
    magic: QCOW2_MAGIC,
    version,
    backingFileOffset,
    backingFileSize,
    backingFile,
    ...(backingFileUtf8 === false ? { backingFileUtf8 } : {}),
    clusterBits,
    clusterSize,
    size,
    cryptMethod: cryptMethod as CryptMethod,
    l1Size,
    l1TableOffset,
    refcountTableOffset,
    refcountTableClusters,
    nbSnapshots,
    snapshotsOffset,
    incompatibleFeatures,
    compatibleFeatures,
    autoclearFeatures,
    features,
    unknownIncompatibleFeatures: incompatibleFeatures &
      ~KNOWN_INCOMPATIBLE_MASK,
    refcountOrder,
    refcountBits: 2 ** refcountOrder,
    headerLength,
    compressionType,
    extensions,
  };
}

/**
 * Reads and parses the header of an image through a {@linkcode ByteSource}.
 *
 * @param source The image file.
 * @param options As {@linkcode parseHeader}'s.
 * @returns The parsed header.
 * @throws {Qcow2Error} As {@linkcode parseHeader}.
 *
 * @example Reading a header from bytes in memory
 * ```ts
 * import { bytesSource, readHeader } from "@qcow2/qcow2";
 * import { assertRejects } from "@std/assert";
 *
 * await assertRejects(() => readHeader(bytesSource(new Uint8Array(8))));
 * ```
 */
export async function readHeader(
  source: ByteSource,
  options: { check?: boolean } = {},
): Promise<Qcow2Header> {
  const start = new Uint8Array(Math.min(112, source.size));
  await source.readAt(0, start);
  const span = Math.min(headerSpan(start), source.size);
  const bytes = span <= start.length
    ? start
    : await readExact(source, 0, span, "header");
  return parseHeader(bytes, options);
}

/**
 * Throws `UNSUPPORTED_FEATURE` if the header sets incompatible feature bits
 * this library does not know, naming them from the image's feature name table
 * where it has one (as QEMU does).
 *
 * @param header A parsed header.
 */
export function checkKnownFeatures(header: Qcow2Header): void {
  if (header.unknownIncompatibleFeatures === 0n) return;
  const names: string[] = [];
  for (let b = 0n; b < 64n; b++) {
    if ((header.unknownIncompatibleFeatures & (1n << b)) === 0n) continue;
    const named = header.extensions.featureNames.find((f) =>
      f.type === "incompatible" && BigInt(f.bit) === b
    );
    names.push(named ? `${named.name} (bit ${b})` : `bit ${b}`);
  }
  throw new Qcow2Error(
    "UNSUPPORTED_FEATURE",
    `Cannot read qcow2 image: it uses incompatible features this version does not know: ${
      names.join(", ")
    } (mask ${hex(header.unknownIncompatibleFeatures)})`,
    {
      offset: HEADER.incompatibleFeatures.offset,
      field: HEADER.incompatibleFeatures.name,
      value: header.unknownIncompatibleFeatures,
    },
  );
}

/** Whether bit `n` of a feature field is set. */
function bit(mask: bigint, n: number): boolean {
  return (mask & (1n << BigInt(n))) !== 0n;
}

/**
 * Converts a 64-bit header field to a number, refusing what a number
 * cannot hold (qcow2 and qcow v1 headers alike).
 *
 * @param value The field as read.
 * @param field Its spec name, for the message.
 * @param offset Its file offset.
 * @param format The image format, for the message.
 * @returns The value.
 * @throws {Qcow2Error} `TOO_LARGE` above 2^53 - 1.
 *
 * @example A size too large for a number
 * ```ts
 * import { headerNumber } from "./header.ts";
 * import { Qcow2Error } from "../errors.ts";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(headerNumber(512n, "size", 24), 512);
 * assertEquals(assertThrows(() => headerNumber(1n << 60n, "size", 24, "qcow"), Qcow2Error).code, "TOO_LARGE");
 * ```
 */
export function headerNumber(
  value: bigint,
  field: string,
  offset: number,
  format: "qcow2" | "qcow" = "qcow2",
): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new Qcow2Error(
      "TOO_LARGE",
      `Cannot read ${format} image: header field ${field} = ${
        hex(value)
      } is larger than 2^53 - 1`,
      { offset, field, value },
    );
  }
  return Number(value);
}
