/**
 * `qcow2`: inspect and convert qcow2 disk images from the command line, in the
 * spirit of `qemu-img`.
 *
 * Run it with permissions scoped to the files it names:
 *
 * ```sh
 * deno run --allow-read=disk.qcow2 jsr:@qcow2/qcow2/cli info disk.qcow2
 * deno run --allow-read=disk.qcow2 --allow-write=disk.raw jsr:@qcow2/qcow2/cli convert -p disk.qcow2 disk.raw
 * ```
 *
 * Or install it as a `qcow2` command, or compile it to one binary:
 *
 * ```sh
 * deno install --global --name qcow2 --allow-read --allow-write jsr:@qcow2/qcow2/cli
 * deno compile --allow-read --allow-write --output qcow2 jsr:@qcow2/qcow2/cli
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import denoJson from "./deno.json" with { type: "json" };
import {
  convert,
  type ConvertSummary,
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
import { explain, InFile } from "./native/explain.ts";
import { openOutput, requireRead } from "./native/output.ts";
import { CONVERT_L2_CACHE_BYTES } from "./src/convert.ts";
import { progressBar } from "./src/progress_bar.ts";

const NAME = "qcow2";

const HELP = `${NAME} ${denoJson.version}: inspect and convert qcow2 disk images

Usage: ${NAME} <command> [options]

Commands:
  info [--json] [--backing-chain] [-q] IMAGE
                                   show what an image is
  convert [-O raw] [-S BYTES] [-l SNAPSHOT] [--top] [-p] [-q] [--json] SRC DST
                                   convert an image to a raw disk image

Options:
  -h, --help      show help (also after a command: '${NAME} convert --help')
  -V, --version   show the version

Every command takes -q (--quiet: print nothing but errors). Data and JSON go
to standard output; progress and errors to standard error.

Exit status: 0 success, 1 image or I/O error, 2 usage error (141 when the
reader of standard output goes away, as for a process killed by SIGPIPE).
`;

const INFO_HELP = `Usage: ${NAME} info [--json] [--backing-chain] [-q] IMAGE

Show an image's format, sizes, backing file, snapshots and qcow2 details,
like 'qemu-img info'. IMAGE is qcow2 or legacy qcow.

Options:
  --json            print JSON with the key names of 'qemu-img info --output=json'
  --backing-chain   show every layer of the backing chain (JSON: an array)
  -q, --quiet       print nothing: only check that the header can be read
                    (the exit status says whether it could)
  -h, --help        show this help

Needs: --allow-read=IMAGE (and each backing file, with --backing-chain)
`;

const CONVERT_HELP =
  `Usage: ${NAME} convert [-O raw] [-S BYTES] [-l SNAPSHOT] [--top] [-p] [-q] [--json] SRC DST

Convert a qcow2 (or legacy qcow) image to a sparse raw disk image, with its
whole backing chain flattened in. DST '-' streams the raw bytes to standard
output (every byte written, holes as zeros; not to a terminal). Like
'qemu-img convert', it prints nothing when it succeeds.

Options:
  -O FORMAT       output format; only 'raw' (the default)
  -S BYTES        leave aligned all-zero runs of this size as holes
                  (default 4096, a multiple of 512; 0 writes every byte;
                  suffixes k, M allowed)
  -l SNAPSHOT     convert the disk as it was in an internal snapshot: an ID
                  or a name, or snapshot.id=ID / snapshot.name=NAME
  --top           convert the top layer alone (what it does not allocate
                  reads as zeros; no backing file is opened)
  -p              show a progress bar on standard error, if it is a terminal
  -q, --quiet     print nothing but errors (overrides -p)
  --json          when done, print a JSON summary on standard output: source,
                  destination, virtual-size, bytes-written, bytes-skipped,
                  duration-ms, files-read, ... (not with DST '-')
  -h, --help      show this help

Needs: --allow-read=SRC --allow-write=DST, and read access to each backing
file and the external data file the image names. With read and write access
to DST's directory instead, DST is replaced only once the conversion succeeded.
`;

/** A usage error: exit status 2, with a pointer to the right help. */
class UsageError extends Error {
  constructor(message: string, readonly command?: string) {
    super(message);
  }
}

/**
 * Runs the command line and resolves to the exit status.
 *
 * @param args The arguments after the program name.
 * @returns 0 on success, 1 on an image or I/O error, 2 on a usage error,
 * 141 when the reader of standard output went away (as after SIGPIPE).
 *
 * @example Running a command in-process
 * ```ts
 * import { main } from "./cli.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(await main(["--version"]), 0);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  try {
    return await run(args);
  } catch (e) {
    if (e instanceof UsageError) {
      const help = e.command ? `${NAME} ${e.command} --help` : `${NAME} --help`;
      console.error(`${NAME}: ${e.message}\nTry '${help}'.`);
      return 2;
    }
    // The reader of DST '-' went away (`| head`): stop quietly, with the
    // status of a process killed by SIGPIPE, as `cat` would.
    if (e instanceof Deno.errors.BrokenPipe) return 141;
    console.error(`${NAME}: ${explain(e, args[0])}`);
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
  throw new UsageError(
    `unknown command '${command}'; the commands are 'info' and 'convert'`,
  );
}

/** Parses a command's options; -h/--help and -q/--quiet come with all. */
function parse(
  command: string,
  args: string[],
  spec: { boolean?: string[]; string?: string[] },
) {
  const known = new Set([
    ...(spec.boolean ?? []),
    ...(spec.string ?? []),
    "h",
    "help",
    "q",
    "quiet",
  ]);
  const flags = parseArgs(args, {
    boolean: [...(spec.boolean ?? []), "help", "quiet"],
    string: spec.string,
    alias: { h: "help", q: "quiet" },
    unknown: (arg: string, key?: string) => {
      if (key !== undefined && !known.has(key)) {
        throw new UsageError(`unknown option '${arg}'`, command);
      }
      return true;
    },
  });
  for (const name of spec.string ?? []) {
    const value: unknown = flags[name];
    if (Array.isArray(value)) {
      throw new UsageError(`-${name} is given more than once`, command);
    }
    if (value === "") {
      throw new UsageError(`-${name} needs a value`, command);
    }
  }
  return flags;
}

async function info(args: string[]): Promise<number> {
  const flags = parse("info", args, { boolean: ["json", "backing-chain"] });
  if (flags.help) {
    console.log(INFO_HELP);
    return 0;
  }
  if (flags.quiet && flags.json) {
    throw new UsageError(
      "-q prints nothing and --json prints JSON: choose one",
      "info",
    );
  }
  const files = flags._.map(String);
  if (files.length !== 1) {
    throw new UsageError(
      `info takes exactly one IMAGE (${files.length} given)`,
      "info",
    );
  }
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
  if (!m) {
    throw new UsageError(
      `${option} takes a byte count such as 4096, 64k or 1M, not '${text}'`,
      "convert",
    );
  }
  const scale = {
    "": 1,
    k: 1024,
    m: 1024 ** 2,
    g: 1024 ** 3,
  }[m[2].toLowerCase()]!;
  return Number(m[1]) * scale;
}

async function convertCommand(args: string[]): Promise<number> {
  const flags = parse("convert", args, {
    boolean: ["p", "top", "json"],
    string: ["O", "S", "l"],
  });
  if (flags.help) {
    console.log(CONVERT_HELP);
    return 0;
  }
  const usage = (message: string) => new UsageError(message, "convert");
  const format = flags.O ?? "raw";
  if (format !== "raw") {
    throw usage(`output format '${format}' is not supported; only 'raw' is`);
  }
  const sparseSize = flags.S === undefined ? 4096 : parseBytes(flags.S, "-S");
  if (sparseSize % 512 !== 0 || sparseSize > 16 * 1024 * 1024) {
    throw usage(
      `-S must be a multiple of 512 from 0 to 16M, not ${flags.S} (0 writes every byte)`,
    );
  }
  const files = flags._.map(String);
  if (files.length !== 2) {
    throw usage(`convert takes SRC and DST (${files.length} given)`);
  }
  const [srcPath, dstPath] = files;
  if (flags.quiet && flags.json) {
    throw usage("-q prints nothing and --json prints a summary: choose one");
  }
  if (dstPath === "-" && flags.json) {
    throw usage(
      "--json prints its summary on standard output, which DST '-' fills with the image; give DST a file name",
    );
  }
  if (dstPath === "-" && Deno.stdout.isTerminal()) {
    throw usage(
      "refusing to write a raw disk image to a terminal; redirect standard output to a file (> disk.raw) or a pipe",
    );
  }

  // Every file the conversion reads: DST must be none of them. Permissions
  // are checked first, so Deno never stops to prompt.
  const inputs = [srcPath];
  await requireRead(srcPath);
  const image = await openImage(srcPath, {
    snapshot: flags.l,
    ignoreBackingFile: flags.top,
    l2CacheBytes: CONVERT_L2_CACHE_BYTES,
    openFile: async (path) => {
      await requireRead(path);
      inputs.push(path);
      return await openPath(path);
    },
  }).catch((e) => Promise.reject(new InFile(srcPath, e)));
  const controller = new AbortController();
  const onSignal = () => controller.abort(new Error("interrupted"));
  Deno.addSignalListener("SIGINT", onSignal);
  const bar = flags.p && !flags.quiet && Deno.stderr.isTerminal()
    ? progressBar({ write: writeStderr, columns: terminalColumns() })
    : undefined;
  const options = {
    sparseSize,
    signal: controller.signal,
    onProgress: bar?.update,
  };
  // An image error names SRC; an I/O error or Ctrl-C is said as it is.
  const inSource = (e: unknown) =>
    e instanceof Qcow2Error ? new InFile(srcPath, e) : e;
  let summary: ConvertSummary;
  try {
    if (dstPath === "-") {
      summary = await convert(image, Deno.stdout.writable, options)
        .catch((e) => Promise.reject(inSource(e)));
    } else {
      const output = await openOutput(dstPath, inputs);
      try {
        summary = await convert(image, output.file, options);
      } catch (e) {
        // Leave nothing partial under the destination's name.
        await output.discard();
        throw inSource(e);
      }
      await output.commit();
    }
  } finally {
    image.close();
    Deno.removeSignalListener("SIGINT", onSignal);
    bar?.end();
  }
  if (flags.json) {
    console.log(JSON.stringify(
      {
        "source": srcPath,
        "destination": dstPath,
        "format": "raw",
        "virtual-size": summary.virtualSize,
        "bytes-written": summary.bytesWritten,
        "bytes-skipped": summary.bytesSkipped,
        "sparse-size": sparseSize,
        "snapshot": flags.l ?? null,
        "top-only": flags.top,
        "files-read": inputs,
        "duration-ms": Math.round(summary.durationMs),
      },
      null,
      4,
    ));
  }
  return 0;
}

function writeStderr(text: string): void {
  const bytes = new TextEncoder().encode(text);
  for (let done = 0; done < bytes.length;) {
    done += Deno.stderr.writeSync(bytes.subarray(done));
  }
}

/** The terminal's width, or 80 when it cannot be told. */
function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
