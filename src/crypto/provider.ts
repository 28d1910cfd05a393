/**
 * The cryptographic primitives the encrypted-image code is built on, as an
 * injected interface (like the codecs), and the portable implementation:
 * WebCrypto for PBKDF2 and digests, `@noble/ciphers` (audited) for the raw
 * AES block, which WebCrypto does not offer. No cipher or hash is our own:
 * the modes (XTS, CBC, CTR, ECB) and IV generators in `sector_cipher.ts`
 * only chain these blocks as QEMU's crypto/ does.
 *
 * @module
 */

import type { ImageEncryption } from "./encryption.ts";
import type { CipherSpec } from "./sector_cipher.ts";

/**
 * The hash algorithms of LUKS key slots, the AF splitter and ESSIV.
 *
 * @example The hashes LUKS images may name
 * ```ts
 * import { type HashAlgorithm, HASH_LENGTHS } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const hash: HashAlgorithm = "sha256";
 * assertEquals(HASH_LENGTHS[hash], 32);
 * ```
 */
export type HashAlgorithm = "sha1" | "sha256" | "sha384" | "sha512";

/**
 * Digest length in bytes of each {@linkcode HashAlgorithm}.
 *
 * @example Digest lengths
 * ```ts
 * import { HASH_LENGTHS } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(HASH_LENGTHS.sha1, 20);
 * assertEquals(HASH_LENGTHS.sha512, 64);
 * ```
 */
export const HASH_LENGTHS: Readonly<Record<HashAlgorithm, number>> = {
  sha1: 20,
  sha256: 32,
  sha384: 48,
  sha512: 64,
};

/**
 * AES with one key over whole 16-byte blocks, each on its own (ECB, no
 * padding): the block cipher the sector modes chain. Both calls take any
 * multiple of 16 bytes and return a new array of the same length, or write
 * into `output` (same length) and return it.
 *
 * @example Encrypting and decrypting two blocks
 * ```ts
 * import { webCrypto } from "@qcow2/qcow2";
 * import { assertEquals, assertNotEquals } from "@std/assert";
 *
 * const aes = await webCrypto.aes(new Uint8Array(16));
 * const plain = new Uint8Array(32).fill(7);
 * const sealed = aes.encrypt(plain);
 * assertNotEquals(sealed, plain);
 * assertEquals(aes.decrypt(sealed), plain);
 * ```
 */
export interface BlockCipher {
  /** Encrypts each 16-byte block of `input`. */
  encrypt(input: Uint8Array, output?: Uint8Array): Uint8Array;
  /** Decrypts each 16-byte block of `input`. */
  decrypt(input: Uint8Array, output?: Uint8Array): Uint8Array;
}

/**
 * The primitives encrypted images need. `mod.ts` passes `nodeCrypto`
 * (`node:crypto`); browsers and other runtimes use {@linkcode webCrypto}.
 *
 * @example Counting PBKDF2 runs while an image is unlocked
 * ```ts
 * import { type CryptoProvider, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let runs = 0;
 * const counting: CryptoProvider = {
 *   ...webCrypto,
 *   pbkdf2: (...args) => (runs++, webCrypto.pbkdf2(...args)),
 * };
 * const key = await counting.pbkdf2("sha256", new TextEncoder().encode("pw"), new Uint8Array(32), 1000, 32);
 * assertEquals([key.length, runs], [32, 1]);
 * ```
 */
export interface CryptoProvider {
  /**
   * An AES block cipher for a 16, 24 or 32-byte key (AES-128/192/256). The
   * caller wipes its copy of the key; the cipher keeps what it needs.
   */
  aes(key: Uint8Array): BlockCipher | Promise<BlockCipher>;
  /** PBKDF2 (RFC 8018) with HMAC over `hash`: `length` bytes of key. */
  pbkdf2(
    hash: HashAlgorithm,
    password: Uint8Array,
    salt: Uint8Array,
    iterations: number,
    length: number,
  ): Promise<Uint8Array>;
  /** The digest of `data`. */
  digest(
    hash: HashAlgorithm,
    data: Uint8Array,
  ): Uint8Array | Promise<Uint8Array>;
  /**
   * Optional: sector encryption run elsewhere (a pool of workers). Without
   * it, sectors are encrypted on the calling thread with `aes`.
   */
  encryption?(
    format: "luks" | "aes",
    spec: CipherSpec,
    key: Uint8Array,
  ): Promise<ImageEncryption>;
}

const WEB_HASH: Record<HashAlgorithm, string> = {
  sha1: "SHA-1",
  sha256: "SHA-256",
  sha384: "SHA-384",
  sha512: "SHA-512",
};

/** A copy whose buffer is a plain `ArrayBuffer`, as WebCrypto wants. */
function own(bytes: Uint8Array): Uint8Array<ArrayBuffer> {
  return new Uint8Array(bytes);
}

/**
 * The portable primitives: WebCrypto's PBKDF2 and digests (native code in
 * every browser and runtime), and the AES block of `@noble/ciphers`, an
 * audited pure-TypeScript library, since WebCrypto has no raw AES block.
 *
 * @example PBKDF2-HMAC-SHA1 of RFC 6070's first test vector
 * ```ts
 * import { webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const te = new TextEncoder();
 * const key = await webCrypto.pbkdf2("sha1", te.encode("password"), te.encode("salt"), 1, 20);
 * const hex = Array.from(key, (b) => b.toString(16).padStart(2, "0")).join("");
 * assertEquals(hex, "0c60c80f961f0e71f3a9b524af6012062fe037a6");
 * ```
 */
export const webCrypto: CryptoProvider = {
  async aes(key: Uint8Array): Promise<BlockCipher> {
    const k = key.slice();
    // Loaded on first use: only encrypted images need it, and it costs
    // every command of the CLI start-up time when imported eagerly.
    const { ecb } = await import("@noble/ciphers/aes.js");
    // noble's ciphers are single-use (a guard against nonce reuse, which ECB
    // has none of): one per call. It expands the key on each call anyway.
    const cipher = () => ecb(k, { disablePadding: true });
    return {
      encrypt: (input, output) => cipher().encrypt(input, output),
      decrypt: (input, output) => cipher().decrypt(input, output),
    };
  },
  async pbkdf2(hash, password, salt, iterations, length) {
    const secret = own(password);
    try {
      const key = await crypto.subtle.importKey(
        "raw",
        secret,
        "PBKDF2",
        false,
        ["deriveBits"],
      );
      const bits = await crypto.subtle.deriveBits(
        { name: "PBKDF2", hash: WEB_HASH[hash], salt: own(salt), iterations },
        key,
        length * 8,
      );
      return new Uint8Array(bits);
    } finally {
      secret.fill(0);
    }
  },
  async digest(hash, data) {
    return new Uint8Array(
      await crypto.subtle.digest(WEB_HASH[hash], own(data)),
    );
  },
};
