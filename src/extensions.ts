/**
 * qcow2 header extensions: the typed records between the fixed header and
 * the end of the first cluster.
 *
 * @module
 */

import { hex, Qcow2Error } from "./errors.ts";

/** Type codes of the header extensions the format defines. */
export const EXTENSION_TYPES = {
  end: 0x00000000,
  backingFormat: 0xe2792aca,
  featureNameTable: 0x6803f857,
  bitmaps: 0x23852875,
  fullDiskEncryption: 0x0537be77,
  externalDataFile: 0x44415441,
} as const;

/** One entry of the feature name table extension. */
export interface FeatureName {
  /** Which feature field the bit belongs to. */
  type: "incompatible" | "compatible" | "autoclear";
  /** The bit number, 0 to 63. */
  bit: number;
  /** The feature's name. */
  name: string;
}

/** The bitmaps extension: where the persistent dirty bitmaps are described. */
export interface BitmapsExtension {
  /** Number of bitmaps, 1 to 65535. */
  count: number;
  /** Size in bytes of the bitmap directory. */
  directorySize: number;
  /** File offset of the bitmap directory. */
  directoryOffset: number;
}

/** The full disk encryption extension: where the LUKS header lies. */
export interface EncryptionExtension {
  /** File offset of the LUKS header area. */
  offset: number;
  /** Length in bytes of the LUKS header area. */
  length: number;
}

/** An extension this library does not interpret, kept as raw bytes. */
export interface UnknownExtension {
  /** The extension's type code. */
  type: number;
  /** Its payload, without padding. */
  data: Uint8Array;
}

/** All header extensions of an image. */
export interface HeaderExtensions {
  /** Format of the backing file (`"qcow2"`, `"raw"`, ...), if named. */
  backingFormat?: string;
  /** Names of feature bits, as the image describes them. */
  featureNames: FeatureName[];
  /** The bitmaps extension, if present. */
  bitmaps?: BitmapsExtension;
  /** The LUKS header location, if present. */
  encryption?: EncryptionExtension;
  /** Name of the external data file, if present. */
  externalDataFile?: string;
  /** Extensions of unknown type, in file order. */
  unknown: UnknownExtension[];
}

const FEATURE_TYPES = ["incompatible", "compatible", "autoclear"] as const;

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
  const text = (data: Uint8Array) => new TextDecoder().decode(data);
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
        result.backingFormat = text(data);
        break;
      case EXTENSION_TYPES.featureNameTable:
        for (let i = 0; i + 48 <= length; i += 48) {
          const kind = FEATURE_TYPES[data[i]];
          if (kind === undefined) continue;
          const raw = data.subarray(i + 2, i + 48);
          const nul = raw.indexOf(0);
          result.featureNames.push({
            type: kind,
            bit: data[i + 1],
            name: text(nul < 0 ? raw : raw.subarray(0, nul)),
          });
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
        if (cryptMethod !== 2) {
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
        result.externalDataFile = text(data);
        break;
      default:
        result.unknown.push({ type, data: data.slice() });
    }
    offset += (length + 7) & ~7;
  }
  return result;
}
