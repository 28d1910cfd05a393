/**
 * The LUKS1 header: every field named once, parsed and checked in the order
 * of QEMU's `qcrypto_block_luks_load_header`, `_check_header` and
 * `_parse_header` (crypto/block-luks.c), and encoded for new images.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import { HASH_LENGTHS, type HashAlgorithm } from "./provider.ts";
import type {
  CipherAlgorithm,
  CipherMode,
  CipherSpec,
} from "./sector_cipher.ts";

/** Bytes of the LUKS1 header with its 8 key slot descriptions. */
export const LUKS_HEADER_SIZE = 592;
/** LUKS1 key slots. */
export const LUKS_KEY_SLOTS = 8;
/** Anti-forensic stripes QEMU and cryptsetup write. */
export const LUKS_STRIPES = 4000;
/** Where key material starts: the header rounded to 4096 bytes. */
export const LUKS_KEY_SLOT_OFFSET = 4096;
/** `active` of a key slot in use. */
export const LUKS_SLOT_ENABLED = 0x00ac71f3;
/** `active` of an unused key slot. */
export const LUKS_SLOT_DISABLED = 0x0000dead;
const MAGIC = [0x4c, 0x55, 0x4b, 0x53, 0xba, 0xbe]; // "LUKS\xba\xbe"
const SECTOR = 512;

/** Each field: byte offset and length in the header. */
const F = {
  magic: [0, 6],
  version: [6, 2],
  cipherName: [8, 32],
  cipherMode: [40, 32],
  hashSpec: [72, 32],
  payloadOffset: [104, 4],
  keyBytes: [108, 4],
  masterKeyDigest: [112, 20],
  masterKeySalt: [132, 32],
  masterKeyIterations: [164, 4],
  uuid: [168, 40],
  keySlots: [208, 48 * LUKS_KEY_SLOTS],
} as const;
/** Each field of a key slot: offset within the slot and length. */
const S = {
  active: [0, 4],
  iterations: [4, 4],
  salt: [8, 32],
  keyOffset: [40, 4],
  stripes: [44, 4],
} as const;

/**
 * One LUKS1 key slot.
 *
 * @example The key slots of a header
 * ```ts
 * import { encodeLuksHeader, type LuksKeySlot, parseLuksHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = encodeLuksHeader({
 *   cipherName: "aes", cipherMode: "xts-plain64", hashSpec: "sha256", keyBytes: 64,
 *   masterKeyDigest: new Uint8Array(20), masterKeySalt: new Uint8Array(32), masterKeyIterations: 1000,
 *   uuid: "00000000-0000-4000-8000-000000000000",
 * });
 * const slot: LuksKeySlot = parseLuksHeader(bytes).keySlots[1];
 * assertEquals([slot.active, slot.keyOffset, slot.stripes], [false, 262144, 4000]);
 * ```
 */
export interface LuksKeySlot {
  /** Whether the slot holds a key (`active` is 0x00AC71F3). */
  active: boolean;
  /** PBKDF2 iterations for the password. */
  iterations: number;
  /** PBKDF2 salt, 32 bytes. */
  salt: Uint8Array;
  /** Byte offset of the key material from the start of the LUKS header. */
  keyOffset: number;
  /** Anti-forensic stripes. */
  stripes: number;
}

/**
 * A parsed LUKS1 header: the raw fields, and the cipher they name in
 * QEMU's terms.
 *
 * @example The cipher a header names
 * ```ts
 * import { encodeLuksHeader, type LuksHeader, parseLuksHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const header: LuksHeader = parseLuksHeader(encodeLuksHeader({
 *   cipherName: "aes", cipherMode: "cbc-essiv:sha256", hashSpec: "sha1", keyBytes: 16,
 *   masterKeyDigest: new Uint8Array(20), masterKeySalt: new Uint8Array(32), masterKeyIterations: 1000,
 *   uuid: "00000000-0000-4000-8000-000000000000",
 * }));
 * assertEquals([header.cipherAlgorithm, header.mode, header.ivgen, header.ivgenHash, header.hash],
 *   ["aes-128", "cbc", "essiv", "sha256", "sha1"]);
 * assertEquals(header.payloadOffset, 4096 + 8 * 65536); // 64000 bytes of key material per slot, in 4 KiB
 * ```
 */
export interface LuksHeader {
  /** Always 1. */
  version: number;
  /** `cipher_name`, e.g. `aes`. */
  cipherName: string;
  /** `cipher_mode`, e.g. `xts-plain64` or `cbc-essiv:sha256`. */
  cipherMode: string;
  /** `hash_spec`, e.g. `sha256`. */
  hashSpec: string;
  /** Byte offset of the payload (`payload_offset` sectors × 512). */
  payloadOffset: number;
  /** Bytes of master key. */
  keyBytes: number;
  /** PBKDF2 of the master key, 20 bytes, to check a candidate key. */
  masterKeyDigest: Uint8Array;
  /** Salt of that PBKDF2, 32 bytes. */
  masterKeySalt: Uint8Array;
  /** Iterations of that PBKDF2. */
  masterKeyIterations: number;
  /** The volume's UUID, as text. */
  uuid: string;
  /** The 8 key slots. */
  keySlots: LuksKeySlot[];
  /** The cipher with its key size, as QEMU names it: `aes-256`, `twofish-128`. */
  cipherAlgorithm: string;
  /** `xts`, `cbc`, `ctr` or `ecb`. */
  mode: CipherMode;
  /** `plain`, `plain64` or `essiv`. */
  ivgen: "plain" | "plain64" | "essiv";
  /** The hash after `:` in the mode, if any (ESSIV's). */
  ivgenHash?: string;
  /** The key slots' hash (`hash_spec`). */
  hash: string;
}

/** Hash names QEMU 7.2 knows (QCryptoHashAlgorithm), with digest lengths. */
const QEMU_HASHES: Record<string, number> = {
  md5: 16,
  sha1: 20,
  sha224: 28,
  sha256: 32,
  sha384: 48,
  sha512: 64,
  ripemd160: 20,
};
/** Cipher names QEMU's LUKS driver knows, with their key sizes. */
const QEMU_CIPHERS: Record<string, number[]> = {
  aes: [16, 24, 32],
  cast5: [16],
  serpent: [16, 24, 32],
  twofish: [16, 24, 32],
};
const MODES = ["ecb", "cbc", "xts", "ctr"];
const IVGENS = ["plain", "plain64", "essiv"];

/**
 * Parses and checks a LUKS1 header as QEMU does before any key is tried:
 * magic, version, each key slot (stripes, state, overlap with the payload
 * and with the other slots), then the cipher, mode, IV generator and hash
 * names.
 *
 * @param bytes At least {@linkcode LUKS_HEADER_SIZE} bytes.
 * @param at File offset of the header, for messages and `offset`.
 * @returns The header.
 * @throws {Qcow2Error} `BAD_LUKS_HEADER` naming the first bad field, in
 * QEMU's order; `TRUNCATED` if `bytes` is short.
 *
 * @example A damaged magic is named
 * ```ts
 * import { encodeLuksHeader, parseLuksHeader, Qcow2Error } from "@qcow2/qcow2";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * const bytes = encodeLuksHeader({
 *   cipherName: "aes", cipherMode: "xts-plain64", hashSpec: "sha256", keyBytes: 64,
 *   masterKeyDigest: new Uint8Array(20), masterKeySalt: new Uint8Array(32), masterKeyIterations: 1000,
 *   uuid: "00000000-0000-4000-8000-000000000000",
 * });
 * bytes[0] = 0x6c; // "lUKS"
 * const error = assertThrows(() => parseLuksHeader(bytes), Qcow2Error);
 * assertEquals(error.code, "BAD_LUKS_HEADER");
 * assertEquals(error.message.includes("magic"), true);
 * ```
 */
export function parseLuksHeader(bytes: Uint8Array, at = 0): LuksHeader {
  if (bytes.length < LUKS_HEADER_SIZE) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read the LUKS header at 0x${
        at.toString(16)
      }: the file ends inside it`,
      { offset: at },
    );
  }
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const bad = (field: string, where: number, why: string) =>
    new Qcow2Error(
      "BAD_LUKS_HEADER",
      `Cannot read the LUKS header at 0x${
        at.toString(16)
      }: field ${field} ${why}`,
      { offset: at + where },
    );
  const text = (field: readonly [number, number]) => {
    const raw = bytes.subarray(field[0], field[0] + field[1]);
    const nul = raw.indexOf(0);
    return new TextDecoder().decode(nul < 0 ? raw : raw.subarray(0, nul));
  };

  if (MAGIC.some((b, i) => bytes[i] !== b)) {
    throw bad("magic", F.magic[0], "is not LUKS\\xba\\xbe: not a LUKS volume");
  }
  const version = view.getUint16(F.version[0]);
  if (version !== 1) {
    throw bad(
      "version",
      F.version[0],
      `is ${version}: only LUKS version 1 is supported`,
    );
  }
  const payloadSectors = view.getUint32(F.payloadOffset[0]);
  const keyBytes = view.getUint32(F.keyBytes[0]);
  const slots: (LuksKeySlot & { start: number; sectors: number })[] = [];
  const headerSectors = LUKS_KEY_SLOT_OFFSET / SECTOR;
  for (let i = 0; i < LUKS_KEY_SLOTS; i++) {
    const base = F.keySlots[0] + i * 48;
    const state = view.getUint32(base + S.active[0]);
    const start = view.getUint32(base + S.keyOffset[0]);
    const stripes = view.getUint32(base + S.stripes[0]);
    // Key material in sectors, rounded up to the header's 4 KiB, as
    // qcrypto_block_luks_splitkeylen_sectors.
    const sectors = Math.ceil(
      Math.ceil(keyBytes * stripes / SECTOR) /
        headerSectors,
    ) * headerSectors;
    slots.push({
      active: state === LUKS_SLOT_ENABLED,
      iterations: view.getUint32(base + S.iterations[0]),
      salt: bytes.slice(base + S.salt[0], base + S.salt[0] + S.salt[1]),
      keyOffset: start * SECTOR,
      stripes,
      start,
      sectors,
    });
  }
  for (let i = 0; i < LUKS_KEY_SLOTS; i++) {
    const base = F.keySlots[0] + i * 48;
    const slot = slots[i];
    if (slot.stripes === 0) {
      throw bad(`key slot ${i} stripes`, base + S.stripes[0], "is 0");
    }
    const state = view.getUint32(base + S.active[0]);
    if (state !== LUKS_SLOT_ENABLED && state !== LUKS_SLOT_DISABLED) {
      throw bad(
        `key slot ${i} active`,
        base + S.active[0],
        `is 0x${
          state.toString(16)
        }, neither enabled (0x00ac71f3) nor disabled (0x0000dead)`,
      );
    }
    if (slot.start + slot.sectors > payloadSectors) {
      throw bad(
        `key slot ${i} key_offset`,
        base + S.keyOffset[0],
        `is sector ${slot.start}: its ${slot.sectors} sectors of key material overlap the payload at sector ${payloadSectors}`,
      );
    }
    for (let j = i + 1; j < LUKS_KEY_SLOTS; j++) {
      const other = slots[j];
      if (
        slot.start + slot.sectors > other.start &&
        other.start + other.sectors > slot.start
      ) {
        throw bad(
          `key slot ${i} key_offset`,
          base + S.keyOffset[0],
          `is sector ${slot.start}: its key material overlaps key slot ${j}'s`,
        );
      }
    }
  }

  const cipherMode = text(F.cipherMode);
  const dash = cipherMode.indexOf("-");
  if (dash < 0) {
    throw bad(
      "cipher_mode",
      F.cipherMode[0],
      `'${cipherMode}' is not MODE-IVGEN[:HASH]`,
    );
  }
  const modeName = cipherMode.slice(0, dash);
  const colon = cipherMode.indexOf(":", dash + 1);
  const ivgenName = colon < 0
    ? cipherMode.slice(dash + 1)
    : cipherMode.slice(dash + 1, colon);
  const ivgenHash = colon < 0 ? undefined : cipherMode.slice(colon + 1);
  if (ivgenHash !== undefined && !(ivgenHash in QEMU_HASHES)) {
    throw bad(
      "cipher_mode",
      F.cipherMode[0],
      `'${cipherMode}' names an unknown hash '${ivgenHash}'`,
    );
  }
  if (!MODES.includes(modeName)) {
    throw bad(
      "cipher_mode",
      F.cipherMode[0],
      `'${cipherMode}' names an unknown mode '${modeName}'`,
    );
  }
  const cipherName = text(F.cipherName);
  const size = modeName === "xts" ? keyBytes / 2 : keyBytes;
  if (!QEMU_CIPHERS[cipherName]?.includes(size)) {
    throw bad(
      QEMU_CIPHERS[cipherName] ? "key_bytes" : "cipher_name",
      QEMU_CIPHERS[cipherName] ? F.keyBytes[0] : F.cipherName[0],
      `names cipher '${cipherName}' with ${size}-byte keys, which LUKS does not define`,
    );
  }
  const hashSpec = text(F.hashSpec);
  if (!(hashSpec in QEMU_HASHES)) {
    throw bad(
      "hash_spec",
      F.hashSpec[0],
      `names an unknown hash '${hashSpec}'`,
    );
  }
  if (!IVGENS.includes(ivgenName)) {
    throw bad(
      "cipher_mode",
      F.cipherMode[0],
      `'${cipherMode}' names an unknown IV generator '${ivgenName}'`,
    );
  }
  if (ivgenName === "essiv") {
    if (ivgenHash === undefined) {
      throw bad(
        "cipher_mode",
        F.cipherMode[0],
        `'${cipherMode}' uses ESSIV without a hash`,
      );
    }
    const digest = QEMU_HASHES[ivgenHash];
    const fits = cipherName === "cast5"
      ? digest === 16
      : QEMU_CIPHERS[cipherName].includes(digest);
    if (!fits) {
      throw bad(
        "cipher_mode",
        F.cipherMode[0],
        `'${cipherMode}': no ${cipherName} key is as long as a ${ivgenHash} digest (${digest} bytes)`,
      );
    }
  }
  const uuid = text(F.uuid);
  return {
    version,
    cipherName,
    cipherMode,
    hashSpec,
    payloadOffset: payloadSectors * SECTOR,
    keyBytes,
    masterKeyDigest: bytes.slice(
      F.masterKeyDigest[0],
      F.masterKeyDigest[0] + F.masterKeyDigest[1],
    ),
    masterKeySalt: bytes.slice(
      F.masterKeySalt[0],
      F.masterKeySalt[0] + F.masterKeySalt[1],
    ),
    masterKeyIterations: view.getUint32(F.masterKeyIterations[0]),
    uuid,
    keySlots: slots.map(({ active, iterations, salt, keyOffset, stripes }) => ({
      active,
      iterations,
      salt,
      keyOffset,
      stripes,
    })),
    cipherAlgorithm: `${cipherName}-${size * 8}`,
    mode: modeName as CipherMode,
    ivgen: ivgenName as "plain" | "plain64" | "essiv",
    ivgenHash,
    hash: hashSpec,
  };
}

/**
 * The cipher and hash of a LUKS header as this library implements them:
 * AES in any mode, PBKDF2 and ESSIV over SHA-1 or SHA-2.
 *
 * @param header A parsed header.
 * @returns The sector cipher's description and the key slots' hash.
 * @throws {Qcow2Error} `UNSUPPORTED_CIPHER` naming a cipher (twofish,
 * serpent, cast5) or hash (md5, sha224, ripemd160) QEMU has and we do not.
 *
 * @example Twofish is refused by name
 * ```ts
 * import { encodeLuksHeader, luksCipherSpec, parseLuksHeader, Qcow2Error } from "@qcow2/qcow2";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * const header = parseLuksHeader(encodeLuksHeader({
 *   cipherName: "twofish", cipherMode: "xts-plain64", hashSpec: "sha256", keyBytes: 64,
 *   masterKeyDigest: new Uint8Array(20), masterKeySalt: new Uint8Array(32), masterKeyIterations: 1000,
 *   uuid: "00000000-0000-4000-8000-000000000000",
 * }));
 * const error = assertThrows(() => luksCipherSpec(header), Qcow2Error);
 * assertEquals(error.code, "UNSUPPORTED_CIPHER");
 * assertEquals(error.message.includes("twofish-256"), true);
 * ```
 */
export function luksCipherSpec(
  header: LuksHeader,
): { spec: CipherSpec; hash: HashAlgorithm } {
  const name = `${header.cipherAlgorithm}-${header.cipherMode}`;
  const refuse = (what: string) =>
    new Qcow2Error(
      "UNSUPPORTED_CIPHER",
      `Cannot decrypt: the image is encrypted with ${name} (hash ${header.hash}); ${what}`,
    );
  if (header.cipherName !== "aes") {
    throw refuse(
      `this library decrypts AES only, not ${header.cipherAlgorithm}`,
    );
  }
  const hashes = Object.keys(HASH_LENGTHS);
  for (const h of [header.hash, header.ivgenHash]) {
    if (h !== undefined && !hashes.includes(h)) {
      throw refuse(
        `this library hashes with sha1, sha256, sha384 and sha512 only, not ${h}`,
      );
    }
  }
  return {
    spec: {
      algorithm: header.cipherAlgorithm as CipherAlgorithm,
      mode: header.mode,
      ivgen: header.ivgen,
      ivgenHash: header.ivgen === "essiv"
        ? header.ivgenHash as HashAlgorithm
        : undefined,
    },
    hash: header.hash as HashAlgorithm,
  };
}

/**
 * What {@linkcode encodeLuksHeader} needs; key slots default to QEMU's new
 * layout: all disabled, 4000 stripes, key material from 4096 bytes on in
 * 4 KiB-rounded areas, the payload after the last.
 *
 * @example The fields of a new header
 * ```ts
 * import { encodeLuksHeader, type LuksHeaderFields } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const fields: LuksHeaderFields = {
 *   cipherName: "aes", cipherMode: "xts-plain64", hashSpec: "sha256", keyBytes: 64,
 *   masterKeyDigest: new Uint8Array(20), masterKeySalt: new Uint8Array(32), masterKeyIterations: 1000,
 *   uuid: "00000000-0000-4000-8000-000000000000",
 * };
 * assertEquals(encodeLuksHeader(fields).length, 592);
 * ```
 */
export interface LuksHeaderFields {
  /** `cipher_name`. */
  cipherName: string;
  /** `cipher_mode`. */
  cipherMode: string;
  /** `hash_spec`. */
  hashSpec: string;
  /** Bytes of master key. */
  keyBytes: number;
  /** 20 bytes. */
  masterKeyDigest: Uint8Array;
  /** 32 bytes. */
  masterKeySalt: Uint8Array;
  /** PBKDF2 iterations of the digest. */
  masterKeyIterations: number;
  /** The UUID text. */
  uuid: string;
  /** Key slots; default all disabled, laid out as QEMU lays them out. */
  keySlots?: LuksKeySlot[];
  /** Payload byte offset; default after the last slot's key material. */
  payloadOffset?: number;
}

/**
 * The key slot layout QEMU's `qcrypto_block_luks_create` gives a new
 * volume: slot i's key material at 4096 + i × area, where area is the key
 * material (`keyBytes` × 4000) rounded up to 4 KiB.
 *
 * @param keyBytes Bytes of master key.
 * @returns The 8 slots' key offsets and the payload offset, in bytes.
 *
 * @example The layout for AES-256-XTS
 * ```ts
 * import { luksLayout } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const { keyOffsets, payloadOffset } = luksLayout(64);
 * assertEquals(keyOffsets.slice(0, 2), [4096, 262144]);
 * assertEquals(payloadOffset, 2068480);
 * ```
 */
export function luksLayout(
  keyBytes: number,
): { keyOffsets: number[]; payloadOffset: number } {
  const area = Math.ceil(keyBytes * LUKS_STRIPES / LUKS_KEY_SLOT_OFFSET) *
    LUKS_KEY_SLOT_OFFSET;
  const keyOffsets = Array.from(
    { length: LUKS_KEY_SLOTS },
    (_, i) => LUKS_KEY_SLOT_OFFSET + i * area,
  );
  return { keyOffsets, payloadOffset: LUKS_KEY_SLOT_OFFSET + 8 * area };
}

/**
 * Encodes a LUKS1 header (big-endian, as on disk).
 *
 * @param fields The header's fields.
 * @returns {@linkcode LUKS_HEADER_SIZE} bytes.
 * @throws {RangeError} If a name does not fit its 32-byte field.
 *
 * @example Encoding and parsing back
 * ```ts
 * import { encodeLuksHeader, parseLuksHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const header = parseLuksHeader(encodeLuksHeader({
 *   cipherName: "aes", cipherMode: "xts-plain64", hashSpec: "sha256", keyBytes: 64,
 *   masterKeyDigest: new Uint8Array(20), masterKeySalt: new Uint8Array(32), masterKeyIterations: 1000,
 *   uuid: "00000000-0000-4000-8000-000000000000",
 * }));
 * assertEquals(header.cipherAlgorithm, "aes-256");
 * assertEquals(header.keySlots.every((s) => !s.active), true);
 * ```
 */
export function encodeLuksHeader(fields: LuksHeaderFields): Uint8Array {
  const bytes = new Uint8Array(LUKS_HEADER_SIZE);
  const view = new DataView(bytes.buffer);
  const put = (field: readonly [number, number], text: string) => {
    const encoded = new TextEncoder().encode(text);
    if (encoded.length >= field[1]) {
      throw new RangeError(`'${text}' is too long for the LUKS header`);
    }
    bytes.set(encoded, field[0]);
  };
  bytes.set(MAGIC, 0);
  view.setUint16(F.version[0], 1);
  put(F.cipherName, fields.cipherName);
  put(F.cipherMode, fields.cipherMode);
  put(F.hashSpec, fields.hashSpec);
  const layout = luksLayout(fields.keyBytes);
  view.setUint32(
    F.payloadOffset[0],
    (fields.payloadOffset ?? layout.payloadOffset) / SECTOR,
  );
  view.setUint32(F.keyBytes[0], fields.keyBytes);
  bytes.set(fields.masterKeyDigest.subarray(0, 20), F.masterKeyDigest[0]);
  bytes.set(fields.masterKeySalt.subarray(0, 32), F.masterKeySalt[0]);
  view.setUint32(F.masterKeyIterations[0], fields.masterKeyIterations);
  bytes.set(new TextEncoder().encode(fields.uuid).subarray(0, 39), F.uuid[0]);
  for (let i = 0; i < LUKS_KEY_SLOTS; i++) {
    const base = F.keySlots[0] + i * 48;
    const slot = fields.keySlots?.[i] ?? {
      active: false,
      iterations: 0,
      salt: new Uint8Array(32),
      keyOffset: layout.keyOffsets[i],
      stripes: LUKS_STRIPES,
    };
    view.setUint32(
      base + S.active[0],
      slot.active ? LUKS_SLOT_ENABLED : LUKS_SLOT_DISABLED,
    );
    view.setUint32(base + S.iterations[0], slot.iterations);
    bytes.set(slot.salt.subarray(0, 32), base + S.salt[0]);
    view.setUint32(base + S.keyOffset[0], slot.keyOffset / SECTOR);
    view.setUint32(base + S.stripes[0], slot.stripes);
  }
  return bytes;
}
