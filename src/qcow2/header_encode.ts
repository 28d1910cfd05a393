/**
 * Encode a qcow2 header and its extensions: the first cluster of an image as
 * QEMU writes it (`qcow2_update_header` in `block/qcow2.c`): the fixed
 * header, the extensions in QEMU's order, the end marker, then the backing
 * file name, the rest zero.
 *
 * @module
 */

import {
  AUTOCLEAR,
  COMPATIBLE,
  COMPRESSION_TYPE,
  EXTENSION_ALIGNMENT,
  EXTENSION_HEADER_SIZE,
  EXTENSION_TYPES,
  FEATURE_NAME_ENTRY_SIZE,
  FEATURE_NAME_SIZE,
  FEATURE_TYPES,
  HEADER,
  INCOMPATIBLE,
  MAGIC,
  MAX_BACKING_FILE_SIZE,
  MAX_BACKING_FORMAT_SIZE,
  V2_HEADER_LENGTH,
  V3_HEADER_LENGTH,
  V3_MIN_HEADER_LENGTH,
} from "./layout.ts";
import type { CompressionType, Qcow2Features, Qcow2Header } from "./header.ts";
import type { FeatureName, HeaderExtensions } from "./extensions.ts";

/**
 * What {@linkcode encodeHeader} needs: the stored fields of a header. A
 * parsed {@linkcode Qcow2Header} is one.
 */
export type HeaderFields =
  & Pick<
    Qcow2Header,
    | "version"
    | "clusterBits"
    | "size"
    | "cryptMethod"
    | "l1Size"
    | "l1TableOffset"
    | "refcountTableOffset"
    | "refcountTableClusters"
    | "nbSnapshots"
    | "snapshotsOffset"
    | "incompatibleFeatures"
    | "compatibleFeatures"
    | "autoclearFeatures"
    | "refcountOrder"
    | "compressionType"
  >
  & {
    /** Header length; defaults to 72 for version 2 and 112 for version 3. */
    headerLength?: number;
    /** The backing file name, if any. */
    backingFile?: string;
    /**
     * Where to put the backing file name. Kept when it lies after the
     * extensions and the name fits the cluster there (an image edited
     * after QEMU wrote it); otherwise, or when absent or 0, the name follows
     * the extensions as QEMU writes it.
     */
    backingFileOffset?: number;
    /** The extensions to write; none when absent. */
    extensions?: Partial<HeaderExtensions>;
  };

/**
 * The feature name table QEMU 7.2 writes into every version 3 image
 * (`qcow2_update_header`), in its order.
 *
 * @example
 * ```ts
 * import { QEMU_FEATURE_NAMES } from "./header_encode.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(QEMU_FEATURE_NAMES.length, 8);
 * assertEquals(QEMU_FEATURE_NAMES[5], { type: "compatible", bit: 0, name: "lazy refcounts" });
 * ```
 */
export const QEMU_FEATURE_NAMES: readonly FeatureName[] = [
  ...Object.values(INCOMPATIBLE).map(({ bit, name }) => ({
    type: "incompatible" as const,
    bit,
    name,
  })),
  ...Object.values(COMPATIBLE).map(({ bit, name }) => ({
    type: "compatible" as const,
    bit,
    name,
  })),
  ...Object.values(AUTOCLEAR).map(({ bit, name }) => ({
    type: "autoclear" as const,
    bit,
    name,
  })),
];

/**
 * The three raw feature fields for a set of named features.
 *
 * @param features The features to set; absent ones are clear.
 * @returns The incompatible, compatible and autoclear bits.
 *
 * @example An image with extended L2 entries and lazy refcounts
 * ```ts
 * import { encodeFeatures } from "./header_encode.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(encodeFeatures({ extendedL2: true, lazyRefcounts: true }), {
 *   incompatibleFeatures: 16n,
 *   compatibleFeatures: 1n,
 *   autoclearFeatures: 0n,
 * });
 * ```
 */
export function encodeFeatures(features: Partial<Qcow2Features>): {
  incompatibleFeatures: bigint;
  compatibleFeatures: bigint;
  autoclearFeatures: bigint;
} {
  const bits = (table: Record<string, { bit: number }>) => {
    let mask = 0n;
    for (const [key, { bit }] of Object.entries(table)) {
      const value = features[key as keyof Qcow2Features];
      // compression_type: bit 3 says the type is not zlib.
      if (key === "compressionType" ? value === "zstd" : value === true) {
        mask |= 1n << BigInt(bit);
      }
    }
    return mask;
  };
  return {
    incompatibleFeatures: bits(INCOMPATIBLE),
    compatibleFeatures: bits(COMPATIBLE),
    autoclearFeatures: bits(AUTOCLEAR),
  };
}

/**
 * Encodes header extensions as QEMU orders them (`qcow2_update_header`):
 * full disk encryption, backing format, external data file, feature name
 * table, bitmaps, then unknown extensions kept from the image, and the end
 * marker. Each payload is padded with zeros to 8 bytes.
 *
 * @param extensions The extensions to write.
 * @returns The bytes that follow the fixed header.
 * @throws {RangeError} If the backing format is longer than 15 bytes or a
 * feature name longer than 46.
 *
 * @example Only a backing format
 * ```ts
 * import { encodeExtensions } from "./header_encode.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = encodeExtensions({ backingFormat: "qcow2" });
 * assertEquals(bytes.length, 8 + 8 + 8); // extension header, "qcow2" padded, end
 * assertEquals(new DataView(bytes.buffer).getUint32(0), 0xe2792aca);
 * ```
 */
export function encodeExtensions(
  extensions: Partial<HeaderExtensions>,
): Uint8Array {
  const parts: Uint8Array[] = [];
  const add = (type: number, data: Uint8Array) => {
    const padded = Math.ceil(data.length / EXTENSION_ALIGNMENT) *
      EXTENSION_ALIGNMENT;
    const part = new Uint8Array(EXTENSION_HEADER_SIZE + padded);
    const view = new DataView(part.buffer);
    view.setUint32(0, type);
    view.setUint32(4, data.length);
    part.set(data, EXTENSION_HEADER_SIZE);
    parts.push(part);
  };
  const text = (s: string) => new TextEncoder().encode(s);
  if (extensions.encryption) {
    const data = new Uint8Array(16);
    const view = new DataView(data.buffer);
    view.setBigUint64(0, BigInt(extensions.encryption.offset));
    view.setBigUint64(8, BigInt(extensions.encryption.length));
    add(EXTENSION_TYPES.fullDiskEncryption, data);
  }
  if (extensions.backingFormat !== undefined) {
    const data = text(extensions.backingFormat);
    if (data.length > MAX_BACKING_FORMAT_SIZE) {
      throw new RangeError(
        `backing format '${extensions.backingFormat}' is longer than ${MAX_BACKING_FORMAT_SIZE} bytes`,
      );
    }
    add(EXTENSION_TYPES.backingFormat, data);
  }
  if (extensions.externalDataFile !== undefined) {
    add(EXTENSION_TYPES.externalDataFile, text(extensions.externalDataFile));
  }
  const names = extensions.featureNames ?? [];
  if (names.length > 0) {
    const data = new Uint8Array(names.length * FEATURE_NAME_ENTRY_SIZE);
    names.forEach((f, i) => {
      const name = text(f.name);
      if (name.length > FEATURE_NAME_SIZE) {
        throw new RangeError(
          `feature name '${f.name}' is longer than ${FEATURE_NAME_SIZE} bytes`,
        );
      }
      const at = i * FEATURE_NAME_ENTRY_SIZE;
      data[at] = FEATURE_TYPES.indexOf(f.type);
      data[at + 1] = f.bit;
      data.set(name, at + 2);
    });
    add(EXTENSION_TYPES.featureNameTable, data);
  }
  if (extensions.bitmaps) {
    const data = new Uint8Array(24);
    const view = new DataView(data.buffer);
    view.setUint32(0, extensions.bitmaps.count);
    view.setBigUint64(8, BigInt(extensions.bitmaps.directorySize));
    view.setBigUint64(16, BigInt(extensions.bitmaps.directoryOffset));
    add(EXTENSION_TYPES.bitmaps, data);
  }
  for (const u of extensions.unknown ?? []) add(u.type, u.data);
  parts.push(new Uint8Array(EXTENSION_HEADER_SIZE)); // the end marker
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/**
 * Encodes the first cluster of a qcow2 image: the fixed header (version 2
 * or 3), the extensions ({@linkcode encodeExtensions}), and the backing file
 * name right after them, as QEMU lays them out; `backing_file_offset` and
 * `backing_file_size` are computed from that layout (an offset the header
 * gives further on is kept). Re-encoding the parsed
 * header of an image `qemu-img` wrote gives back its first cluster.
 *
 * @param header The stored fields; a parsed {@linkcode Qcow2Header} will do.
 * @returns One cluster (2^cluster_bits bytes).
 * @throws {RangeError} If the version is not 2 or 3, `header_length` is
 * outside what the version allows, the compression type disagrees with
 * incompatible bit 3, a version 2 header has feature bits or zstd, the
 * backing file name is longer than 1023 bytes, or the whole does not fit one
 * cluster.
 *
 * @example Round trip of an image qemu-img made
 * ```ts
 * import { encodeHeader } from "./header_encode.ts";
 * import { parseHeader } from "./header.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/chain_top.qcow2", import.meta.url));
 * const header = parseHeader(bytes);
 * assertEquals(encodeHeader(header), bytes.subarray(0, header.clusterSize));
 * ```
 */
export function encodeHeader(header: HeaderFields): Uint8Array {
  const { version } = header;
  if (version !== 2 && version !== 3) {
    throw new RangeError(`qcow2 version must be 2 or 3, not ${version}`);
  }
  const clusterSize = 2 ** header.clusterBits;
  const headerLength = header.headerLength ??
    (version === 2 ? V2_HEADER_LENGTH : V3_HEADER_LENGTH);
  if (
    version === 2
      ? headerLength !== V2_HEADER_LENGTH
      : headerLength < V3_MIN_HEADER_LENGTH || headerLength % 8 !== 0 &&
          headerLength !== V3_MIN_HEADER_LENGTH
  ) {
    throw new RangeError(
      `header_length ${headerLength} does not suit a version ${version} header`,
    );
  }
  const zstd = header.compressionType !== "zlib";
  const bit3 = (header.incompatibleFeatures &
    (1n << BigInt(INCOMPATIBLE.compressionType.bit))) !== 0n;
  if (zstd !== bit3) {
    throw new RangeError(
      `compression type ${header.compressionType} disagrees with incompatible feature bit 3`,
    );
  }
  if (
    version === 2 &&
    (zstd || header.incompatibleFeatures || header.compatibleFeatures ||
      header.autoclearFeatures || header.refcountOrder !== 4)
  ) {
    throw new RangeError(
      "a version 2 header has no feature bits, 16-bit refcounts and zlib only",
    );
  }
  if (zstd && headerLength <= HEADER.compressionType.offset) {
    throw new RangeError("compression type zstd needs header_length 112");
  }

  const extensions = encodeExtensions(header.extensions ?? {});
  const backing = header.backingFile === undefined
    ? new Uint8Array(0)
    : new TextEncoder().encode(header.backingFile);
  if (backing.length > MAX_BACKING_FILE_SIZE) {
    throw new RangeError(
      `backing file name is longer than ${MAX_BACKING_FILE_SIZE} bytes`,
    );
  }
  const afterExtensions = headerLength + extensions.length;
  const kept = header.backingFileOffset ?? 0;
  const backingOffset = kept >= afterExtensions &&
      kept + backing.length <= clusterSize
    ? kept
    : afterExtensions;
  if (backingOffset + backing.length > clusterSize) {
    throw new RangeError(
      `the header, its extensions and the backing file name take ${
        backingOffset + backing.length
      } bytes, more than one ${clusterSize}-byte cluster`,
    );
  }

  const bytes = new Uint8Array(clusterSize);
  const view = new DataView(bytes.buffer);
  const u32 = (f: { offset: number }, v: number) => view.setUint32(f.offset, v);
  const u64 = (f: { offset: number }, v: number | bigint) =>
    view.setBigUint64(f.offset, BigInt(v));
  u32(HEADER.magic, MAGIC);
  u32(HEADER.version, version);
  if (header.backingFile !== undefined) {
    u64(HEADER.backingFileOffset, backingOffset);
    u32(HEADER.backingFileSize, backing.length);
  }
  u32(HEADER.clusterBits, header.clusterBits);
  u64(HEADER.size, header.size);
  u32(HEADER.cryptMethod, header.cryptMethod);
  u32(HEADER.l1Size, header.l1Size);
  u64(HEADER.l1TableOffset, header.l1TableOffset);
  u64(HEADER.refcountTableOffset, header.refcountTableOffset);
  u32(HEADER.refcountTableClusters, header.refcountTableClusters);
  u32(HEADER.nbSnapshots, header.nbSnapshots);
  u64(HEADER.snapshotsOffset, header.snapshotsOffset);
  if (version === 3) {
    u64(HEADER.incompatibleFeatures, header.incompatibleFeatures);
    u64(HEADER.compatibleFeatures, header.compatibleFeatures);
    u64(HEADER.autoclearFeatures, header.autoclearFeatures);
    u32(HEADER.refcountOrder, header.refcountOrder);
    u32(HEADER.headerLength, headerLength);
    if (headerLength > HEADER.compressionType.offset) {
      bytes[HEADER.compressionType.offset] =
        COMPRESSION_TYPE[header.compressionType as CompressionType];
    }
  }
  bytes.set(extensions, headerLength);
  bytes.set(backing, backingOffset);
  return bytes;
}
