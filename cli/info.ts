/**
 * `qcow2 info`: what an image is, like `qemu-img info`.
 *
 * @module
 */

import {
  fileSource,
  formatInfo,
  type ImageInfo,
  imageInfo,
  probeFormat,
  Qcow2Error,
  qcowInfo,
  rawInfo,
  readBitmaps,
  readEncryptInfo,
  readHeader,
  readQcowHeader,
  readSnapshots,
  resolveName,
} from "../mod.ts";
import { InFile } from "../native/explain.ts";
import { qemuJson } from "./_json.ts";
import { requireRead } from "../native/output.ts";
import {
  type CommandSpec,
  imageFormat,
  NAME,
  parse,
  unsupportedHelp,
  UsageError,
} from "./_args.ts";
import { namedImages, SECRET_FLAGS, SECRET_HELP } from "./_secrets.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "show what an image is";

/** The options `info` takes beyond those of every command. */
const SPEC: CommandSpec = {
  boolean: ["backing-chain", ...SECRET_FLAGS.boolean],
  string: SECRET_FLAGS.string,
  repeat: SECRET_FLAGS.repeat,
  output: true,
};

/** The command's help text. */
export const usage =
  `Usage: ${NAME} info [-f FMT] [--output=human|json] [--backing-chain] [-U] [-q] IMAGE

Show an image's format, sizes, backing file, snapshots and qcow2 details,
like 'qemu-img info'. IMAGE is qcow2 or legacy qcow.

Options:
  -f, --format FMT  read IMAGE as FMT (qcow2, qcow or raw) instead of probing:
                    -f raw describes any file as a raw disk
  --output=json     print JSON with the key names of 'qemu-img info
                    --output=json' (also --json); --output=human is the default
  --backing-chain   show every layer of the backing chain (JSON: an array)
  -q, --quiet       print nothing: only check that the header can be read
                    (the exit status says whether it could)
  -U, --force-share accepted for qemu-img's sake (images are never locked)
  -h, --help        show this help
An encrypted image's info needs no password; these are taken as qemu-img
takes them, and not used:
${SECRET_HELP}

Needs: --allow-read=IMAGE (and each backing file, with --backing-chain)

${unsupportedHelp("info", SPEC)}`;

/** Runs `qcow2 info ARGS` and resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  const flags = parse("info", args, SPEC);
  if (flags.help) {
    console.log(usage);
    return 0;
  }
  if (flags.quiet && flags.json) {
    throw new UsageError(
      "-q prints nothing and --json prints JSON: choose one",
      "info",
    );
  }
  const format = imageFormat(flags.format, "-f", "info");
  const names = flags._.map(String);
  if (names.length !== 1) {
    throw new UsageError(
      `info takes exactly one IMAGE (${names.length} given)`,
      "info",
    );
  }
  const files = (await namedImages(flags, names, "info")).map((i) => i.path);
  const reports: ImageInfo[] = [];
  let layer: { path: string; format?: string } | undefined = {
    path: files[0],
    format,
  };
  const seen = new Set<string>();
  while (layer) {
    if (seen.has(layer.path) || seen.size > 64) {
      throw new Qcow2Error(
        "BACKING_FILE",
        `Cannot follow the backing chain: it loops or is deeper than 64 layers at '${layer.path}'`,
      );
    }
    seen.add(layer.path);
    let described: Awaited<ReturnType<typeof describe>>;
    try {
      described = await describe(
        layer.path,
        reports.length === 0,
        layer.format,
      );
    } catch (e) {
      const from = reports.at(-1)?.filename;
      if (from === undefined || e instanceof Qcow2Error) {
        throw new InFile(layer.path, e);
      }
      // Said as the library says it of a backing file it cannot open.
      throw new Qcow2Error(
        "BACKING_FILE",
        `Cannot open backing file '${layer.path}' (named by '${from}'): ${
          e instanceof Error ? e.message.split("\n")[0] : e
        }`,
        { cause: e },
      );
    }
    reports.push(described.report);
    layer = flags["backing-chain"] ? described.next : undefined;
  }
  if (flags.quiet) return 0;
  if (flags.json) {
    const value = flags["backing-chain"] ? reports : reports[0];
    console.log(qemuJson(value));
  } else {
    const text = reports.map(formatInfo).join("\n");
    await Deno.stdout.write(new TextEncoder().encode(text));
  }
  return 0;
}

/** The info report of one file, and the backing file it names. */
async function describe(
  path: string,
  top: boolean,
  format?: string,
): Promise<{ report: ImageInfo; next?: { path: string; format?: string } }> {
  await requireRead(path);
  using file = await Deno.open(path);
  const source = await fileSource(file);
  const blocks = (await file.stat()).blocks;
  const actualSize = blocks === null ? undefined : blocks * 512;
  const start = new Uint8Array(Math.min(8, source.size));
  await source.readAt(0, start);
  const kind = format ?? probeFormat(start);
  if (kind === "qcow") {
    const header = await readQcowHeader(source);
    const full = header.backingFile !== undefined
      ? resolveName(path, header.backingFile)
      : undefined;
    return {
      report: qcowInfo(header, path, { actualSize, fullBackingFilename: full }),
      next: full !== undefined ? { path: full } : undefined,
    };
  }
  if (kind === "raw" && (!top || format === "raw")) {
    return { report: rawInfo(source.size, path, { actualSize }) };
  }
  if (kind !== "qcow2" && kind !== "raw") {
    throw new Qcow2Error(
      "BACKING_FILE",
      `Cannot describe '${path}': its format '${kind}' is not supported`,
    );
  }
  // The top image must be qcow2 (or qcow): a raw file fails on its magic here.
  const header = await readHeader(source);
  const snapshots = header.nbSnapshots > 0
    ? await readSnapshots(source, header)
    : [];
  const bitmaps = header.version === 3 ? await readBitmaps(source, header) : [];
  const full = header.backingFile !== undefined
    ? resolveName(path, header.backingFile)
    : undefined;
  return {
    report: imageInfo(header, path, {
      actualSize,
      snapshots,
      bitmaps,
      fullBackingFilename: full,
      encrypt: await readEncryptInfo(source, {
        cryptMethod: header.cryptMethod,
        encryptionArea: header.extensions.encryption,
      }),
    }),
    next: full !== undefined
      ? { path: full, format: header.extensions.backingFormat }
      : undefined,
  };
}
