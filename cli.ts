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
  formatInfo,
  imageInfo,
  openImage,
  Qcow2Error,
  readHeader,
} from "./mod.ts";

const NAME = "qcow2";

const HELP = `${NAME} ${denoJson.version}: inspect and convert qcow2 disk images

Usage: ${NAME} <command> [options]

Commands:
  info [--json] IMAGE              show what an image is
  convert [-O raw] [-S BYTES] [-p] SRC DST
                                   convert an image to a raw disk image

Options:
  -h, --help      show help (also after a command)
  -V, --version   show the version

Exit status: 0 success, 1 image or I/O error, 2 usage error.
`;

const INFO_HELP = `Usage: ${NAME} info [--json] IMAGE

Show an image's format, sizes and qcow2 details, like 'qemu-img info'.

Options:
  --json          print JSON with the key names of 'qemu-img info --output=json'
  -h, --help      show this help

Needs: --allow-read=IMAGE
`;

const CONVERT_HELP = `Usage: ${NAME} convert [-O raw] [-S BYTES] [-p] SRC DST

Convert a qcow2 image to a sparse raw disk image. DST '-' streams the raw
bytes to standard output (every byte written, holes as zeros).

Options:
  -O FORMAT       output format; only 'raw' (the default)
  -S BYTES        leave aligned all-zero runs of this size as holes
                  (default 4096, a multiple of 512; 0 writes every byte;
                  suffixes k, M allowed)
  -p              show progress on a terminal
  -h, --help      show this help

Needs: --allow-read=SRC --allow-write=DST
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
    console.error(`${NAME}: ${describe(e)}`);
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
  const flags = parse(args, { boolean: ["json"] });
  if (flags.help) {
    console.log(INFO_HELP);
    return 0;
  }
  const files = flags._.map(String);
  if (files.length !== 1) throw new UsageError("info takes exactly one IMAGE");
  const [path] = files;
  using file = await Deno.open(path);
  const header = await readHeader(file);
  const blocks = (await file.stat()).blocks;
  const report = imageInfo(
    header,
    path,
    blocks === null ? undefined : blocks * 512,
  );
  if (flags.json) console.log(JSON.stringify(report, null, 4));
  else await Deno.stdout.write(new TextEncoder().encode(formatInfo(report)));
  return 0;
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
  const flags = parse(args, { boolean: ["p"], string: ["O", "S"] });
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

  using src = await Deno.open(srcPath);
  const image = await openImage(src);
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
    // Open without truncating, so the source is safe if DST is the same file.
    using dst = await Deno.open(dstPath, { write: true, create: true });
    if (await sameFile(src, srcPath, dst, dstPath)) {
      throw new Qcow2Error(
        "BAD_ARGUMENT",
        `refusing to convert '${srcPath}' onto itself ('${dstPath}' is the same file)`,
      );
    }
    try {
      await convert(image, dst, options);
    } catch (e) {
      // Leave nothing partial under the destination's name.
      await Deno.remove(dstPath).catch(() => {});
      throw e;
    }
    return 0;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
    if (progress) Deno.stderr.writeSync(new TextEncoder().encode("\n"));
  }
}

/**
 * Whether two open files are one. Compares device and inode where the
 * permissions allow a stat of DST (it needs read access), else the resolved
 * paths.
 */
async function sameFile(
  src: Deno.FsFile,
  srcPath: string,
  dst: Deno.FsFile,
  dstPath: string,
): Promise<boolean> {
  try {
    const [a, b] = await Promise.all([src.stat(), dst.stat()]);
    if (a.ino !== null && b.ino !== null) {
      return a.dev === b.dev && a.ino === b.ino;
    }
  } catch {
    // No read permission on DST: fall back to paths.
  }
  const real = await Deno.realPath(srcPath).catch(() => srcPath);
  return resolve(dstPath) === resolve(real) ||
    resolve(dstPath) === resolve(srcPath);
}

function resolve(path: string): string {
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  const parts: string[] = [];
  for (const part of abs.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return "/" + parts.join("/");
}

function showProgress({ done, total }: ConvertProgress) {
  const pct = total === 0 ? 100 : (done / total) * 100;
  Deno.stderr.writeSync(
    new TextEncoder().encode(`    (${pct.toFixed(2)}/100%)\r`),
  );
}

/** One line that says what went wrong and, where it can, what to do. */
function describe(e: unknown): string {
  if (e instanceof Qcow2Error) return e.message;
  if (e instanceof Deno.errors.NotFound) return `${messageOf(e)}`;
  if (
    e instanceof Deno.errors.NotCapable ||
    e instanceof Deno.errors.PermissionDenied
  ) {
    const path = /"([^"]+)"/.exec(messageOf(e))?.[1];
    const flag = /write access/.test(messageOf(e))
      ? "--allow-write"
      : "--allow-read";
    return path
      ? `no permission for '${path}': run deno with ${flag}=${path}`
      : messageOf(e);
  }
  return messageOf(e);
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message.split("\n")[0] : String(e);
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
