/**
 * The anti-forensic splitter of LUKS1: a key is stored as `stripes` blocks
 * whose merge through a hash-based diffusion gives it back, so that losing
 * any part of the stored material loses the key. QEMU crypto/afsplit.c,
 * from cryptsetup's lib/luks1/af.c.
 *
 * @module
 */

import {
  type CryptoProvider,
  HASH_LENGTHS,
  type HashAlgorithm,
} from "./provider.ts";

/**
 * Diffuses `block` in place: each digest-sized piece i becomes
 * hash(be32(i) || piece), cut to the piece's length.
 */
async function diffuse(
  provider: CryptoProvider,
  hash: HashAlgorithm,
  block: Uint8Array,
): Promise<void> {
  const digestLength = HASH_LENGTHS[hash];
  const input = new Uint8Array(4 + digestLength);
  const view = new DataView(input.buffer);
  for (let at = 0, i = 0; at < block.length; at += digestLength, i++) {
    const piece = block.subarray(at, Math.min(at + digestLength, block.length));
    view.setUint32(0, i);
    input.set(piece, 4);
    const digest = await provider.digest(
      hash,
      input.subarray(0, 4 + piece.length),
    );
    piece.set(digest.subarray(0, piece.length));
  }
  input.fill(0);
}

/**
 * Merges AF-split key material back into the key (`qcrypto_afsplit_decode`):
 * XOR each stripe but the last into an accumulator, diffusing it after
 * each; the key is the last stripe XOR the accumulator.
 *
 * @param provider The digests.
 * @param hash The key slot's hash.
 * @param keyLength Bytes of key (one stripe).
 * @param stripes Stripes in `material`.
 * @param material `keyLength * stripes` bytes, decrypted.
 * @returns The key.
 *
 * @example Splitting and merging a key
 * ```ts
 * import { afMerge, afSplit, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const key = new Uint8Array(32).fill(5);
 * const material = await afSplit(webCrypto, "sha256", key, 10);
 * assertEquals(material.length, 320);
 * assertEquals(await afMerge(webCrypto, "sha256", 32, 10, material), key);
 * ```
 */
export async function afMerge(
  provider: CryptoProvider,
  hash: HashAlgorithm,
  keyLength: number,
  stripes: number,
  material: Uint8Array,
): Promise<Uint8Array> {
  const block = new Uint8Array(keyLength);
  for (let s = 0; s < stripes - 1; s++) {
    const stripe = material.subarray(s * keyLength, (s + 1) * keyLength);
    for (let i = 0; i < keyLength; i++) block[i] ^= stripe[i];
    await diffuse(provider, hash, block);
  }
  const last = material.subarray(
    (stripes - 1) * keyLength,
    stripes * keyLength,
  );
  for (let i = 0; i < keyLength; i++) block[i] ^= last[i];
  return block;
}

/** Fills `bytes` with random bytes, 64 KiB at a time (the WebCrypto limit). */
export function randomBytes(
  bytes: Uint8Array<ArrayBuffer>,
): Uint8Array<ArrayBuffer> {
  for (let at = 0; at < bytes.length; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, at + 65536));
  }
  return bytes;
}

/**
 * Splits `key` into `stripes` stripes (`qcrypto_afsplit_encode`): random
 * stripes, and a last one that makes {@linkcode afMerge} give the key back.
 *
 * @param provider The digests.
 * @param hash The key slot's hash.
 * @param key The key to split.
 * @param stripes How many stripes (LUKS1 uses 4000).
 * @returns `key.length * stripes` bytes, to be encrypted.
 *
 * @example Different material each time, the same key back
 * ```ts
 * import { afMerge, afSplit, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals, assertNotEquals } from "@std/assert";
 *
 * const key = new Uint8Array(16).fill(1);
 * const a = await afSplit(webCrypto, "sha1", key, 4);
 * const b = await afSplit(webCrypto, "sha1", key, 4);
 * assertNotEquals(a, b);
 * assertEquals(await afMerge(webCrypto, "sha1", 16, 4, b), key);
 * ```
 */
export async function afSplit(
  provider: CryptoProvider,
  hash: HashAlgorithm,
  key: Uint8Array,
  stripes: number,
): Promise<Uint8Array> {
  const n = key.length;
  const out = randomBytes(new Uint8Array(n * stripes));
  const block = new Uint8Array(n);
  for (let s = 0; s < stripes - 1; s++) {
    const stripe = out.subarray(s * n, (s + 1) * n);
    for (let i = 0; i < n; i++) block[i] ^= stripe[i];
    await diffuse(provider, hash, block);
  }
  const last = out.subarray((stripes - 1) * n);
  for (let i = 0; i < n; i++) last[i] = key[i] ^ block[i];
  block.fill(0);
  return out;
}
