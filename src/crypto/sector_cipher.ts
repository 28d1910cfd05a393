/**
 * Sector encryption as QEMU's crypto/ does it for LUKS and legacy AES: a
 * block cipher chained in XTS, CBC, CTR or ECB mode over each 512-byte
 * sector, restarted at every sector with the IV of its generator (`plain`,
 * `plain64`, `essiv`). The AES block itself comes from a
 * {@linkcode CryptoProvider}; this file only chains blocks, many sectors at
 * once, so that each call into the provider covers a whole buffer.
 *
 * Sources: QEMU crypto/block.c (`qcrypto_block_cipher_decrypt_helper`),
 * crypto/ivgen-plain.c, ivgen-plain64.c, ivgen-essiv.c, crypto/xts.c (IEEE
 * P1619 XTS), and crypto/cipher-*.c for CBC and CTR.
 *
 * @module
 */

import {
  type BlockCipher,
  type CryptoProvider,
  HASH_LENGTHS,
  type HashAlgorithm,
} from "./provider.ts";

/** Bytes in an encryption sector, for LUKS1 and legacy AES. */
export const SECTOR_SIZE = 512;

/**
 * The AES variants encrypted images use.
 *
 * @example Key lengths of the AES variants
 * ```ts
 * import { type CipherAlgorithm, cipherKeyLength } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const alg: CipherAlgorithm = "aes-192";
 * assertEquals(cipherKeyLength({ algorithm: alg, mode: "cbc", ivgen: "plain64" }), 24);
 * assertEquals(cipherKeyLength({ algorithm: "aes-256", mode: "xts", ivgen: "plain64" }), 64);
 * ```
 */
export type CipherAlgorithm = "aes-128" | "aes-192" | "aes-256";

/**
 * Block cipher modes, as QEMU names them.
 *
 * @example The mode of a cipher description
 * ```ts
 * import type { CipherMode, CipherSpec } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const mode: CipherMode = "xts";
 * const spec: CipherSpec = { algorithm: "aes-256", mode, ivgen: "plain64" };
 * assertEquals(spec.mode, "xts");
 * ```
 */
export type CipherMode = "xts" | "cbc" | "ctr" | "ecb";

/**
 * IV generators: the sector number as 32 bits (`plain`) or 64 bits
 * (`plain64`), little-endian; or that number encrypted with a key hashed
 * from the data key (`essiv`).
 *
 * @example An ESSIV description names its hash
 * ```ts
 * import type { CipherSpec, IvGenerator } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const ivgen: IvGenerator = "essiv";
 * const spec: CipherSpec = { algorithm: "aes-128", mode: "cbc", ivgen, ivgenHash: "sha256" };
 * assertEquals(spec.ivgenHash, "sha256");
 * ```
 */
export type IvGenerator = "plain" | "plain64" | "essiv";

/**
 * A full description of how sectors are encrypted.
 *
 * @example Legacy AES: AES-128-CBC with 64-bit sector numbers as IVs
 * ```ts
 * import { type CipherSpec, sectorCipher, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const spec: CipherSpec = { algorithm: "aes-128", mode: "cbc", ivgen: "plain64" };
 * const cipher = await sectorCipher(webCrypto, spec, new Uint8Array(16));
 * const sector = new Uint8Array(512);
 * cipher.encrypt(7, sector);
 * cipher.decrypt(7, sector);
 * assertEquals(sector, new Uint8Array(512));
 * ```
 */
export interface CipherSpec {
  /** The block cipher. */
  algorithm: CipherAlgorithm;
  /** How blocks are chained within a sector. */
  mode: CipherMode;
  /** How each sector's IV is made. */
  ivgen: IvGenerator;
  /** The hash ESSIV keys its IV cipher with (for `essiv` only). */
  ivgenHash?: HashAlgorithm;
}

const AES_KEY_BYTES: Record<CipherAlgorithm, number> = {
  "aes-128": 16,
  "aes-192": 24,
  "aes-256": 32,
};

/**
 * The key length in bytes a {@linkcode CipherSpec} takes: the AES key
 * length, twice for XTS (data key, then tweak key), as in QEMU's
 * `qcrypto_block_luks_create`.
 *
 * @param spec The cipher.
 * @returns Bytes of key.
 *
 * @example XTS keys are twice as long
 * ```ts
 * import { cipherKeyLength } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(cipherKeyLength({ algorithm: "aes-128", mode: "xts", ivgen: "plain64" }), 32);
 * ```
 */
export function cipherKeyLength(spec: CipherSpec): number {
  return AES_KEY_BYTES[spec.algorithm] * (spec.mode === "xts" ? 2 : 1);
}

/**
 * The AES variant whose key length is `bytes`, for the ESSIV cipher, whose
 * key is a digest (QEMU's `qcrypto_block_luks_essiv_cipher`).
 *
 * @param bytes A digest length.
 * @returns The AES variant, or undefined if no AES key has that length.
 */
export function aesForKeyLength(bytes: number): CipherAlgorithm | undefined {
  return (Object.keys(AES_KEY_BYTES) as CipherAlgorithm[]).find((a) =>
    AES_KEY_BYTES[a] === bytes
  );
}

if (new Uint8Array(new Uint32Array([1]).buffer)[0] !== 1) {
  throw new Error("Encrypted images need a little-endian machine");
}

/**
 * Encrypts and decrypts whole sectors in place, given the number of the
 * first. Obtain one with {@linkcode sectorCipher}. `data` is a multiple of
 * 16 bytes; a last sector shorter than 512 bytes is treated as the start of
 * a sector, as QEMU's helpers treat LUKS key material.
 *
 * The class refers to nothing outside itself (sector sizes are literals),
 * so that its source text can run in a worker (`native/crypto_pool.ts`).
 *
 * @example Sector numbers change the ciphertext
 * ```ts
 * import { sectorCipher, webCrypto } from "@qcow2/qcow2";
 * import { assertNotEquals } from "@std/assert";
 *
 * const spec = { algorithm: "aes-256", mode: "xts", ivgen: "plain64" } as const;
 * const cipher = await sectorCipher(webCrypto, spec, new Uint8Array(64).fill(1));
 * const a = new Uint8Array(512), b = new Uint8Array(512);
 * cipher.encrypt(0, a);
 * cipher.encrypt(1, b);
 * assertNotEquals(a, b);
 * ```
 */
export class SectorCipher {
  /** What this cipher does. */
  readonly spec: CipherSpec;
  #data: BlockCipher;
  #tweak?: BlockCipher;
  #essiv?: BlockCipher;
  #scratch = new Uint32Array(0);

  /** @internal Use {@linkcode sectorCipher}. */
  constructor(
    spec: CipherSpec,
    data: BlockCipher,
    tweak?: BlockCipher,
    essiv?: BlockCipher,
  ) {
    this.spec = spec;
    this.#data = data;
    this.#tweak = tweak;
    this.#essiv = essiv;
  }

  /**
   * Decrypts `data` in place: sectors `sector`, `sector + 1`, ...
   *
   * @param sector The number of the first sector (the IV source).
   * @param data Whole 16-byte blocks; sectors of 512 bytes.
   */
  decrypt(sector: number, data: Uint8Array): void {
    this.#run(sector, data, false);
  }

  /**
   * Encrypts `data` in place: sectors `sector`, `sector + 1`, ...
   *
   * @param sector The number of the first sector (the IV source).
   * @param data Whole 16-byte blocks; sectors of 512 bytes.
   */
  encrypt(sector: number, data: Uint8Array): void {
    this.#run(sector, data, true);
  }

  #run(sector: number, data: Uint8Array, encrypt: boolean): void {
    if (data.length % 16 !== 0) {
      throw new RangeError(
        `Cannot ${
          encrypt ? "encrypt" : "decrypt"
        } ${data.length} bytes: not whole 16-byte blocks`,
      );
    }
    const whole = data.length - (data.length % 512);
    if (whole > 0) this.#sectors(sector, data.subarray(0, whole), encrypt);
    if (whole < data.length) {
      // A short last sector: the start of a full one, as in QEMU.
      const tail = new Uint8Array(512);
      tail.set(data.subarray(whole));
      this.#sectors(sector + whole / 512, tail, encrypt);
      data.set(tail.subarray(0, data.length - whole), whole);
    }
  }

  /** The IVs of `n` sectors from `sector`, 16 bytes each. */
  #ivs(sector: number, n: number): Uint32Array {
    const iv = new Uint32Array(n * 4);
    const plain = this.spec.ivgen === "plain";
    for (let s = 0; s < n; s++) {
      const number = sector + s;
      iv[s * 4] = number >>> 0;
      if (!plain) iv[s * 4 + 1] = Math.floor(number / 0x100000000);
    }
    if (!this.#essiv) return iv;
    const bytes = new Uint8Array(iv.buffer);
    return this.#words(this.#essiv.encrypt(bytes, bytes));
  }

  #scratchWords(n: number): Uint32Array {
    if (this.#scratch.length < n) this.#scratch = new Uint32Array(n);
    return this.#scratch.subarray(0, n);
  }

  #sectors(sector: number, data: Uint8Array, encrypt: boolean): void {
    const n = data.length / 512;
    switch (this.spec.mode) {
      case "ecb": {
        const out = encrypt
          ? this.#data.encrypt(data, data)
          : this.#data.decrypt(data, data);
        if (out !== data) data.set(out);
        return;
      }
      case "xts":
        return this.#xts(sector, n, data, encrypt);
      case "cbc":
        return encrypt
          ? this.#cbcEncrypt(sector, n, data)
          : this.#cbcDecrypt(sector, n, data);
      case "ctr":
        return this.#ctr(sector, n, data);
    }
  }

  /**
   * XTS (IEEE P1619, QEMU crypto/xts.c): the tweak of a sector's first block
   * is its IV encrypted with the tweak key; each next block's tweak is the
   * last one times x in GF(2^128). Each block is XORed with its tweak before
   * and after the data key's cipher.
   */
  #xts(sector: number, n: number, data: Uint8Array, encrypt: boolean): void {
    const ivs = new Uint8Array(this.#ivs(sector, n).buffer);
    const t0 = this.#words(this.#tweak!.encrypt(ivs, ivs));
    const w = this.#words(data);
    const tw = this.#scratchWords(w.length);
    for (let s = 0; s < n; s++) {
      let a = t0[s * 4],
        b = t0[s * 4 + 1],
        c = t0[s * 4 + 2],
        d = t0[s * 4 + 3];
      const end = (s + 1) * 128;
      for (let i = s * 128; i < end; i += 4) {
        tw[i] = a;
        tw[i + 1] = b;
        tw[i + 2] = c;
        tw[i + 3] = d;
        w[i] ^= a;
        w[i + 1] ^= b;
        w[i + 2] ^= c;
        w[i + 3] ^= d;
        // Multiply by x: shift the 128-bit little-endian value left by one,
        // folding the bit shifted out back in as x^7 + x^2 + x + 1 (0x87).
        const carry = d >>> 31;
        d = (d << 1) | (c >>> 31);
        c = (c << 1) | (b >>> 31);
        b = (b << 1) | (a >>> 31);
        a = (a << 1) ^ (carry * 0x87);
      }
    }
    const bytes = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
    // Into a new array, XORed back in place: one pass, no copy.
    const out = this.#words(
      encrypt ? this.#data.encrypt(bytes) : this.#data.decrypt(bytes),
    );
    for (let i = 0; i < w.length; i++) w[i] = out[i] ^ tw[i];
    if (w.buffer !== data.buffer) data.set(bytes);
  }

  /** CBC decryption: every block at once, then XOR the block before it. */
  #cbcDecrypt(sector: number, n: number, data: Uint8Array): void {
    const iv = this.#ivs(sector, n);
    const w = this.#words(data);
    const bytes = new Uint8Array(w.buffer, w.byteOffset, w.byteLength);
    const plain = this.#words(this.#data.decrypt(bytes));
    for (let s = 0; s < n; s++) {
      const first = s * 128;
      // Backwards, so each block's predecessor is still ciphertext.
      for (let i = first + 128 - 4; i > first; i -= 4) {
        w[i] = plain[i] ^ w[i - 4];
        w[i + 1] = plain[i + 1] ^ w[i - 3];
        w[i + 2] = plain[i + 2] ^ w[i - 2];
        w[i + 3] = plain[i + 3] ^ w[i - 1];
      }
      for (let k = 0; k < 4; k++) {
        w[first + k] = plain[first + k] ^ iv[s * 4 + k];
      }
    }
    if (w.buffer !== data.buffer) data.set(bytes);
  }

  /**
   * CBC encryption is sequential within a sector, so the sectors go side by
   * side: block j of every sector in one call, 32 calls in all.
   */
  #cbcEncrypt(sector: number, n: number, data: Uint8Array): void {
    const chain = this.#ivs(sector, n);
    const w = this.#words(data);
    const column = new Uint32Array(n * 4);
    const columnBytes = new Uint8Array(column.buffer);
    for (let j = 0; j < 32; j++) {
      for (let s = 0; s < n; s++) {
        const at = s * 128 + j * 4;
        for (let k = 0; k < 4; k++) {
          column[s * 4 + k] = w[at + k] ^ chain[s * 4 + k];
        }
      }
      const sealed = this.#words(this.#data.encrypt(columnBytes));
      for (let s = 0; s < n; s++) {
        const at = s * 128 + j * 4;
        for (let k = 0; k < 4; k++) {
          w[at + k] = chain[s * 4 + k] = sealed[s * 4 + k];
        }
      }
    }
    if (w.buffer !== data.buffer) {
      data.set(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
    }
  }

  /**
   * CTR: each sector's IV is a 128-bit big-endian counter, one step per
   * block; the encrypted counters are XORed in (both ways).
   */
  #ctr(sector: number, n: number, data: Uint8Array): void {
    const iv = new Uint8Array(this.#ivs(sector, n).buffer);
    const counters = new Uint8Array(data.length);
    for (let s = 0; s < n; s++) {
      const block = iv.subarray(s * 16, s * 16 + 16).slice();
      for (let j = 0; j < 32; j++) {
        counters.set(block, s * 512 + j * 16);
        for (let k = 15; k >= 0 && ++block[k] === 256; k--) block[k] = 0;
      }
    }
    const stream = this.#words(this.#data.encrypt(counters, counters));
    const w = this.#words(data);
    for (let i = 0; i < w.length; i++) w[i] ^= stream[i];
    if (w.buffer !== data.buffer) {
      data.set(new Uint8Array(w.buffer, w.byteOffset, w.byteLength));
    }
  }
  /** A Uint32Array over `bytes`, copying only when they are not aligned. */
  #words(bytes: Uint8Array): Uint32Array {
    return bytes.byteOffset % 4 === 0
      ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2)
      : new Uint32Array(bytes.slice().buffer);
  }
}

/**
 * Makes the sector cipher for `spec` with `key` (a LUKS master key or slot
 * key, or a legacy AES key). For XTS the first half of the key encrypts
 * data and the second half the tweaks; for ESSIV the IV cipher's key is the
 * `ivgenHash` digest of the whole key. The caller may wipe `key` after.
 *
 * @param provider The AES block and digests.
 * @param spec The cipher.
 * @param key `cipherKeyLength(spec)` bytes.
 * @returns The cipher.
 * @throws {RangeError} If the key length does not fit, or ESSIV's hash
 * gives a digest no AES key has.
 *
 * @example A round trip through AES-128-CBC with ESSIV
 * ```ts
 * import { sectorCipher, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const spec = { algorithm: "aes-128", mode: "cbc", ivgen: "essiv", ivgenHash: "sha256" } as const;
 * const cipher = await sectorCipher(webCrypto, spec, new Uint8Array(16).fill(9));
 * const data = new Uint8Array(1024).map((_, i) => i);
 * cipher.encrypt(100, data);
 * cipher.decrypt(100, data);
 * assertEquals(data, new Uint8Array(1024).map((_, i) => i));
 * ```
 */
export async function sectorCipher(
  provider: CryptoProvider,
  spec: CipherSpec,
  key: Uint8Array,
): Promise<SectorCipher> {
  const keys = await sectorCipherKeys(provider, spec, key);
  try {
    return new SectorCipher(
      spec,
      await provider.aes(keys.data),
      keys.tweak && await provider.aes(keys.tweak),
      keys.essiv && await provider.aes(keys.essiv),
    );
  } finally {
    for (const k of Object.values(keys)) k?.fill(0);
  }
}

/**
 * The AES keys a {@linkcode SectorCipher} is made of: the data key, the
 * XTS tweak key, and the ESSIV key (the `ivgenHash` digest of the whole
 * key). Copies: the caller wipes them.
 *
 * @param provider The digests.
 * @param spec The cipher.
 * @param key `cipherKeyLength(spec)` bytes.
 * @returns The keys.
 */
export async function sectorCipherKeys(
  provider: CryptoProvider,
  spec: CipherSpec,
  key: Uint8Array,
): Promise<{ data: Uint8Array; tweak?: Uint8Array; essiv?: Uint8Array }> {
  const length = cipherKeyLength(spec);
  if (key.length !== length) {
    throw new RangeError(
      `${spec.algorithm}-${spec.mode} takes a ${length}-byte key, not ${key.length} bytes`,
    );
  }
  const half = AES_KEY_BYTES[spec.algorithm];
  const data = key.slice(0, half);
  const tweak = spec.mode === "xts" ? key.slice(half) : undefined;
  let essiv: Uint8Array | undefined;
  if (spec.ivgen === "essiv" && spec.mode !== "ecb") {
    const hash = spec.ivgenHash;
    if (!hash || !aesForKeyLength(HASH_LENGTHS[hash])) {
      throw new RangeError(
        `ESSIV needs a hash whose digest is an AES key (sha256), not ${hash}`,
      );
    }
    essiv = await provider.digest(hash, key);
  }
  return { data, tweak, essiv };
}
