/**
 * `qcow2 create`: a new, empty qcow2 image, like `qemu-img create -f qcow2`.
 *
 * @module
 */

import { interruptible } from "./_interrupt.ts";
import {
  CREATE_OPTIONS_HELP,
  createImage,
  type CreateOptions,
  openImage,
  openPath,
  optionsFromText,
  resolveCreateOptions,
  splitOptions,
} from "../mod.ts";
import { exceedsL1, sizeOption } from "../src/qcow2/create_options.ts";
import { INT64_MAX, strtosz } from "../src/size.ts";
import { backingImageError } from "../native/explain.ts";
import { requireRead, writeOutput } from "../native/output.ts";
import { NAME, parse, UsageError } from "./_args.ts";
import {
  ENCRYPT_HELP,
  encryptFormatting,
  luksFromOptions,
} from "./_encrypt.ts";
import { SECRET_FLAGS } from "./_secrets.ts";
import { atPath } from "../native/fs_errors.ts";
import { resolveName } from "../src/chain.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "create a new qcow2 image";

/** The command's help text. */
export const usage =
  `Usage: ${NAME} create [-f qcow2] [-o OPTIONS] [-b BACKING [-F FMT]] [-u] [-q] FILE [SIZE]

Create a qcow2 image of SIZE bytes (suffixes k, M, G, T, P, E: powers of
1024; rounded up to 512 bytes), as 'qemu-img create -f qcow2' does, and
print the 'Formatting' line it prints.

Options:
  -f FORMAT       the image format: only 'qcow2' (the default)
  -o OPTIONS      image options, name=value[,name=value...]: cluster_size,
                  compat (0.10/v2, 1.1/v3), refcount_bits, extended_l2,
                  compression_type (zlib, zstd), lazy_refcounts,
                  preallocation (off, metadata, falloc, full), backing_file,
                  backing_fmt, size; '-o help' lists them; and for LUKS
${ENCRYPT_HELP}
  -b BACKING      the backing file (a name relative to FILE's directory, or
                  absolute); without SIZE, the new image takes its size
  -F FMT          the backing file's format (qcow2, raw, ...): required
                  with -b
  -u              do not open the backing file (SIZE is then required)
  --object secret,id=ID,data=PASSWORD|file=FILE[,format=raw|base64]
                  a secret for encrypt.key-secret=ID, as qemu-img takes it
  --password-file FILE  the password of the new LUKS image (a final
                  newline is part of it)
  -q, --quiet     print nothing but errors
  -h, --help      show this help

FILE appears only once it is complete: it is written beside FILE and renamed.

Needs: --allow-write=FILE (and read and write access to FILE's directory
for the rename), --allow-read=BACKING unless -u.
`;

/** create's options that take a value as the next argument. */
const VALUE_OPTIONS = new Set([
  "-f",
  "-o",
  "-b",
  "-F",
  ...[...SECRET_FLAGS.string, ...SECRET_FLAGS.repeat].map((n) => `--${n}`),
]);

/**
 * `args` with every negative number (`-5`, `-1.5G`) that is not an option's
 * value moved behind `--`, in order: `create FILE -5` asks for a negative
 * size, which is then refused as one ("Invalid image size '-5'", exit 1,
 * qemu-img's status) instead of being taken for an unknown option `-5`.
 */
function negativeSizesLast(args: string[]): string[] {
  const end = args.indexOf("--");
  const options = end < 0 ? args : args.slice(0, end);
  const rest = end < 0 ? [] : args.slice(end + 1);
  const kept: string[] = [];
  const sizes: string[] = [];
  for (let i = 0; i < options.length; i++) {
    const arg = options[i];
    if (/^-[0-9.]/.test(arg) && !VALUE_OPTIONS.has(options[i - 1])) {
      sizes.push(arg);
    } else kept.push(arg);
  }
  if (sizes.length === 0) return args;
  return [...kept, "--", ...sizes, ...rest];
}

/** Runs `qcow2 create ARGS` and resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  const flags = parse("create", negativeSizesLast(args), {
    boolean: ["u"],
    string: ["b", "F", ...SECRET_FLAGS.string],
    list: ["o"],
    repeat: SECRET_FLAGS.repeat,
  });
  if (flags.help) {
    console.log(usage);
    return 0;
  }
  const usageError = (message: string) => new UsageError(message, "create");
  const format = flags.format ?? "qcow2";
  if (format !== "qcow2") {
    throw usageError(`format '${format}' is not supported; only 'qcow2' is`);
  }
  const optionText = flags.o as string | undefined;
  const optionArgs = optionText === undefined ? [] : [optionText];
  if (optionText === "help" || optionText === "?") {
    console.log(CREATE_OPTIONS_HELP);
    return 0;
  }
  const files = flags._.map(String);
  if (files.length < 1 || files.length > 2) {
    throw usageError(
      `create takes FILE and an optional SIZE (${files.length} given)`,
    );
  }
  const [path, sizeText] = files;
  // As qemu-img: SIZE is read first, then -o; the size is given once.
  const sizeArgument = sizeText === undefined ? undefined : imageSize(sizeText);
  const text = splitOptions(optionArgs);
  const sizeValue = text.get("size");
  text.delete("size");
  const options: Partial<CreateOptions> = optionsFromText(text);
  const size = sizeValue === undefined
    ? sizeArgument
    : sizeOption("size", sizeValue);
  if (sizeArgument !== undefined && sizeValue !== undefined) {
    throw new RangeError(
      `The image size must be specified only once: SIZE ${sizeText} and -o size=${sizeValue}`,
    );
  }
  if (flags.b !== undefined) options.backingFile = flags.b;
  if (flags.F !== undefined) options.backingFormat = flags.F;
  if (size !== undefined && size > BigInt(Number.MAX_SAFE_INTEGER)) {
    // qemu-img takes any size below 2^63 and says what it makes of it; the
    // qcow2 format then refuses what its L1 table cannot cover.
    if (!flags.quiet) console.log(formattingLine(path, text, options, size));
    resolveCreateOptions({ ...options, size: 0 }); // the other refusals first
    const rounded = (size + 511n) / 512n * 512n;
    throw new RangeError(
      exceedsL1(rounded, options.clusterSize ?? 65536, !!options.extendedL2)
        ? `The image size is too large for file format 'qcow2' (try using a larger cluster size): ${rounded} bytes`
        : `The image size ${rounded} is more than this implementation handles (up to 2^53 - 1 bytes, 8 PiB; qemu-img makes it)`,
    );
  }
  if (size !== undefined) options.size = Number(size);
  const inputs: string[] = [];
  if (options.backingFile !== undefined && !flags.u) {
    if (options.backingFormat === undefined) {
      throw new RangeError(
        "Backing file specified without backing format; give it with -F (qcow2, raw, ...)",
      );
    }
    // Relative to FILE's directory, as the image will be opened.
    const backing = resolveName(path, options.backingFile);
    inputs.push(backing);
    const backingBytes = await backingSize(backing, options.backingFormat);
    options.size ??= backingBytes;
  }
  if (options.size === undefined) {
    throw usageError(
      flags.u && options.backingFile !== undefined
        ? "Image creation needs a size parameter: with -u the backing file is not opened, so give SIZE"
        : "Image creation needs a size parameter: give SIZE (or -b BACKING)",
    );
  }
  const luks = await luksFromOptions(text, flags, "create");
  delete options.encrypt; // read into `luks`
  const shown = formattingLine(path, text, options, options.size);
  if (!flags.quiet) console.log(shown);
  // Ctrl-C stops a preallocation, removes the file and exits 130.
  try {
    await interruptible(async (signal) => {
      await writeOutput(
        path,
        inputs,
        (file) =>
          createImage(file, { ...options as CreateOptions, luks }, { signal }),
        { signal },
      );
    });
  } finally {
    luks?.encryption.close();
  }
  return 0;
}

/**
 * SIZE as qemu-img reads it (`cvtnum`): a byte count below 2^63.
 *
 * @throws {RangeError} For text that is no size, or a size out of range.
 */
function imageSize(text: string): bigint {
  const bytes = strtosz(text);
  if (bytes === "invalid") {
    throw new RangeError(
      /^\s*-/.test(text)
        ? `Invalid image size '${text}': a size cannot be negative`
        : `Invalid image size '${text}': give bytes, or a number with a suffix k, M, G, T, P or E (powers of 1024)`,
    );
  }
  if (bytes === "range" || bytes > INT64_MAX) {
    throw new RangeError(
      `Invalid image size '${text}' specified. Must be between 0 and ${INT64_MAX}.`,
    );
  }
  return bytes;
}

/** The virtual size of the backing file, opened as `format`. */
async function backingSize(path: string, format: string): Promise<number> {
  await requireRead(path);
  try {
    if (format === "raw") {
      return (await Deno.stat(path).catch((e) =>
        Promise.reject(atPath(e, path))
      ))
        .size;
    }
    if (format !== "qcow2" && format !== "qcow") {
      throw new RangeError(
        `backing_fmt '${format}' is not a format this tool reads (qcow2, qcow, raw)`,
      );
    }
    const image = await openImage(path, {
      ignoreBackingFile: true,
      openFile: openPath,
    });
    image.close();
    return image.size;
  } catch (e) {
    throw backingImageError(path, e);
  }
}

/**
 * qemu-img's "Formatting" line: the options in its order, the defaults
 * filled in (sizes in bytes, the other values as written).
 */
function formattingLine(
  path: string,
  text: Map<string, string>,
  options: Partial<CreateOptions>,
  size: number | bigint,
): string {
  const parts = [
    ...encryptFormatting(text),
    `cluster_size=${options.clusterSize ?? 65536}`,
    `extended_l2=${text.get("extended_l2") ?? "off"}`,
  ];
  if (text.has("preallocation")) {
    parts.push(`preallocation=${text.get("preallocation")}`);
  }
  parts.push(`compression_type=${text.get("compression_type") ?? "zlib"}`);
  parts.push(`size=${size}`);
  if (options.backingFile !== undefined) {
    parts.push(`backing_file=${options.backingFile}`);
  }
  if (options.backingFormat !== undefined) {
    parts.push(`backing_fmt=${options.backingFormat}`);
  }
  if (text.has("compat")) parts.push(`compat=${text.get("compat")}`);
  parts.push(`lazy_refcounts=${text.get("lazy_refcounts") ?? "off"}`);
  parts.push(`refcount_bits=${text.get("refcount_bits") ?? 16}`);
  return `Formatting '${path}', fmt=qcow2 ${parts.join(" ")}`;
}
