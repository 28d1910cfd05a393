/**
 * `qcow2 measure`: how big a new image would be, like `qemu-img measure`.
 *
 * @module
 */

import {
  type ByteSource,
  type DiskImage,
  measure,
  type MeasureOptions,
  openPath,
} from "../mod.ts";
import { HostFiles } from "./_hosts.ts";
import { InFile } from "../native/explain.ts";
import { requireRead } from "../native/output.ts";
import { Qcow2Image } from "../src/qcow2/image.ts";
import { readBitmaps } from "../src/qcow2/bitmaps.ts";
import {
  CommandError,
  type CommandSpec,
  imageFormat,
  NAME,
  parse,
  qemuSize,
  snapshotParam,
  unsupportedHelp,
} from "./_args.ts";
import { qemuJson } from "./_json.ts";
import { openInput } from "./_open.ts";
import { isValidOptionList, measureOptions } from "./_measure_options.ts";
import {
  namedImages,
  parseObject,
  SECRET_HELP,
  withSecretFlags,
} from "./_secrets.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "show how big a new image would be";

/** The options `measure` takes beyond those of every command. */
const SPEC: CommandSpec = withSecretFlags({
  string: ["O", "l", "size"],
  repeat: ["o"],
  output: true,
  usageStatus: 1,
});

/** The command's help text. */
export const usage =
  `Usage: ${NAME} measure [--output=human|json] [-O FMT] [-o OPTIONS] (--size SIZE | [-f FMT] [-l SNAPSHOT] IMAGE)

Show how big a new image of format FMT would be: for a virtual size, or for
the contents of IMAGE (through its backing chain), as 'qemu-img measure'
computes it. Prints "required size" (what the data needs), "fully allocated
size" (every cluster allocated) and, when both IMAGE and the new image are
qcow2 version 3, "bitmaps size" (its persistent dirty bitmaps).

Options:
  --output=json     print JSON as qemu-img does (also --json); human is the default
  -O FMT            the new image's format: raw (the default, as in
                    qemu-img) or qcow2
  -o OPTIONS        the new image's options, name=value separated by commas
                    (may be repeated): cluster_size, compat (0.10 or 1.1),
                    refcount_bits, extended_l2, preallocation (off,
                    metadata, falloc, full), backing_file, size; the other
                    creation options are accepted and do not change the sizes
  --size SIZE       measure an empty image of SIZE bytes (suffixes k, M, G,
                    T, P, E)
  -f FMT            read IMAGE as FMT (qcow2, qcow or raw) instead of probing
  -l SNAPSHOT       measure an internal snapshot: an ID or a name, or
                    snapshot.id=ID and/or snapshot.name=NAME
  -U, --force-share accepted for qemu-img's sake (images are never locked)
${SECRET_HELP}
                  (--object secret,id=ID,... also names the secret of
                  -o encrypt.format=luks,encrypt.key-secret=ID)
  -h, --help        show this help

Exit status: 0 measured, 1 error (usage errors too, as qemu-img).

Needs: --allow-read=IMAGE (and its backing and data files)

${unsupportedHelp("measure", SPEC)}`;

/** Runs `qcow2 measure ARGS` and resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  const flags = parse("measure", args, SPEC);
  if (flags.help) {
    console.log(usage);
    return 0;
  }
  // qemu-img says these in one line, without pointing to its help.
  const usageError = (...reports: string[]) => new CommandError(reports);
  const format = imageFormat(flags.format, "-f", "measure", 1);
  const snapshot = snapshotParam(flags.l, "measure", 1);
  const files = flags._.map(String);
  if (files.length > 1) {
    throw usageError("At most one filename argument is allowed.");
  }
  let size: bigint | undefined;
  if (flags.size !== undefined) {
    const parsed = qemuSize(String(flags.size));
    if (parsed === "invalid") {
      throw usageError(
        "Invalid image size specified. You may use k, M, G, T, P or E suffixes for",
        "kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.",
      );
    }
    if (parsed === "range" || parsed > (1n << 63n) - 1n) {
      throw usageError(
        "Invalid image size specified. Must be between 0 and 9223372036854775807.",
      );
    }
    size = parsed;
  }
  const named = files.length
    ? (await namedImages(flags, files, "measure", 1))[0]
    : undefined;
  const file = named?.path;
  if (file === undefined && (format !== undefined || snapshot !== undefined)) {
    throw usageError("--image-opts, -f, and -l require a filename argument.");
  }
  if (file !== undefined && size !== undefined) {
    throw usageError("--size N cannot be used together with a filename.");
  }
  if (file === undefined && size === undefined) {
    throw usageError("Either --size N or one filename must be specified.");
  }
  const outFormat = String(flags.O ?? "raw");
  if (outFormat !== "raw" && outFormat !== "qcow2") {
    throw usageError(
      `output format '${outFormat}' is not supported: raw and qcow2 are`,
    );
  }
  // The new image's options, checked before IMAGE is opened, as qemu-img.
  const optionLists = (flags.o ?? []) as string[];
  for (const list of optionLists) {
    if (!isValidOptionList(list)) {
      throw usageError(`Invalid option list: ${list}`);
    }
  }
  const options: MeasureOptions = measureOptions(
    outFormat,
    optionLists.length ? optionLists.join(",") : undefined,
    usageError,
    secretIds((flags.object ?? []) as string[]),
  );
  if (size !== undefined) options.size = size;

  let image: DiskImage | undefined;
  const hosts = new HostFiles();
  if (file !== undefined) {
    await requireRead(file);
    image = (await openInput(file, format, {
      snapshot,
      password: named?.password,
      openFile: async (path) => {
        await requireRead(path);
        const opened = await openPath(path);
        hosts.add(opened, path);
        return opened;
      },
    }, { probeRaw: true }).catch((e) => Promise.reject(new InFile(file, e))))
      .image;
    const top = (image as { source?: ByteSource }).source;
    if (top) hosts.add(top, file);
    options.allocation = hosts.allocation;
    if (image instanceof Qcow2Image && image.snapshot) {
      // qemu-img measures a snapshot at the active state's length.
      options.diskSize = Math.floor(image.header.size / 512) * 512;
    }
  }
  let sizes;
  try {
    const top = image && "header" in image ? image as Qcow2Image : undefined;
    if (top && top.header.version >= 3) {
      const covered = BigInt(Math.floor(top.header.size / 512) * 512);
      options.bitmaps = (await readBitmaps(top.source, top.header)).map(
        (b) => ({ ...b, size: covered }),
      );
    }
    sizes = await measure(image, options);
  } catch (e) {
    if (e instanceof RangeError) throw new CommandError(e.message);
    throw file !== undefined ? new InFile(file, e) : e;
  } finally {
    image?.close();
    hosts.close();
  }
  if (flags.output === "json") {
    console.log(qemuJson({
      bitmaps: sizes.bitmaps,
      required: sizes.required,
      "fully-allocated": sizes.fullyAllocated,
    }));
  } else {
    const lines = [
      `required size: ${sizes.required}`,
      `fully allocated size: ${sizes.fullyAllocated}`,
    ];
    if (sizes.bitmaps !== undefined) {
      lines.push(`bitmaps size: ${sizes.bitmaps}`);
    }
    console.log(lines.join("\n"));
  }
  return 0;
}

/**
 * The ids of the `--object secret,...` definitions (a LUKS measure needs
 * its `encrypt.key-secret` among them, as in qemu-img; the secret itself is
 * not used).
 */
function secretIds(objects: string[]): Set<string> {
  const ids = new Set<string>();
  for (const text of objects) {
    const { type, options } = parseObject(text, "measure", 1);
    const id = options.get("id");
    if (type === "secret" && id !== undefined) ids.add(id);
  }
  return ids;
}
