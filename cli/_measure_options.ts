/**
 * `measure -o OPTIONS`: the new image's creation options, parsed and
 * checked as `qemu-img measure` does (QemuOpts typing of the qcow2 and raw
 * creation options, then `qcow2_measure`'s own checks). Options that do not
 * change the sizes are accepted and checked for their type only.
 *
 * @module
 */

import {
  LUKS_CIPHER_ALGS,
  LUKS_CIPHER_MODES,
  type MeasureOptions,
  type MeasurePreallocation,
} from "../mod.ts";
import { qemuSize } from "./_args.ts";

type Kind = "size" | "number" | "bool" | "string";

/** QEMU 7.2's creation options of the file protocol, shared by both. */
const FILE: Record<string, Kind> = {
  size: "size",
  preallocation: "string",
  nocow: "bool",
  extent_size_hint: "size",
};

/** The creation options by format, with their QemuOpts types. */
const OPTIONS: Record<"qcow2" | "raw", Record<string, Kind>> = {
  raw: FILE,
  qcow2: {
    ...FILE,
    compat: "string",
    backing_file: "string",
    backing_fmt: "string",
    data_file: "string",
    data_file_raw: "bool",
    encryption: "bool",
    cluster_size: "size",
    lazy_refcounts: "bool",
    refcount_bits: "number",
    compression_type: "string",
    extended_l2: "bool",
    "encrypt.format": "string",
    "encrypt.key-secret": "string",
    "encrypt.cipher-alg": "string",
    "encrypt.cipher-mode": "string",
    "encrypt.ivgen-alg": "string",
    "encrypt.ivgen-hash-alg": "string",
    "encrypt.hash-alg": "string",
    "encrypt.iter-time": "number",
  },
};

/**
 * Whether one `-o` argument is a valid option list (qemu-img.c
 * `is_valid_option_list`): not empty, no leading comma, and no odd number
 * of trailing commas.
 */
export function isValidOptionList(text: string): boolean {
  if (text === "" || text.startsWith(",")) return false;
  const trailing = text.length - text.replace(/,+$/, "").length;
  return trailing % 2 === 0;
}

/** Splits `a=b,c=d` as QemuOpts does: `,,` is a comma inside a value. */
function split(text: string): [string, string | undefined][] {
  const parts = text.replaceAll(",,", "\0").split(",");
  return parts.filter((p) => p !== "").map((part) => {
    const eq = part.indexOf("=");
    const name = (eq < 0 ? part : part.slice(0, eq)).replaceAll("\0", ",");
    const value = eq < 0 ? undefined : part.slice(eq + 1).replaceAll("\0", ",");
    return [name, value];
  });
}

/**
 * The {@linkcode MeasureOptions} of `-O format -o text`.
 *
 * @param format The new image's format.
 * @param text The `-o` values joined by commas, if any.
 * @param fail Makes the error to throw, from qemu-img's message.
 * @returns The options.
 */
export function measureOptions(
  format: "qcow2" | "raw",
  text: string | undefined,
  fail: (...reports: string[]) => Error,
  secretIds: ReadonlySet<string> = new Set(),
): MeasureOptions {
  const known = OPTIONS[format];
  const values = new Map<string, string>();
  const invalid = (message: string) =>
    fail(message, `Invalid options for file format '${format}'`);
  for (const [name, value] of split(text ?? "")) {
    const kind = known[name];
    if (kind === undefined) {
      throw invalid(`Invalid parameter '${name}'`);
    }
    const v = value ?? "on";
    if (kind === "size") {
      const bytes = qemuSize(v);
      if (typeof bytes !== "bigint") {
        throw invalid(
          `Parameter '${name}' expects a non-negative number below 2^64\n` +
            "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\n" +
            "and exabytes, respectively.",
        );
      }
    } else if (kind === "number") {
      if (!/^\s*(0[xX][0-9a-fA-F]+|0[0-7]*|[1-9]\d*)$/.test(v)) {
        throw invalid(`Parameter '${name}' expects a number`);
      }
    } else if (kind === "bool") {
      if (v !== "on" && v !== "off") {
        throw invalid(`Parameter '${name}' expects 'on' or 'off'`);
      }
    }
    values.set(name, v);
  }
  const options: MeasureOptions = { format };
  const size = values.get("size");
  if (size !== undefined) options.size = qemuSize(size) as bigint;
  const prealloc = values.get("preallocation");
  if (prealloc !== undefined) {
    if (!["off", "metadata", "falloc", "full"].includes(prealloc)) {
      throw fail(`invalid parameter value: ${prealloc}`);
    }
    options.preallocation = prealloc as MeasurePreallocation;
  }
  if (format === "raw") return options;
  if (values.get("encrypt.format") === "luks") {
    // Checked in the order QEMU creates its dummy LUKS header.
    const cipherAlg = values.get("encrypt.cipher-alg") ?? "aes-256";
    const cipherMode = values.get("encrypt.cipher-mode") ?? "xts";
    if (!LUKS_CIPHER_ALGS.includes(cipherAlg)) {
      throw fail(`Parameter 'cipher-alg' does not accept value '${cipherAlg}'`);
    }
    if (!LUKS_CIPHER_MODES.includes(cipherMode)) {
      throw fail(
        `Parameter 'cipher-mode' does not accept value '${cipherMode}'`,
      );
    }
    if (cipherAlg.endsWith("-192")) {
      // QEMU 7.2 aborts on these (an assertion in crypto/block.c).
      throw fail(
        `cipher-alg ${cipherAlg}: qemu-img 7.2 cannot create LUKS images with 192-bit keys (it aborts)`,
      );
    }
    const secret = values.get("encrypt.key-secret");
    if (secret === undefined) {
      throw fail("Parameter 'encrypt.key-secret' is required for cipher");
    }
    if (!secretIds.has(secret)) throw fail(`No secret with id '${secret}'`);
    options.luks = { cipherAlg, cipherMode };
  }
  const clusterSize = values.get("cluster_size");
  if (clusterSize !== undefined) {
    const bytes = qemuSize(clusterSize) as bigint;
    // Out of range values fail measure's own check.
    options.clusterSize = bytes > 1n << 40n ? 3 : Number(bytes);
  }
  const compat = values.get("compat");
  if (compat !== undefined) {
    if (compat !== "0.10" && compat !== "1.1") {
      throw fail(`Invalid compatibility level: '${compat}'`);
    }
    options.compat = compat;
  }
  const refcountBits = values.get("refcount_bits");
  if (refcountBits !== undefined) {
    const n = Number(
      /^\s*0[0-7]+$/.test(refcountBits)
        ? parseInt(refcountBits, 8)
        : refcountBits,
    );
    // Out of range values fail measure's own check.
    options.refcountBits = Number.isSafeInteger(n) ? n : 3;
  }
  if (values.get("extended_l2") === "on") options.extendedL2 = true;
  const backing = values.get("backing_file");
  if (backing !== undefined) options.backingFile = backing;
  return options;
}
