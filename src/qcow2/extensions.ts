/**
 * qcow2 header extensions: the typed records between the fixed header and
 * the end of the first cluster.
 *
 * @module
 */

import { imageName } from "./names.ts";
import { hex, Qcow2Error } from "../errors.ts";
import { CRYPT_METHOD, EXTENSION_TYPES, FEATURE_TYPES } from "./layout.ts";

/** Type codes of the header extensions the format defines. */
export { EXTENSION_TYPES } from "./layout.ts";

/**
 * One entry of the feature name table extension.
 *
 * @example The feature names QEMU writes into a version 3 image
 * ```ts
 * import { readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const { featureNames } = (await readHeader(bytes)).extensions;
 * assertEquals(featureNames[0], { type: "incompatible", bit: 0, name: "dirty bit" });
 * const lazy = featureNames.find((f) => f.type === "compatible" && f.bit === 0);
 * assertEquals(lazy?.name, "lazy refcounts");
 * ```
 */
export interface FeatureName {
  /** Which feature field the bit belongs to. */
  type: "incompatible" | "compatible" | "autoclear";
  /** The bit number, 0 to 63. */
  bit: number;
  /** The feature's name. */
  name: string;
}

/**
 * The bitmaps extension: where the persistent dirty bitmaps are described.
 *
 * @example Reading the bitmaps extension of a header
 * ```ts
 * import { parseHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * // An image without bitmaps, given one bitmap's extension in place of its
 * // feature name table (as `qemu-img bitmap --add` would record one).
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * const ext = new DataView(new ArrayBuffer(40)); // extension, then end marker
 * ext.setUint32(0, 0x23852875); // the bitmaps extension's type
 * ext.setUint32(4, 24); // its length
 * ext.setUint32(8, 1); // one bitmap
 * ext.setBigUint64(16, 40n); // bitmap directory size
 * ext.setBigUint64(24, 0x50000n); // bitmap directory offset
 * bytes.set(new Uint8Array(ext.buffer), 112); // where the header ends
 * bytes[95] |= 1; // autoclear bit 0: the bitmaps are consistent
 * const header = parseHeader(bytes);
 * assertEquals(header.features.bitmaps, true);
 * assertEquals(header.extensions.bitmaps, { count: 1, directorySize: 40, directoryOffset: 0x50000 });
 * ```
 */
export interface BitmapsExtension {
  /** Number of bitmaps, 1 to 65535. */
  count: number;
  /** Size in bytes of the bitmap directory. */
  directorySize: number;
  /** File offset of the bitmap directory. */
  directoryOffset: number;
}

/**
 * The full disk encryption extension: where the LUKS header lies.
 *
 * @example A LUKS-encrypted header parses; without a LUKS header the image does not open
 * ```ts
 * import { openImage, parseHeader, Qcow2Error } from "@qcow2/qcow2";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * // A plain image made to look LUKS-encrypted: crypt_method 2, and the
 * // extension that says where the LUKS header lies.
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * const view = new DataView(bytes.buffer);
 * view.setUint32(32, 2); // crypt_method: LUKS
 * view.setUint32(112, 0x0537be77); // the full disk encryption extension's type
 * view.setUint32(116, 16); // its length
 * view.setBigUint64(120, 0x30000n); // LUKS header offset
 * view.setBigUint64(128, 0x100000n); // LUKS header length
 * view.setBigUint64(136, 0n); // end of the extensions
 * assertEquals(parseHeader(bytes).extensions.encryption, { offset: 0x30000, length: 0x100000 });
 * // The file ends before 0x30000: there is no LUKS header to read.
 * const error = await assertRejects(() => openImage(bytes), Qcow2Error);
 * assertEquals(error.code, "TRUNCATED");
 * ```
 */
export interface EncryptionExtension {
  /** File offset of the LUKS header area. */
  offset: number;
  /** Length in bytes of the LUKS header area. */
  length: number;
}

/**
 * An extension this library does not interpret, kept as raw bytes.
 *
 * @example An extension from a newer writer is kept, not refused
 * ```ts
 * import { imageInfo, parseHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * bytes.set([
 *   0x0b, 0xad, 0xca, 0xfe, 0, 0, 0, 3, // type 0x0badcafe, 3 bytes long
 *   1, 2, 3, 0, 0, 0, 0, 0, // its data, padded to 8 bytes
 *   0, 0, 0, 0, 0, 0, 0, 0, // end of the extensions
 * ], 112); // where the header ends
 * const header = parseHeader(bytes);
 * assertEquals(header.extensions.unknown, [{ type: 0x0badcafe, data: new Uint8Array([1, 2, 3]) }]);
 * assertEquals(imageInfo(header, "x.qcow2")["qcow2-header"]?.["unknown-extensions"], ["0xbadcafe"]);
 * ```
 */
export interface UnknownExtension {
  /** The extension's type code. */
  type: number;
  /** Its payload, without padding. */
  data: Uint8Array;
}

/**
 * All header extensions of an image.
 *
 * @example The extensions of an image with an external data file
 * ```ts
 * import { readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/ext_data.qcow2", import.meta.url));
 * const { extensions } = await readHeader(bytes);
 * assertEquals(extensions.externalDataFile, "ext_data.data");
 * assertEquals(extensions.backingFormat, undefined); // no backing file
 * assertEquals(extensions.featureNames.length, 8);
 * assertEquals(extensions.unknown, []);
 * ```
 */
export interface HeaderExtensions {
  /**
   * Format of the backing file (`"qcow2"`, `"raw"`, ...), if named: up to
   * its first NUL byte; absent when that leaves it empty, so the format is
   * probed (as in QEMU).
   */
  backingFormat?: string;
  /** Names of feature bits, as the image describes them. */
  featureNames: FeatureName[];
  /** The bitmaps extension, if present. */
  bitmaps?: BitmapsExtension;
  /** The LUKS header location, if present. */
  encryption?: EncryptionExtension;
  /**
   * Name of the external data file, if present: up to its first NUL byte,
   * bytes that are not UTF-8 as U+FFFD (see
   * {@linkcode externalDataFileUtf8}). It may be empty, which QEMU lists
   * but cannot open.
   */
  externalDataFile?: string;
  /** False when the external data file name's bytes are not UTF-8. */
  externalDataFileUtf8?: boolean;
  /** Extensions of unknown type, in file order. */
  unknown: UnknownExtension[];
}

/**
 * Parses the extensions from `start` to `end` of the header bytes, stopping
 * at the end marker, as QEMU does.
 *
 * @param bytes The start of the image file.
 * @param start The header length: where the first extension begins.
 * @param end Where extensions must stop: the backing name or the first
 * cluster's end.
 * @param cryptMethod The header's encryption method, to check the FDE
 * extension against.
 * @returns The extensions found.
 */
export function parseExtensions(
  bytes: Uint8Array,
  start: number,
  end: number,
  cryptMethod: number,
): HeaderExtensions {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const result: HeaderExtensions = { featureNames: [], unknown: [] };
  const bad = (type: number, at: number, why: string) =>
    new Qcow2Error(
      "BAD_EXTENSION",
      `Cannot read qcow2 image: header extension ${hex(type)} at ${
        hex(at)
      } ${why}`,
      { offset: at },
    );
  let offset = start;
  while (offset + 8 <= end) {
    if (offset + 8 > bytes.length) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow2 image: the file ends inside the header extensions at ${
          hex(offset)
        }`,
        { offset },
      );
    }
    const type = view.getUint32(offset);
    const length = view.getUint32(offset + 4);
    const at = offset;
    offset += 8;
    if (length > end - offset) {
      throw bad(type, at, `is too large: ${length} bytes run past ${hex(end)}`);
    }
    if (offset + length > bytes.length) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow2 image: the file ends inside header extension ${
          hex(type)
        } at ${hex(at)}`,
        { offset: at },
      );
    }
    if (type === EXTENSION_TYPES.end) break;
    const data = bytes.subarray(offset, offset + length);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    switch (type) {
      case EXTENSION_TYPES.backingFormat:
        if (length >= 16) {
          throw bad(
            type,
            at,
            `(backing format) is ${length} bytes long; at most 15 are allowed`,
          );
        }
        // Probed when empty, as QEMU's `backing_format[0]` check does.
        result.backingFormat = imageName(data).text || undefined;
        break;
      case EXTENSION_TYPES.featureNameTable:
        for (let i = 0; i + 48 <= length; i += 48) {
          const name = imageName(data.subarray(i + 2, i + 48)).text;
          // QEMU's report_unsupported_feature stops at the first entry
          // whose name is empty.
          if (name === "") break;
          const kind = FEATURE_TYPES[data[i]];
          if (kind === undefined) continue;
          result.featureNames.push({ type: kind, bit: data[i + 1], name });
        }
        break;
      case EXTENSION_TYPES.bitmaps: {
        if (length !== 24) {
          throw bad(
            type,
            at,
            `(bitmaps) is ${length} bytes long; it must be 24`,
          );
        }
        const count = dv.getUint32(0);
        const reserved = dv.getUint32(4);
        const size = dv.getBigUint64(8);
        const dirOffset = dv.getBigUint64(16);
        if (count < 1 || count > 65535) {
          throw bad(
            type,
            at,
            `(bitmaps) counts ${count} bitmaps; 1 to 65535 are allowed`,
          );
        }
        if (reserved !== 0) {
          throw bad(type, at, "(bitmaps) has non-zero reserved bytes");
        }
        if (size > 1024n * 65535n) {
          throw bad(
            type,
            at,
            `(bitmaps) has a directory of ${size} bytes, above the 64 MiB limit`,
          );
        }
        if (
          dirOffset > BigInt(Number.MAX_SAFE_INTEGER) || dirOffset % 512n !== 0n
        ) {
          throw bad(
            type,
            at,
            `(bitmaps) has an invalid directory offset ${hex(dirOffset)}`,
          );
        }
        result.bitmaps = {
          count,
          directorySize: Number(size),
          directoryOffset: Number(dirOffset),
        };
        break;
      }
      case EXTENSION_TYPES.fullDiskEncryption: {
        if (cryptMethod !== CRYPT_METHOD.luks) {
          throw bad(
            type,
            at,
            "(full disk encryption) is present, but the image is not LUKS-encrypted",
          );
        }
        if (length !== 16) {
          throw bad(
            type,
            at,
            `(full disk encryption) is ${length} bytes long; it must be 16`,
          );
        }
        const fdeOffset = dv.getBigUint64(0);
        const fdeLength = dv.getBigUint64(8);
        const max = BigInt(Number.MAX_SAFE_INTEGER);
        if (fdeOffset > max || fdeLength > max || fdeOffset % 512n !== 0n) {
          throw bad(
            type,
            at,
            `(full disk encryption) has an invalid area ${hex(fdeOffset)}+${
              hex(fdeLength)
            }`,
          );
        }
        result.encryption = {
          offset: Number(fdeOffset),
          length: Number(fdeLength),
        };
        break;
      }
      case EXTENSION_TYPES.externalDataFile:
        {
          const name = imageName(data);
          result.externalDataFile = name.text;
          if (!name.utf8) result.externalDataFileUtf8 = false;
          else delete result.externalDataFileUtf8;
        }
        break;
      default:
        result.unknown.push({ type, data: data.slice() });
    }
    offset += (length + 7) & ~7;
  }
  return result;
}
