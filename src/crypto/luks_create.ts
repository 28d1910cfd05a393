/**
 * Making a new LUKS1 volume header for an image, as QEMU's
 * `qcrypto_block_luks_create` does: a random master key and its PBKDF2
 * digest, key slot 0 holding the master key (AF-split, encrypted with a key
 * derived from the password), the other 7 slots disabled, and PBKDF2
 * iteration counts calibrated to `iter-time` milliseconds on this machine.
 *
 * @module
 */

import { afSplit, randomBytes } from "./afsplit.ts";
import { type ImageEncryption, sectorEncryption } from "./encryption.ts";
import {
  encodeLuksHeader,
  LUKS_KEY_SLOTS,
  LUKS_STRIPES,
  type LuksKeySlot,
  luksLayout,
} from "./luks_header.ts";
import type { CryptoProvider, HashAlgorithm } from "./provider.ts";
import {
  type CipherAlgorithm,
  cipherKeyLength,
  type CipherMode,
  type CipherSpec,
  type IvGenerator,
  sectorCipher,
} from "./sector_cipher.ts";

/**
 * The `encrypt.*` options of `qemu-img create -o encrypt.format=luks`,
 * with qemu-img 7.2's defaults.
 *
 * @example AES-128-CBC with ESSIV
 * ```ts
 * import type { LuksCreateOptions } from "@qcow2/qcow2";
 *
 * const options: LuksCreateOptions = { cipherAlg: "aes-128", cipherMode: "cbc", ivgenAlg: "essiv", iterTime: 10 };
 * ```
 */
export interface LuksCreateOptions {
  /** `encrypt.cipher-alg` (default `aes-256`). */
  cipherAlg?: CipherAlgorithm;
  /** `encrypt.cipher-mode` (default `xts`). */
  cipherMode?: CipherMode;
  /** `encrypt.ivgen-alg` (default `plain64`). */
  ivgenAlg?: IvGenerator;
  /** `encrypt.ivgen-hash-alg` (default `sha256` with `essiv`). */
  ivgenHashAlg?: HashAlgorithm;
  /** `encrypt.hash-alg`: the key slots' PBKDF2 hash (default `sha256`). */
  hashAlg?: HashAlgorithm;
  /** `encrypt.iter-time`: milliseconds of PBKDF2 to unlock (default 2000). */
  iterTime?: number;
}

/**
 * A new volume's LUKS area and the encryption of its data.
 *
 * @example See {@linkcode createLuks}.
 * ```ts
 * import type { NewLuks } from "@qcow2/qcow2";
 *
 * const describe = (luks: NewLuks) => `${luks.area.length} bytes of LUKS header`;
 * ```
 */
export interface NewLuks {
  /** The LUKS header and key material: write it whole (`payload_offset` bytes). */
  area: Uint8Array;
  /** The master key's sector encryption, for the data. */
  encryption: ImageEncryption;
}

const MIN_ITERATIONS = 1000;

/**
 * PBKDF2 iterations per second on this machine for `hash` and `length`
 * bytes of output: runs of doubling counts until one takes 100 ms (QEMU's
 * `qcrypto_pbkdf2_count_iters` measures 500 ms of thread CPU time).
 */
async function iterationsPerSecond(
  provider: CryptoProvider,
  hash: HashAlgorithm,
  password: Uint8Array,
  length: number,
): Promise<number> {
  const salt = randomBytes(new Uint8Array(32));
  for (let n = 1 << 12;; n *= 2) {
    const began = performance.now();
    (await provider.pbkdf2(hash, password, salt, n, length)).fill(0);
    const ms = performance.now() - began;
    if (ms >= 100 || n >= 1 << 30) return n * 1000 / Math.max(ms, 1);
  }
}

/**
 * Makes a new LUKS1 volume: the header and key slot 0 for `password`, as
 * QEMU lays them out (key material from 4096 bytes in 4 KiB-rounded areas,
 * 4000 stripes), with iteration counts calibrated to `iterTime`: the slot's
 * to `iterTime`, the master key digest's to an eighth of it, at least 1000
 * each.
 *
 * @param provider The primitives.
 * @param options The cipher, hashes and iteration time.
 * @param password The password of key slot 0.
 * @returns The LUKS area and the data's encryption.
 * @throws {RangeError} For options QEMU refuses (ESSIV with a
 * hash that is no AES key, a bad iteration time) or could not open (AES-192
 * outside XTS: its key material is not whole sectors).
 *
 * @example A volume that unlocks with its password
 * ```ts
 * import { bytesSource, createLuks, parseLuksHeader, unlockLuks, webCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const { area, encryption } = await createLuks(webCrypto, { cipherAlg: "aes-128", cipherMode: "cbc", iterTime: 1 }, "pw");
 * const header = parseLuksHeader(area);
 * assertEquals([header.cipherAlgorithm, header.cipherMode, header.payloadOffset], ["aes-128", "cbc-plain64", area.length]);
 * const key = await unlockLuks(webCrypto, bytesSource(area), { offset: 0, length: area.length }, header, "pw");
 * assertEquals(key.length, 16);
 * encryption.close();
 * ```
 */
export async function createLuks(
  provider: CryptoProvider,
  options: LuksCreateOptions,
  password: string | Uint8Array,
): Promise<NewLuks> {
  const hash = options.hashAlg ?? "sha256";
  const ivgen = options.ivgenAlg ?? "plain64";
  const ivgenHash = options.ivgenHashAlg ??
    (ivgen === "essiv" ? "sha256" : undefined);
  const spec: CipherSpec = {
    algorithm: options.cipherAlg ?? "aes-256",
    mode: options.cipherMode ?? "xts",
    ivgen,
    ivgenHash: ivgen === "essiv" ? ivgenHash : undefined,
  };
  const iterTime = options.iterTime ?? 2000;
  if (!Number.isSafeInteger(iterTime) || iterTime < 1) {
    throw new RangeError(
      `encrypt.iter-time must be a whole number of milliseconds from 1, not ${iterTime}`,
    );
  }
  const secret = typeof password === "string"
    ? new TextEncoder().encode(password)
    : password.slice();
  const keyBytes = cipherKeyLength(spec);
  if (keyBytes * LUKS_STRIPES % 512 !== 0) {
    // QEMU asserts whole sectors when it decrypts key material
    // (do_qcrypto_block_cipher_encdec): it could not open the image.
    throw new RangeError(
      `Cannot create LUKS with ${spec.algorithm}-${spec.mode}: its key material (${
        keyBytes * LUKS_STRIPES
      } bytes) is not whole 512-byte sectors, which QEMU cannot open; use aes-192 with xts, or aes-128 or aes-256`,
    );
  }
  const masterKey = randomBytes(new Uint8Array(keyBytes));
  const slotKeys: Uint8Array[] = [];
  try {
    // Checks the ESSIV hash before any time is spent.
    await sectorCipher(provider, spec, masterKey).catch((e) => {
      throw new RangeError(`Cannot create LUKS: ${e.message}`, { cause: e });
    });
    const masterKeySalt = randomBytes(new Uint8Array(32));
    const masterRate = await iterationsPerSecond(provider, hash, masterKey, 20);
    const masterKeyIterations = Math.max(
      MIN_ITERATIONS,
      Math.floor(masterRate * iterTime / 1000 / 8),
    );
    const masterKeyDigest = await provider.pbkdf2(
      hash,
      masterKey,
      masterKeySalt,
      masterKeyIterations,
      20,
    );
    const { keyOffsets, payloadOffset } = luksLayout(keyBytes);
    const slotSalt = randomBytes(new Uint8Array(32));
    const slotRate = await iterationsPerSecond(
      provider,
      hash,
      secret,
      keyBytes,
    );
    const slotIterations = Math.max(
      MIN_ITERATIONS,
      Math.floor(slotRate * iterTime / 1000),
    );
    const slotKey = await provider.pbkdf2(
      hash,
      secret,
      slotSalt,
      slotIterations,
      keyBytes,
    );
    slotKeys.push(slotKey);
    const material = await afSplit(provider, hash, masterKey, LUKS_STRIPES);
    (await sectorCipher(provider, spec, slotKey)).encrypt(0, material);
    const keySlots: LuksKeySlot[] = Array.from(
      { length: LUKS_KEY_SLOTS },
      (_, i) =>
        i === 0
          ? {
            active: true,
            iterations: slotIterations,
            salt: slotSalt,
            keyOffset: keyOffsets[0],
            stripes: LUKS_STRIPES,
          }
          : {
            active: false,
            iterations: 0,
            salt: new Uint8Array(32),
            keyOffset: keyOffsets[i],
            stripes: LUKS_STRIPES,
          },
    );
    const area = new Uint8Array(payloadOffset);
    area.set(
      encodeLuksHeader({
        cipherName: "aes",
        cipherMode: `${spec.mode}-${ivgen}${ivgenHash ? `:${ivgenHash}` : ""}`,
        hashSpec: hash,
        keyBytes,
        masterKeyDigest,
        masterKeySalt,
        masterKeyIterations,
        uuid: crypto.randomUUID(),
        keySlots,
        payloadOffset,
      }),
    );
    area.set(material, keyOffsets[0]);
    material.fill(0);
    const encryption = await (provider.encryption?.("luks", spec, masterKey) ??
      sectorEncryption(provider, "luks", spec, masterKey));
    return { area, encryption };
  } finally {
    masterKey.fill(0);
    secret.fill(0);
    for (const k of slotKeys) k.fill(0);
  }
}
