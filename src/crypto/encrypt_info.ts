/**
 * What `qemu-img info` shows of an image's encryption without a password:
 * `format-specific.data.encrypt`, with qemu-img 7.2's keys, values and key
 * order (QEMU's `qcrypto_block_luks_get_info`, printed through a QDict).
 *
 * @module
 */

import type { ByteSource } from "../io/source.ts";
import type { LuksHeader } from "./luks_header.ts";

/**
 * One key slot, as `qemu-img info` shows it: iterations and stripes only
 * for an active slot.
 *
 * @example An unused slot shows its offset only
 * ```ts
 * import type { LuksSlotInfo } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const slot: LuksSlotInfo = { active: false, "key-offset": 262144 };
 * assertEquals(slot.iters, undefined);
 * ```
 */
export interface LuksSlotInfo {
  /** Whether the slot holds a key. */
  active: boolean;
  /** PBKDF2 iterations (active slots only). */
  iters?: number;
  /** Byte offset of the key material in the LUKS area. */
  "key-offset": number;
  /** Anti-forensic stripes (active slots only). */
  stripes?: number;
}

/**
 * The `encrypt` object of `qemu-img info` for a LUKS image.
 *
 * @example The info of a LUKS header
 * ```ts
 * import { encodeLuksHeader, luksInfo, parseLuksHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const info = luksInfo(parseLuksHeader(encodeLuksHeader({
 *   cipherName: "aes", cipherMode: "xts-plain64", hashSpec: "sha256", keyBytes: 64,
 *   masterKeyDigest: new Uint8Array(20), masterKeySalt: new Uint8Array(32), masterKeyIterations: 1000,
 *   uuid: "00000000-0000-4000-8000-000000000000",
 * })));
 * assertEquals([info["cipher-alg"], info["cipher-mode"], info["payload-offset"]], ["aes-256", "xts", 2068480]);
 * ```
 */
export interface LuksEncryptInfo {
  /** `plain`, `plain64` or `essiv`. */
  "ivgen-alg": string;
  /** The key slots' hash. */
  "hash-alg": string;
  /** The cipher with its key size: `aes-256`. */
  "cipher-alg": string;
  /** The volume UUID. */
  uuid: string;
  /** ESSIV's hash (for `essiv` only). */
  "ivgen-hash-alg"?: string;
  /** Always `luks`. */
  format: "luks";
  /** `xts`, `cbc`, `ctr` or `ecb`. */
  "cipher-mode": string;
  /** The 8 key slots. */
  slots: LuksSlotInfo[];
  /** Byte offset of the payload in the LUKS volume. */
  "payload-offset": number;
  /** PBKDF2 iterations of the master key digest. */
  "master-key-iters": number;
}

/**
 * The `encrypt` object of `qemu-img info`: `{ format: "aes" }` for legacy
 * AES, the LUKS header's description for LUKS.
 *
 * @example Legacy AES says only its format
 * ```ts
 * import type { EncryptInfo } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const info: EncryptInfo = { format: "aes" };
 * assertEquals(info.format, "aes");
 * ```
 */
export type EncryptInfo = { format: "aes" } | LuksEncryptInfo;

/**
 * Describes a LUKS header as `qemu-img info` does, in its key order.
 *
 * @param header A parsed header.
 * @returns The `encrypt` object.
 */
export function luksInfo(header: LuksHeader): LuksEncryptInfo {
  const info: LuksEncryptInfo = {
    "ivgen-alg": header.ivgen,
    "hash-alg": header.hash,
    "cipher-alg": header.cipherAlgorithm,
    uuid: header.uuid,
    "ivgen-hash-alg": header.ivgen === "essiv" ? header.ivgenHash : undefined,
    format: "luks",
    "cipher-mode": header.mode,
    slots: header.keySlots.map((s) =>
      s.active
        ? {
          active: true,
          iters: s.iterations,
          "key-offset": s.keyOffset,
          stripes: s.stripes,
        }
        : { active: false, "key-offset": s.keyOffset }
    ),
    "payload-offset": header.payloadOffset,
    "master-key-iters": header.masterKeyIterations,
  };
  if (info["ivgen-hash-alg"] === undefined) delete info["ivgen-hash-alg"];
  return info;
}

/**
 * Reads what `qemu-img info` shows of an image's encryption, without a
 * password.
 *
 * @param source The image file.
 * @param header The image's encryption method and, for LUKS, the area the
 * full disk encryption extension gives.
 * @returns The `encrypt` object, or undefined for an unencrypted image.
 * @throws {Qcow2Error} `BAD_LUKS_HEADER` for a damaged LUKS header, as
 * `qemu-img info` fails on one.
 *
 * @example The encryption of a legacy AES image
 * ```ts
 * import { bytesSource, readEncryptInfo } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const source = bytesSource(new Uint8Array(0));
 * assertEquals(await readEncryptInfo(source, { cryptMethod: 1 }), { format: "aes" });
 * assertEquals(await readEncryptInfo(source, { cryptMethod: 0 }), undefined);
 * ```
 */
export async function readEncryptInfo(
  source: ByteSource,
  header: { cryptMethod: number; encryptionArea?: { offset: number } },
): Promise<EncryptInfo | undefined> {
  if (header.cryptMethod === 0) return undefined;
  if (header.cryptMethod === 1 || !header.encryptionArea) {
    return { format: "aes" };
  }
  // Loaded only for a LUKS image: `qcow2 info` of others needs none of it.
  const { readLuksHeader } = await import("./encryption.ts");
  return luksInfo(await readLuksHeader(source, header.encryptionArea.offset));
}
