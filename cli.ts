/**
 * `qcow2`: inspect and convert qcow2 disk images from the command line, in the
 * spirit of `qemu-img`.
 *
 * Run it with permissions scoped to the files it names:
 *
 * ```sh
 * deno run --allow-read=disk.qcow2 jsr:@qcow2/qcow2/cli info disk.qcow2
 * deno run --allow-read=disk.qcow2 --allow-write=disk.raw jsr:@qcow2/qcow2/cli convert disk.qcow2 disk.raw
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import denoJson from "./deno.json" with { type: "json" };
import {
  convert,
  type ConvertProgress,
  fileSource,
  formatInfo,
  type ImageInfo,
  imageInfo,
  openImage,
  openPath,
  probeFormat,
  Qcow2Error,
  qcowInfo,
  rawInfo,
  readHeader,
  readQcowHeader,
  readSnapshots,
  resolveName,
} from "./mod.ts";
import { openOutput, requireRead } from "./native/output.ts";

const NAME = "qcow2";

const HELP = `${NAME} ${denoJson.version}: inspect and convert qcow2 disk images

Usage: ${NAME} <command> [options]

Commands:
  info [--json] [--backing-chain] IMAGE
                                   show what an image is
  convert [-O raw] [-S BYTES] [-l SNAPSHOT] [--top] [-p] SRC DST
                                   convert an image to a raw disk image

Options:
  -h, --help      show help (also after a command)
  -V, --version   show the version

Exit status: 0 success, 1 image or I/O error, 2 usage error.
`;

const INFO_HELP = `Usage: ${NAME} info [--json] [--backing-chain] IMAGE

Show an image's format, sizes, backing file, snapshots and qcow2 details,
like 'qemu-img info'. IMAGE is qcow2 or legacy qcow.

Options:
  --json            print JSON with the key names of 'qemu-img info --output=json'
  --backing-chain   show every layer of the backing chain (JSON: an array)
  -h, --help        show this help

Needs: --allow-read=IMAGE (and each backing file, with --backing-chain)
`;

const CONVERT_HELP =
  `Usage: ${NAME} convert [-O raw] [-S BYTES] [-l SNAPSHOT] [--top] [-p] SRC DST

Convert a qcow2 (or legacy qcow) image to a sparse raw disk image, with its
whole backing chain flattened in. DST '-' streams the raw bytes to standard
output (every byte written, holes as zeros).

Options:
  -O FORMAT       output format; only 'raw' (the default)
  -S BYTES        leave aligned all-zero runs of this size as holes
                  (default 4096, a multiple of 512; 0 writes every byte;
                  suffixes k, M allowed)
  -l SNAPSHOT     convert the disk as it was in an internal snapshot: an ID
                  or a name, or snapshot.id=ID / snapshot.name=NAME
  --top           convert the top layer alone (what it does not allocate
                  reads as zeros; no backing file is opened)
  -p              show progress on a terminal
  -h, --help      show this help

Needs: --allow-read=SRC --allow-write=DST, and read access to each backing
file and the external data file the image names.
`;

/** A usage error: exit status 2. */
class UsageError extends Error {}

/**
 * Runs the command line and resolves to the exit status.
 *
 * @param args The arguments after the program name.
 * @returns 0 on success, 1 on an image or I/O error, 2 on a usage error.
 */
export async function main(args: string[]): Promise<number> {
  try {
    return await run(args);
  } catch (e) {
    if (e instanceof UsageError) {
      console.error(`${NAME}: ${e.message}\nTry '${NAME} --help'.`);
      return 2;
    }
    console.error(`${NAME}: ${explain(e)}`);
    return 1;
  }
}

async function run(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined) {
    console.error(HELP);
    return 2;
  }
  if (command === "-h" || command === "--help" || command === "help") {
    console.log(HELP);
    return 0;
  }
  if (command === "-V" || command === "--version") {
    console.log(`${NAME} ${denoJson.version}`);
    return 0;
  }
  if (command === "info") return await info(rest);
  if (command === "convert") return await convertCommand(rest);
  throw new UsageError(`unknown command '${command}'`);
}

function parse(
  args: string[],
  spec: { boolean?: string[]; string?: string[] },
) {
  const known = new Set([
    ...(spec.boolean ?? []),
    ...(spec.string ?? []),
    "h",
    "help",
  ]);
  const flags = parseArgs(args, {
    boolean: [...(spec.boolean ?? []), "help"],
    string: spec.string,
    alias: { h: "help" },
    unknown: (arg: string, key?: string) => {
      if (key !== undefined && !known.has(key)) {
        throw new UsageError(`unknown option '${arg}'`);
      }
      return true;
    },
  });
  return flags;
}

async function info(args: string[]): Promise<number> {
  const flags = parse(args, { boolean: ["json", "backing-chain"] });
  if (flags.help) {
    console.log(INFO_HELP);
    return 0;
  }
  const files = flags._.map(String);
  if (files.length !== 1) throw new UsageError("info takes exactly one IMAGE");
  const reports: ImageInfo[] = [];
  let layer: { path: string; format?: string } | undefined = { path: files[0] };
  const seen = new Set<string>();
  while (layer) {
    if (seen.has(layer.path) || seen.size > 64) {
      throw new Qcow2Error(
        "BACKING_FILE",
        `Cannot follow the backing chain: it loops or is deeper than 64 layers at '${layer.path}'`,
      );
    }
    seen.add(layer.path);
    const { report, next } = await describe(
      layer.path,
      reports.length === 0,
      layer.format,
    );
    reports.push(report);
    layer = flags["backing-chain"] ? next : undefined;
  }
  if (flags.json) {
    const value = flags["backing-chain"] ? reports : reports[0];
    console.log(JSON.stringify(value, null, 4));
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
  if (kind === "raw" && !top) {
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
  const full = header.backingFile !== undefined
    ? resolveName(path, header.backingFile)
    : undefined;
  return {
    report: imageInfo(header, path, {
      actualSize,
      snapshots,
      fullBackingFilename: full,
    }),
    next: full !== undefined
      ? { path: full, format: header.extensions.backingFormat }
      : undefined,
  };
}

/** Parses a byte count with an optional k/M/G suffix (binary units). */
function parseBytes(text: string, option: string): number {
  const m = /^(\d+)([kKmMgG]?)[bB]?$/.exec(text);
  if (!m) throw new UsageError(`${option} takes a byte count, not '${text}'`);
  const scale = {
    "": 1,
    k: 1024,
    m: 1024 ** 2,
    g: 1024 ** 3,
  }[m[2].toLowerCase()]!;
  return Number(m[1]) * scale;
}

async function convertCommand(args: string[]): Promise<number> {
  const flags = parse(args, { boolean: ["p", "top"], string: ["O", "S", "l"] });
  if (flags.help) {
    console.log(CONVERT_HELP);
    return 0;
  }
  const format = flags.O ?? "raw";
  if (format !== "raw") {
    throw new UsageError(
      `output format '${format}' is not supported; only 'raw' is`,
    );
  }
  const sparseSize = flags.S === undefined ? 4096 : parseBytes(flags.S, "-S");
  if (sparseSize % 512 !== 0 || sparseSize > 16 * 1024 * 1024) {
    throw new UsageError("-S must be a multiple of 512 from 0 to 16M");
  }
  const files = flags._.map(String);
  if (files.length !== 2) throw new UsageError("convert takes SRC and DST");
  const [srcPath, dstPath] = files;

  // Every file the conversion reads: DST must be none of them. Permissions
  // are checked first, so Deno never stops to prompt.
  const inputs = [srcPath];
  await requireRead(srcPath);
  const image = await openImage(srcPath, {
    snapshot: flags.l,
    ignoreBackingFile: flags.top,
    openFile: async (path) => {
      await requireRead(path);
      inputs.push(path);
      return await openPath(path);
    },
  });
  const controller = new AbortController();
  const onSignal = () => controller.abort(new Error("interrupted"));
  Deno.addSignalListener("SIGINT", onSignal);
  const progress = flags.p && Deno.stderr.isTerminal()
    ? showProgress
    : undefined;
  const options = {
    sparseSize,
    signal: controller.signal,
    onProgress: progress,
  };
  try {
    if (dstPath === "-") {
      await convert(image, Deno.stdout.writable, options);
      return 0;
    }
    const output = await openOutput(dstPath, inputs);
    try {
      await convert(image, output.file, options);
    } catch (e) {
      // Leave nothing partial under the destination's name.
      await output.discard();
      throw e;
    }
    await output.commit();
    return 0;
  } finally {
    image.close();
    Deno.removeSignalListener("SIGINT", onSignal);
    if (progress) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  }
}

function showProgress({ done, total }: ConvertProgress) {
  const pct = total === 0 ? 100 : (done / total) * 100;
  Deno.stderr.writeSync(
    new TextEncoder().encode(`    (${pct.toFixed(2)}/100%)\r`),
  );
}

/** One line that says what went wrong and, where it can, what to do. */
function explain(e: unknown): string {
  // A permission error may sit under a Qcow2Error about a backing file.
  let inner: unknown = e;
  while (inner instanceof Error && !isPermission(inner) && inner.cause) {
    inner = inner.cause;
  }
  if (isPermission(inner)) {
    const message = messageOf(inner);
    const path = /"([^"]+)"/.exec(message)?.[1];
    const flag = /write access/.test(message)
      ? "--allow-write"
      : "--allow-read";
    const context = e instanceof Qcow2Error
      ? `${e.message.split(":")[0]}: `
      : "";
    return path
      ? `${context}no permission for '${path}': run deno with ${flag}=${path}`
      : messageOf(e);
  }
  return messageOf(e);
}

function isPermission(e: unknown): boolean {
  return e instanceof Deno.errors.NotCapable ||
    e instanceof Deno.errors.PermissionDenied;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message.split("\n")[0] : String(e);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
