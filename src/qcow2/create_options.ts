/**
 * The options of a new qcow2 image, as `qemu-img create -o` takes them:
 * parsing `a=b,c=d`, qemu-img 7.2's defaults, and the combinations it refuses
 * (QEMU's `qcow2_co_create_opts` and `qcow2_co_create`).
 *
 * @module
 */

import type { CompressionType } from "./header.ts";
import { splitOptionList } from "../option_string.ts";
import { INT64_MAX, strtosz } from "../size.ts";

/** How much of a new image is laid out in advance (qemu-img's `preallocation`). */
export type Preallocation = "off" | "metadata" | "falloc" | "full";

/**
 * The options of a new qcow2 image. Every field is optional but `size`;
 * what is left out takes qemu-img 7.2's default.
 *
 * @example A small v3 image with 4 KiB clusters
 * ```ts
 * import { type CreateOptions, resolveCreateOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const options: CreateOptions = { size: 1000, clusterSize: 4096 };
 * const resolved = resolveCreateOptions(options);
 * assertEquals(resolved.size, 1024); // rounded up to 512 bytes
 * assertEquals(resolved.refcountBits, 16);
 * ```
 */
export interface CreateOptions {
  /** Virtual size in bytes; rounded up to a multiple of 512, as qemu-img does. */
  size: number;
  /** Cluster size in bytes: a power of two from 512 to 2 MiB (default 65536). */
  clusterSize?: number;
  /** `"1.1"` (qcow2 version 3, the default) or `"0.10"` (version 2). */
  compat?: "0.10" | "1.1";
  /** Width of a refcount: a power of two from 1 to 64 bits (default 16; v2 only 16). */
  refcountBits?: number;
  /** Extended L2 entries with 32 subclusters (v3, clusters of 16 KiB or more). */
  extendedL2?: boolean;
  /** How compressed clusters are compressed (default `"zlib"`; `"zstd"` needs v3). */
  compressionType?: CompressionType;
  /** Postpone refcount updates (compatible feature bit 0; v3 only). */
  lazyRefcounts?: boolean;
  /** Lay out L2 tables (`metadata`) and data (`falloc`, `full`) in advance. */
  preallocation?: Preallocation;
  /** The backing file's name, written into the image as it is given. */
  backingFile?: string;
  /** The backing file's format (`qcow2`, `raw`, ...): required with `backingFile`. */
  backingFormat?: string;
  /**
   * The `encrypt.*` options, by name without `encrypt.` (`format`,
   * `key-secret`, `cipher-alg`, ...), as written. Kept for encryption; this
   * writer refuses them for now (`RangeError`).
   */
  encrypt?: Record<string, string>;
}

/**
 * {@linkcode CreateOptions} checked and completed with the defaults.
 *
 * @example The defaults of qemu-img 7.2
 * ```ts
 * import { resolveCreateOptions, type ResolvedCreateOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const resolved: ResolvedCreateOptions = resolveCreateOptions({ size: 1 << 30 });
 * assertEquals(resolved.clusterSize, 65536);
 * assertEquals(resolved.compat, "1.1");
 * assertEquals(resolved.compressionType, "zlib");
 * ```
 */
export interface ResolvedCreateOptions {
  /** Virtual size in bytes, a multiple of 512. */
  size: number;
  /** Cluster size in bytes. */
  clusterSize: number;
  /** `"0.10"` (version 2) or `"1.1"` (version 3). */
  compat: "0.10" | "1.1";
  /** Refcount width in bits. */
  refcountBits: number;
  /** Whether L2 entries are extended (128-bit, with subclusters). */
  extendedL2: boolean;
  /** The compression type. */
  compressionType: CompressionType;
  /** Whether refcounts are lazy. */
  lazyRefcounts: boolean;
  /** The preallocation mode. */
  preallocation: Preallocation;
  /** The backing file's name, if any. */
  backingFile?: string;
  /** The backing file's format, if any. */
  backingFormat?: string;
}

/** Largest L1 table QEMU accepts: 32 MiB of entries (`QCOW_MAX_L1_SIZE`). */
const MAX_L1_ENTRIES = 32 * 1024 * 1024 / 8;

function fail(message: string): RangeError {
  return new RangeError(
    message,
  );
}

/**
 * Checks options and fills in qemu-img 7.2's defaults, refusing what
 * `qemu-img create` refuses, with its reasons.
 *
 * @param options The options asked for.
 * @returns The options to create the image with.
 * @throws {RangeError} For a value out of range or a refused combination
 * (the message names the option), or a size beyond the format's limit
 * (QEMU: an L1 table over 32 MiB).
 *
 * @example Refusals, as qemu-img words them
 * ```ts
 * import { resolveCreateOptions } from "@qcow2/qcow2";
 * import { assertThrows } from "@std/assert";
 *
 * assertThrows(
 *   () => resolveCreateOptions({ size: 1 << 20, compat: "0.10", extendedL2: true }),
 *   RangeError,
 *   "Extended L2 entries are only supported with compatibility level 1.1",
 * );
 * assertThrows(() => resolveCreateOptions({ size: 1 << 20, clusterSize: 3072 }), RangeError, "cluster_size");
 * ```
 */
export function resolveCreateOptions(
  options: CreateOptions,
): ResolvedCreateOptions {
  const clusterSize = options.clusterSize ?? 65536;
  const compat = options.compat ?? "1.1";
  const refcountBits = options.refcountBits ?? 16;
  const extendedL2 = options.extendedL2 ?? false;
  const compressionType = options.compressionType ?? "zlib";
  const lazyRefcounts = options.lazyRefcounts ?? false;
  const preallocation = options.preallocation ?? "off";
  if (!Number.isSafeInteger(options.size) || options.size < 0) {
    throw fail(
      `Invalid image size ${options.size}: it must be a whole number of bytes from 0`,
    );
  }
  if (
    !Number.isSafeInteger(clusterSize) || clusterSize < 512 ||
    clusterSize > 2 * 1024 * 1024 || (clusterSize & (clusterSize - 1)) !== 0
  ) {
    throw fail(
      `cluster_size ${clusterSize}: Cluster size must be a power of two between 512 and 2048k`,
    );
  }
  if (compat !== "0.10" && compat !== "1.1") {
    throw fail(`compat: Parameter 'version' does not accept value '${compat}'`);
  }
  if (
    !Number.isSafeInteger(refcountBits) || refcountBits < 1 ||
    refcountBits > 64 || (refcountBits & (refcountBits - 1)) !== 0
  ) {
    throw fail(
      `refcount_bits ${refcountBits}: Refcount width must be a power of two and may not exceed 64 bits`,
    );
  }
  if (compressionType !== "zlib" && compressionType !== "zstd") {
    throw fail(
      `compression_type: Parameter 'compression-type' does not accept value '${compressionType}'`,
    );
  }
  if (!["off", "metadata", "falloc", "full"].includes(preallocation)) {
    throw fail(
      `preallocation: Parameter 'preallocation' does not accept value '${preallocation}'`,
    );
  }
  const v2 = "(use version=v3 or greater)";
  if (compat === "0.10") {
    if (lazyRefcounts) {
      throw fail(
        `lazy_refcounts: Lazy refcounts only supported with compatibility level 1.1 and above ${v2}`,
      );
    }
    if (refcountBits !== 16) {
      throw fail(
        `refcount_bits: Different refcount widths than 16 bits require compatibility level 1.1 or above ${v2}`,
      );
    }
    if (extendedL2) {
      throw fail(
        `extended_l2: Extended L2 entries are only supported with compatibility level 1.1 and above ${v2}`,
      );
    }
    if (compressionType !== "zlib") {
      throw fail(
        `compression_type: Non-zlib compression type is only supported with compatibility level 1.1 and above ${v2}`,
      );
    }
  }
  if (extendedL2 && clusterSize < 16384) {
    throw fail(
      `extended_l2: Extended L2 entries are only supported with cluster sizes of at least 16384 bytes`,
    );
  }
  if (
    options.backingFormat !== undefined && options.backingFile === undefined
  ) {
    throw fail(
      "backing_fmt: Backing format cannot be used without backing file",
    );
  }
  if (options.backingFile !== undefined) {
    if (options.backingFile === "") {
      throw fail("backing_file: the backing file's name is empty");
    }
    if (options.backingFormat === undefined) {
      throw fail(
        "backing_fmt: Backing file specified without backing format",
      );
    }
    if (preallocation !== "off" && !extendedL2) {
      throw fail(
        "preallocation: Backing file and preallocation can only be used at the same time if extended_l2 is on",
      );
    }
    if (new TextEncoder().encode(options.backingFile).length > 1023) {
      throw fail("backing_file: Backing file name too long");
    }
    if (new TextEncoder().encode(options.backingFormat).length >= 16) {
      throw fail(
        `backing_fmt: the backing format '${options.backingFormat}' is too long`,
      );
    }
  }
  if (options.encrypt && Object.keys(options.encrypt).length > 0) {
    throw fail(
      `encrypt.${
        Object.keys(options.encrypt)[0]
      }: give the encryption as 'luks' (made by createLuks from these options)`,
    );
  }
  const size = Math.ceil(options.size / 512) * 512;
  if (exceedsL1(BigInt(size), clusterSize, extendedL2)) {
    throw new RangeError(
      `The image size is too large for file format 'qcow2' (try using a larger cluster size): ${size} bytes`,
    );
  }
  return {
    size,
    clusterSize,
    compat,
    refcountBits,
    extendedL2,
    compressionType,
    lazyRefcounts,
    preallocation,
    ...(options.backingFile !== undefined
      ? {
        backingFile: options.backingFile,
        backingFormat: options.backingFormat,
      }
      : {}),
  };
}

/**
 * Parses a size as qemu-img does (`qemu_strtosz`): a number, possibly with a
 * fraction, or `0x` and hex digits, and an optional suffix k, M, G, T, P or
 * E (powers of 1024; `b` or none: bytes). A fraction needs a suffix and is
 * rounded to the nearest byte; leading white space and `+` are skipped.
 *
 * @param text The size as written.
 * @returns Bytes.
 * @throws {RangeError} If `text` is not such a size, is negative, is not
 * below 2^63, or is 2^53 or more (larger than this library handles).
 *
 * @example Sizes with suffixes
 * ```ts
 * import { parseSize } from "@qcow2/qcow2";
 * import { assertEquals, assertThrows } from "@std/assert";
 *
 * assertEquals(parseSize("64k"), 65536);
 * assertEquals(parseSize("1.5G"), 1610612736);
 * assertEquals(parseSize("1000"), 1000);
 * assertThrows(() => parseSize("-1"), RangeError);
 * assertThrows(() => parseSize("1e3"), RangeError); // no exponents
 * ```
 */
export function parseSize(text: string): number {
  const bytes = strtosz(text);
  if (bytes === "invalid") {
    throw new RangeError(
      `Invalid size '${text}': give bytes, or a number with a suffix k, M, G, T, P or E (powers of 1024)`,
    );
  }
  if (bytes === "range" || bytes > INT64_MAX) {
    throw new RangeError(
      `Invalid size '${text}': it must be below 2^63 bytes (8 EiB)`,
    );
  }
  if (bytes > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new RangeError(
      `Invalid size '${text}': sizes of 2^53 bytes (8 PiB) or more are not supported`,
    );
  }
  return Number(bytes);
}

/**
 * A size option of `-o` (`size`, `cluster_size`) read as QEMU's option
 * parser reads it, with its refusals: text that is no size, and a size of
 * 2^64 or more. Sizes from 2^63 are refused too (QEMU takes them as
 * negative).
 *
 * @param name The option's name.
 * @param value Its value, as written.
 * @returns The size in bytes, below 2^63 (it may exceed 2^53).
 * @throws {RangeError} Naming the option.
 *
 * @ignore
 */
export function sizeOption(name: string, value: string): bigint {
  const bytes = strtosz(value);
  if (bytes === "invalid") {
    throw fail(
      `Parameter '${name}' expects a non-negative number below 2^64 (optional suffix k, M, G, T, P or E), not '${value}'`,
    );
  }
  if (bytes === "range" || bytes > INT64_MAX) {
    throw fail(`Value '${value}' is out of range for parameter '${name}'`);
  }
  return bytes;
}

/**
 * Whether QEMU refuses a qcow2 image of `size` bytes with these clusters
 * ("The image size is too large for file format 'qcow2'"): its L1 table
 * would have more than 32 MiB of entries.
 *
 * @param size The virtual size, rounded up to 512 bytes.
 * @param clusterSize The cluster size.
 * @param extendedL2 Whether L2 entries are extended (16 bytes).
 * @returns Whether it is too large.
 *
 * @ignore
 */
export function exceedsL1(
  size: bigint,
  clusterSize: number,
  extendedL2: boolean,
): boolean {
  const perL1Entry = BigInt(clusterSize) *
    BigInt(clusterSize / (extendedL2 ? 16 : 8));
  return (size + perL1Entry - 1n) / perL1Entry > BigInt(MAX_L1_ENTRIES);
}

/** One option of `-o`, for `-o help`. */
interface OptionHelp {
  name: string;
  kind: string;
  help: string;
}

const OPTION_HELP: OptionHelp[] = [
  { name: "backing_file", kind: "str", help: "File name of a base image" },
  {
    name: "backing_fmt",
    kind: "str",
    help: "Image format of the base image",
  },
  { name: "cluster_size", kind: "size", help: "qcow2 cluster size" },
  {
    name: "compat",
    kind: "str",
    help: "Compatibility level (v2 [0.10] or v3 [1.1])",
  },
  {
    name: "compression_type",
    kind: "str",
    help: "Compression method used for image cluster compression",
  },
  {
    name: "extended_l2",
    kind: "bool (on/off)",
    help: "Extended L2 tables",
  },
  {
    name: "lazy_refcounts",
    kind: "bool (on/off)",
    help: "Postpone refcount updates",
  },
  {
    name: "preallocation",
    kind: "str",
    help: "Preallocation mode (allowed values: off, metadata, falloc, full)",
  },
  {
    name: "refcount_bits",
    kind: "num",
    help: "Width of a reference count entry in bits",
  },
  { name: "size", kind: "size", help: "Virtual disk size" },
];

/**
 * The text `-o help` prints: each option qemu-img's qcow2 driver takes that
 * this library supports, in qemu-img's words.
 *
 * @example
 * ```ts
 * import { CREATE_OPTIONS_HELP } from "@qcow2/qcow2";
 * import { assert } from "@std/assert";
 *
 * assert(CREATE_OPTIONS_HELP.includes("cluster_size=<size>"));
 * ```
 */
export const CREATE_OPTIONS_HELP: string = "Supported qcow2 options:\n" +
  OPTION_HELP.map(({ name, kind, help }) =>
    `  ${`${name}=<${kind}>`.padEnd(22)} - ${help}`
  ).join("\n") + "\n";

/** The `-o` options, as written, in the order given (later ones win). */
export type OptionText = Map<string, string>;

/**
 * Splits `-o` arguments (`a=b,c=d`, given once or more) into name/value
 * pairs, as QEMU's option parser does: `,,` is a comma inside a value.
 *
 * @param args Each `-o` argument.
 * @returns Each option's last value, by name.
 * @throws {RangeError} For an entry without `=`, or a name that
 * is not an option here (`encrypt.*` names are kept, for encryption).
 *
 * @example
 * ```ts
 * import { splitOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const options = splitOptions(["cluster_size=4k,compat=v2", "backing_file=a,,b.qcow2"]);
 * assertEquals(options.get("compat"), "v2");
 * assertEquals(options.get("backing_file"), "a,b.qcow2");
 * ```
 */
export function splitOptions(args: string[]): OptionText {
  const out: OptionText = new Map();
  for (const arg of args) {
    for (const part of splitOptionList(arg)) {
      if (part === "") continue;
      const eq = part.indexOf("=");
      if (eq < 0) {
        throw fail(`Invalid option '${part}': write it as name=value`);
      }
      const name = part.slice(0, eq);
      if (
        !OPTION_HELP.some((o) => o.name === name) &&
        !name.startsWith("encrypt.")
      ) {
        throw fail(
          name === "data_file" || name === "data_file_raw" ||
            name === "encryption"
            ? `Invalid parameter '${name}': not supported by this implementation`
            : `Invalid parameter '${name}' (see -o help)`,
        );
      }
      out.set(name, part.slice(eq + 1));
    }
  }
  return out;
}

function parseBool(name: string, text: string): boolean {
  if (["on", "yes", "true", "y"].includes(text)) return true;
  if (["off", "no", "false", "n"].includes(text)) return false;
  throw fail(`Parameter '${name}' expects 'on' or 'off'`);
}

/**
 * Turns `-o` options (from {@linkcode splitOptions}) into
 * {@linkcode CreateOptions}, without the size unless `size=` is among them.
 * `encrypt.*` options go to `encrypt`, by their names after `encrypt.`.
 *
 * @param text The options by name.
 * @returns The options; check them with {@linkcode resolveCreateOptions}.
 * @throws {RangeError} For a malformed value, naming the option.
 *
 * @example
 * ```ts
 * import { optionsFromText, splitOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const options = optionsFromText(splitOptions(["compat=v3,cluster_size=2M,extended_l2=on"]));
 * assertEquals(options, { compat: "1.1", clusterSize: 2097152, extendedL2: true });
 * ```
 */
export function optionsFromText(
  text: OptionText,
): Partial<CreateOptions> {
  const out: Partial<CreateOptions> = {};
  for (const [name, value] of text) {
    switch (name) {
      case "size":
      case "cluster_size": {
        const big = sizeOption(name, value);
        if (big > BigInt(Number.MAX_SAFE_INTEGER)) {
          throw fail(
            `Parameter '${name}': ${value} is ${big} bytes, more than this implementation handles (2^53 - 1)`,
          );
        }
        const bytes = Number(big);
        if (name === "size") out.size = bytes;
        else out.clusterSize = bytes;
        break;
      }
      case "compat":
        if (value === "0.10" || value === "v2") out.compat = "0.10";
        else if (value === "1.1" || value === "v3") out.compat = "1.1";
        else {
          throw fail(
            `compat: Parameter 'version' does not accept value '${value}'`,
          );
        }
        break;
      case "refcount_bits":
        if (!/^\d+$/.test(value)) {
          throw fail(
            `Parameter 'refcount_bits' expects a number, not '${value}'`,
          );
        }
        out.refcountBits = Number(value);
        break;
      case "extended_l2":
        out.extendedL2 = parseBool(name, value);
        break;
      case "lazy_refcounts":
        out.lazyRefcounts = parseBool(name, value);
        break;
      case "compression_type":
        out.compressionType = value as CompressionType;
        break;
      case "preallocation":
        out.preallocation = value as Preallocation;
        break;
      case "backing_file":
        out.backingFile = value;
        break;
      case "backing_fmt":
        out.backingFormat = value;
        break;
      default:
        if (name.startsWith("encrypt.")) {
          out.encrypt = { ...out.encrypt, [name.slice(8)]: value };
        }
    }
  }
  return out;
}
