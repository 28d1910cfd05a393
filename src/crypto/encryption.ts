/**
 * Opening the encryption of an image: LUKS (unlocking a key slot with the
 * password) or legacy AES (the password is the key), and the sector
 * encryption that reads and writes then go through.
 *
 * Sources: QEMU crypto/block-luks.c (`qcrypto_block_luks_open`,
 * `_find_key`, `_load_key`), crypto/block-qcow.c (legacy AES keys),
 * block/qcow2.c (`crypt_physical_offset`: LUKS sectors are numbered by host
 * offset, legacy AES sectors by guest offset) and block/qcow.c.
 *
 * @module
 */

import { hex, Qcow2Error } from "../errors.ts";
import { CRYPT_METHOD } from "../qcow2/layout.ts";
import { type ByteSource, readExact } from "../io/source.ts";
import { afMerge } from "./afsplit.ts";
import {
  LUKS_HEADER_SIZE,
  luksCipherSpec,
  type LuksHeader,
  parseLuksHeader,
} from "./luks_header.ts";
import type { CryptoProvider } from "./provider.ts";
import {
  cipherKeyLength,
  type CipherSpec,
  SECTOR_SIZE,
  sectorCipher,
} from "./sector_cipher.ts";

/**
 * Encrypts and decrypts an image's sectors, with QEMU's sector numbering.
 * Obtain one with {@linkcode openEncryption}, or `openImage`'s
 * `password` option does it for you.
 *
 * @example Decrypting what was encrypted
 * ```ts
 * import { type ImageEncryption, sectorEncryption, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const spec = { algorithm: "aes-128", mode: "cbc", ivgen: "plain64" } as const;
 * const encryption: ImageEncryption = await sectorEncryption(webCrypto, "aes", spec, new Uint8Array(16));
 * const data = new Uint8Array(1024).fill(1);
 * await encryption.encrypt(4096, data);
 * await encryption.decrypt(4096, data);
 * assertEquals(data, new Uint8Array(1024).fill(1));
 * encryption.close();
 * ```
 */
export interface ImageEncryption {
  /** `luks`, or `aes` for the legacy method. */
  readonly format: "luks" | "aes";
  /** The sector cipher. */
  readonly spec: CipherSpec;
  /**
   * Whether sectors are numbered by their host (file) offset, as for LUKS
   * in qcow2, or by their guest offset, as for legacy AES.
   */
  readonly physical: boolean;
  /**
   * Decrypts `data` in place.
   *
   * @param offset Byte offset (a multiple of 512) that numbers the first
   * sector: offset / 512.
   * @param data Whole sectors.
   */
  decrypt(offset: number, data: Uint8Array): Promise<void>;
  /** Encrypts `data` in place; `offset` as for `decrypt`. */
  encrypt(offset: number, data: Uint8Array): Promise<void>;
  /** Forgets the key. */
  close(): void;
}

/** The password as QEMU uses it: its UTF-8 bytes up to the first NUL. */
export function passwordBytes(password: string | Uint8Array): Uint8Array {
  const bytes = typeof password === "string"
    ? new TextEncoder().encode(password)
    : password.slice();
  const nul = bytes.indexOf(0);
  return nul < 0 ? bytes : bytes.subarray(0, nul);
}

/**
 * Sector encryption with a known key, on this thread (or where the
 * provider's `sectorCipher` hook runs it). The key is copied; wipe yours.
 *
 * @param provider The primitives.
 * @param format What the image calls its encryption.
 * @param spec The cipher.
 * @param key The data key (LUKS master key, or legacy AES key).
 * @returns The encryption; `physical` is true for LUKS.
 */
export async function sectorEncryption(
  provider: CryptoProvider,
  format: "luks" | "aes",
  spec: CipherSpec,
  key: Uint8Array,
): Promise<ImageEncryption> {
  const cipher = await sectorCipher(provider, spec, key);
  return {
    format,
    spec,
    physical: format === "luks",
    decrypt(offset, data) {
      cipher.decrypt(offset / SECTOR_SIZE, data);
      return Promise.resolve();
    },
    encrypt(offset, data) {
      cipher.encrypt(offset / SECTOR_SIZE, data);
      return Promise.resolve();
    },
    close() {},
  };
}

/** Legacy AES: AES-128-CBC, 64-bit sector numbers as IVs. */
export const LEGACY_AES_SPEC: CipherSpec = {
  algorithm: "aes-128",
  mode: "cbc",
  ivgen: "plain64",
};

/**
 * The legacy AES key of a password: its first 16 bytes, zero-padded
 * (QEMU's `qcrypto_block_qcow_init`). Any password "opens" such an image:
 * the method has no check, so a wrong one reads garbage, as in QEMU.
 *
 * @param password The password.
 * @returns 16 bytes of key.
 *
 * @example Short passwords are padded with zeros
 * ```ts
 * import { legacyAesKey } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(legacyAesKey("pw"), new Uint8Array([0x70, 0x77, ...new Array(14).fill(0)]));
 * ```
 */
export function legacyAesKey(password: string | Uint8Array): Uint8Array {
  const bytes = passwordBytes(password);
  const key = new Uint8Array(16);
  key.set(bytes.subarray(0, 16));
  bytes.fill(0);
  return key;
}

/**
 * Reads and parses the LUKS header at the start of an image's LUKS area.
 *
 * @param source The image file.
 * @param offset File offset of the LUKS area (from the full disk
 * encryption header extension).
 * @returns The parsed header.
 * @throws {Qcow2Error} `BAD_LUKS_HEADER` naming the damaged field,
 * `TRUNCATED` if the file ends first.
 *
 * @example The LUKS header of a qemu-img-made image
 * ```ts
 * import { bytesSource, readHeader, readLuksHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const gz = await Deno.open(new URL("../../tests/fixtures/crypto/luks_default.qcow2.gz", import.meta.url));
 * const bytes = new Uint8Array(await new Response(gz.readable.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
 * const area = (await readHeader(bytes)).extensions.encryption!;
 * const luks = await readLuksHeader(bytesSource(bytes), area.offset);
 * assertEquals([luks.cipherAlgorithm, luks.cipherMode, luks.hash], ["aes-256", "xts-plain64", "sha256"]);
 * assertEquals(luks.keySlots.filter((s) => s.active).length, 1);
 * ```
 */
export async function readLuksHeader(
  source: ByteSource,
  offset: number,
): Promise<LuksHeader> {
  const bytes = await readExact(
    source,
    offset,
    LUKS_HEADER_SIZE,
    "LUKS header",
  );
  return parseLuksHeader(bytes, offset);
}

/**
 * Unlocks a LUKS master key: for each active key slot in order, PBKDF2 of
 * the password with the slot's salt and iterations decrypts its key
 * material, the AF merge joins it, and PBKDF2 of the result must match the
 * header's master key digest (`qcrypto_block_luks_load_key`).
 *
 * @param provider The primitives.
 * @param source The image file.
 * @param area File offset and length of the LUKS area.
 * @param header Its parsed header.
 * @param password The password.
 * @returns The master key (wipe it when done).
 * @throws {Qcow2Error} `WRONG_PASSWORD` when no slot opens;
 * `UNSUPPORTED_CIPHER`; `BAD_LUKS_HEADER` for key material outside the
 * area or zero iterations.
 *
 * @example Unlocking the master key, and a wrong password
 * ```ts
 * import { bytesSource, Qcow2Error, readHeader, readLuksHeader, unlockLuks, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const gz = await Deno.open(new URL("../../tests/fixtures/crypto/luks_default.qcow2.gz", import.meta.url));
 * const bytes = new Uint8Array(await new Response(gz.readable.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
 * const area = (await readHeader(bytes)).extensions.encryption!;
 * const source = bytesSource(bytes);
 * const luks = await readLuksHeader(source, area.offset);
 * const key = await unlockLuks(webCrypto, source, area, luks, "fixture-password");
 * assertEquals(key.length, 64); // AES-256-XTS: two 256-bit keys
 * key.fill(0);
 * const error = await assertRejects(() => unlockLuks(webCrypto, source, area, luks, "nope"), Qcow2Error);
 * assertEquals(error.code, "WRONG_PASSWORD");
 * ```
 */
export async function unlockLuks(
  provider: CryptoProvider,
  source: ByteSource,
  area: { offset: number; length: number },
  header: LuksHeader,
  password: string | Uint8Array,
): Promise<Uint8Array> {
  const { spec, hash } = luksCipherSpec(header);
  const keyLength = header.keyBytes;
  if (keyLength !== cipherKeyLength(spec)) {
    throw new Qcow2Error(
      "BAD_LUKS_HEADER",
      `Cannot read the LUKS header at ${
        hex(area.offset)
      }: field key_bytes is ${keyLength}, not ${cipherKeyLength(spec)}`,
      { offset: area.offset + 108 },
    );
  }
  const secret = passwordBytes(password);
  const bad = (field: string, at: number, why: string) =>
    new Qcow2Error(
      "BAD_LUKS_HEADER",
      `Cannot read the LUKS header at ${
        hex(area.offset)
      }: field ${field} ${why}`,
      { offset: area.offset + at },
    );
  if (header.masterKeyIterations < 1) {
    throw bad("master_key_iterations", 164, "is 0");
  }
  try {
    for (const [i, slot] of header.keySlots.entries()) {
      if (!slot.active) continue;
      if (slot.iterations < 1) {
        throw bad(`key slot ${i} iterations`, 208 + i * 48 + 4, "is 0");
      }
      const length = keyLength * slot.stripes;
      if (slot.keyOffset + length > area.length) {
        throw bad(
          `key slot ${i} key_offset`,
          208 + i * 48 + 40,
          `puts ${length} bytes of key material at ${
            hex(slot.keyOffset)
          }, past the end of the LUKS area (${area.length} bytes)`,
        );
      }
      const slotKey = await provider.pbkdf2(
        hash,
        secret,
        slot.salt,
        slot.iterations,
        keyLength,
      );
      const material = await readExact(
        source,
        area.offset + slot.keyOffset,
        length,
        `key material of LUKS key slot ${i}`,
      );
      try {
        const cipher = await sectorCipher(provider, spec, slotKey);
        cipher.decrypt(0, material);
      } finally {
        slotKey.fill(0);
      }
      const candidate = await afMerge(
        provider,
        hash,
        keyLength,
        slot.stripes,
        material,
      );
      material.fill(0);
      const digest = await provider.pbkdf2(
        hash,
        candidate,
        header.masterKeySalt,
        header.masterKeyIterations,
        header.masterKeyDigest.length,
      );
      if (digest.every((b, k) => b === header.masterKeyDigest[k])) {
        return candidate;
      }
      candidate.fill(0);
    }
  } finally {
    secret.fill(0);
  }
  throw new Qcow2Error(
    "WRONG_PASSWORD",
    "Cannot read the encrypted image: no key slot opens with this password",
  );
}

/**
 * What {@linkcode openEncryption} needs to know of an image.
 *
 * @example The encryption of a qcow2 header
 * ```ts
 * import type { EncryptedImageHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const header: EncryptedImageHeader = { cryptMethod: 2, encryptionArea: { offset: 0x30000, length: 0x200000 } };
 * assertEquals(header.cryptMethod, 2);
 * ```
 */
export interface EncryptedImageHeader {
  /** 0 none, 1 legacy AES, 2 LUKS. */
  cryptMethod: number;
  /** For LUKS: where its header area lies in the file. */
  encryptionArea?: { offset: number; length: number };
}

/**
 * Opens an image's encryption: parses the LUKS header (refusing a cipher we
 * lack by name before asking for a password), then unlocks it with the
 * password; or makes the legacy AES key of the password.
 *
 * @param provider The primitives (`nodeCrypto` or `webCrypto`).
 * @param source The image file.
 * @param header The image's encryption method and LUKS area.
 * @param password The password, if given.
 * @param format The image format, for messages.
 * @returns The encryption, or undefined for an unencrypted image.
 * @throws {Qcow2Error} `ENCRYPTED` without a password, `WRONG_PASSWORD`,
 * `BAD_LUKS_HEADER`, `UNSUPPORTED_CIPHER`.
 *
 * @example Decrypting a sector by hand
 * ```ts
 * import { bytesSource, openEncryption, readHeader, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const gz = await Deno.open(new URL("../../tests/fixtures/crypto/luks_default.qcow2.gz", import.meta.url));
 * const bytes = new Uint8Array(await new Response(gz.readable.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
 * const header = await readHeader(bytes);
 * const encryption = await openEncryption(webCrypto, bytesSource(bytes), {
 *   cryptMethod: header.cryptMethod,
 *   encryptionArea: header.extensions.encryption,
 * }, "fixture-password");
 * assertEquals(encryption?.format, "luks");
 * ```
 */
export async function openEncryption(
  provider: CryptoProvider,
  source: ByteSource,
  header: EncryptedImageHeader,
  password: string | Uint8Array | undefined,
  format = "qcow2",
): Promise<ImageEncryption | undefined> {
  if (header.cryptMethod === CRYPT_METHOD.none) return undefined;
  const noPassword = (what: string) =>
    new Qcow2Error(
      "ENCRYPTED",
      `Cannot read ${format} image: it is encrypted (${what}): give --password-file FILE (in the library, the 'password' option)`,
      { offset: 32 },
    );
  const make = (
    kind: "luks" | "aes",
    spec: CipherSpec,
    key: Uint8Array,
  ) =>
    provider.encryption?.(kind, spec, key) ??
      sectorEncryption(provider, kind, spec, key);
  if (header.cryptMethod === CRYPT_METHOD.aes) {
    if (password === undefined) throw noPassword("legacy AES");
    const key = legacyAesKey(password);
    try {
      return await make("aes", LEGACY_AES_SPEC, key);
    } finally {
      key.fill(0);
    }
  }
  const area = header.encryptionArea!;
  const luks = await readLuksHeader(source, area.offset);
  const { spec } = luksCipherSpec(luks);
  if (password === undefined) {
    throw noPassword(`LUKS, ${luks.cipherAlgorithm}-${luks.cipherMode}`);
  }
  const key = await unlockLuks(provider, source, area, luks, password);
  try {
    return await make("luks", spec, key);
  } finally {
    key.fill(0);
  }
}
