/**
 * `-o encrypt.*` for `create` and `convert -O qcow2`: the LUKS options of
 * qemu-img 7.2 (QEMU `qcow2_create_opts`, `QCryptoBlockCreateOptionsLUKS`),
 * with the password from `encrypt.key-secret=ID` (an `--object secret`) or
 * `--password-file`.
 *
 * @module
 */

import {
  createLuks,
  type HashAlgorithm,
  type LuksCreateOptions,
  type NewLuks,
  nodeCrypto,
  Qcow2Error,
} from "../mod.ts";
import type { Flags } from "./_args.ts";
import { namedSecret } from "./_secrets.ts";

/** `encrypt.*` options in the order qemu-img prints them. */
const ENCRYPT_OPTIONS = [
  "encrypt.format",
  "encrypt.key-secret",
  "encrypt.cipher-alg",
  "encrypt.cipher-mode",
  "encrypt.ivgen-alg",
  "encrypt.ivgen-hash-alg",
  "encrypt.hash-alg",
  "encrypt.iter-time",
];

/** The help lines for the `encrypt.*` options. */
export const ENCRYPT_HELP =
  `                  encrypt.format=luks with encrypt.key-secret=ID (an
                  --object secret) or --password-file, and optionally
                  encrypt.cipher-alg (aes-128, aes-192, aes-256), cipher-mode
                  (xts, cbc, ctr, ecb), ivgen-alg (plain, plain64, essiv),
                  ivgen-hash-alg, hash-alg (sha1, sha256, sha384, sha512),
                  iter-time (ms); defaults as qemu-img's: aes-256-xts-plain64,
                  sha256, 2000 ms`;

/** The `encrypt.*` part of the "Formatting" line, as qemu-img prints it. */
export function encryptFormatting(text: Map<string, string>): string[] {
  return ENCRYPT_OPTIONS.filter((name) => text.has(name)).map((name) =>
    `${name}=${text.get(name)}`
  );
}

function bad(message: string): RangeError {
  return new RangeError(
    message,
  );
}

const HASHES = ["sha1", "sha256", "sha384", "sha512"];
const QEMU_ONLY_HASHES = ["md5", "sha224", "ripemd160"];

function hashOption(name: string, value: string): HashAlgorithm {
  if (HASHES.includes(value)) return value as HashAlgorithm;
  if (QEMU_ONLY_HASHES.includes(value)) {
    throw new Qcow2Error(
      "UNSUPPORTED_CIPHER",
      `Parameter '${name}': hash '${value}' is not supported by this implementation (sha1, sha256, sha384 and sha512 are)`,
    );
  }
  throw bad(`Parameter '${name}' does not accept value '${value}'`);
}

/**
 * The new LUKS volume `-o` asks for, or undefined when it asks for none.
 *
 * @param text The `-o` options by name.
 * @param flags The command's flags (`--object`, `--password-file`).
 * @param command The command, for usage errors.
 * @returns The LUKS area and encryption for the writer.
 * @throws {RangeError} For a bad or missing option; legacy AES is refused,
 * as QEMU discourages it.
 * @throws {Qcow2Error} `UNSUPPORTED_CIPHER` for twofish, serpent, cast5 and
 * hashes we lack.
 */
export async function luksFromOptions(
  text: Map<string, string>,
  flags: Flags,
  command: string,
): Promise<NewLuks | undefined> {
  const names = [...text.keys()].filter((n) => n.startsWith("encrypt."));
  if (names.length === 0) return undefined;
  for (const name of names) {
    if (!ENCRYPT_OPTIONS.includes(name)) {
      throw bad(`Invalid parameter '${name}' (see -o help)`);
    }
  }
  const format = text.get("encrypt.format");
  if (format === "aes") {
    throw bad(
      "encrypt.format=aes: creating images with legacy AES encryption is not supported, as QEMU discourages it (the method is weak and deprecated); use encrypt.format=luks",
    );
  }
  if (format !== "luks") {
    throw bad(
      format === undefined
        ? "encrypt.* options need encrypt.format=luks"
        : `Parameter 'encrypt.format' does not accept value '${format}' (luks is supported)`,
    );
  }
  const options: LuksCreateOptions = {};
  const alg = text.get("encrypt.cipher-alg");
  if (alg !== undefined) {
    if (["aes-128", "aes-192", "aes-256"].includes(alg)) {
      options.cipherAlg = alg as LuksCreateOptions["cipherAlg"];
    } else if (/^(twofish|serpent|cast5)-\d+$/.test(alg)) {
      throw new Qcow2Error(
        "UNSUPPORTED_CIPHER",
        `Parameter 'encrypt.cipher-alg': ${alg} is not supported by this implementation (AES is)`,
      );
    } else {
      throw bad(
        `Parameter 'encrypt.cipher-alg' does not accept value '${alg}'`,
      );
    }
  }
  const mode = text.get("encrypt.cipher-mode");
  if (mode !== undefined) {
    if (!["xts", "cbc", "ctr", "ecb"].includes(mode)) {
      throw bad(
        `Parameter 'encrypt.cipher-mode' does not accept value '${mode}'`,
      );
    }
    options.cipherMode = mode as LuksCreateOptions["cipherMode"];
  }
  const ivgen = text.get("encrypt.ivgen-alg");
  if (ivgen !== undefined) {
    if (!["plain", "plain64", "essiv"].includes(ivgen)) {
      throw bad(
        `Parameter 'encrypt.ivgen-alg' does not accept value '${ivgen}'`,
      );
    }
    options.ivgenAlg = ivgen as LuksCreateOptions["ivgenAlg"];
  }
  const ivgenHash = text.get("encrypt.ivgen-hash-alg");
  if (ivgenHash !== undefined) {
    options.ivgenHashAlg = hashOption("encrypt.ivgen-hash-alg", ivgenHash);
  }
  const hash = text.get("encrypt.hash-alg");
  if (hash !== undefined) {
    options.hashAlg = hashOption("encrypt.hash-alg", hash);
  }
  const iterTime = text.get("encrypt.iter-time");
  if (iterTime !== undefined) {
    if (!/^\d+$/.test(iterTime) || Number(iterTime) < 1) {
      throw bad(
        `Parameter 'encrypt.iter-time' expects a number of milliseconds, not '${iterTime}'`,
      );
    }
    options.iterTime = Number(iterTime);
  }
  const id = text.get("encrypt.key-secret");
  const password = await namedSecret(flags, id, command);
  if (password === undefined) {
    throw bad(
      "Parameter 'encrypt.key-secret' is required for cipher: give encrypt.key-secret=ID with --object secret,id=ID,... or --password-file FILE",
    );
  }
  try {
    return await createLuks(nodeCrypto, options, password);
  } finally {
    password.fill(0);
  }
}
