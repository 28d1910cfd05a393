/**
 * `qcow2 convert`: an image to a raw disk image, like `qemu-img convert`.
 *
 * @module
 */

import type { ConvertSummary } from "../src/ops/convert.ts";
import type { OpenedFile, OpenRequest } from "../src/open.ts";
import { Qcow2Error } from "../src/errors.ts";
import { openPath } from "../native/open_path.ts";
import { nativeFace } from "../native/face.ts";
import { pooledNodeCrypto } from "../native/crypto.ts";
import { InFile } from "../native/explain.ts";
import {
  atDestination,
  type InputFile,
  requireRead,
  writeOutput,
} from "../native/output.ts";
import { CONVERT_L2_CACHE_BYTES } from "../src/ops/convert.ts";
import { fileSink } from "../src/io/sink.ts";
import { workerCodecs } from "../native/worker_codecs.ts";
import type { Codecs } from "../src/codecs/codecs.ts";
import {
  CommandError,
  type CommandSpec,
  type Flags,
  imageFormat,
  NAME,
  parse,
  snapshotParam,
  unsupportedHelp,
  UsageError,
} from "./_args.ts";
import { openInput } from "./_open.ts";
import { cvtnum } from "./_size.ts";
import { namedImages, SECRET_HELP, withSecretFlags } from "./_secrets.ts";
import { interruptible } from "./_interrupt.ts";
import { progressOf } from "./_progress.ts";
import { CREATE_OPTIONS_HELP } from "../src/qcow2/create_options.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "convert an image to a raw disk image or a qcow2 image";

/** The options `convert` takes beyond those of every command. */
const SPEC: CommandSpec = withSecretFlags({
  boolean: ["p", "top", "c"],
  string: ["O", "S", "l", "B", "F"],
  list: ["o"],
  // -S '' is an invalid size, said in qemu-img's words (exit 1).
  empty: ["S"],
  output: true,
});

/** The command's help text. */
export const usage =
  `Usage: ${NAME} convert [-f FMT] [-O raw|qcow2] [-c] [-o OPTIONS] [-B BACKING [-F FMT]] [-S BYTES] [-l SNAPSHOT] [--top] [-p] [-q] [--json] SRC DST

Convert a qcow2 (or legacy qcow) image to a sparse raw disk image, with its
whole backing chain flattened in, or any image we read (qcow2, qcow, raw) to
a new qcow2 image. DST '-' streams the output to standard output (raw: every
byte, holes as zeros; qcow2: a complete image, metadata first, the source
read twice, as QEMU's qcow2-to-stdout.py; never to a terminal). Like
'qemu-img convert', it prints nothing when it succeeds.

Options:
  -f FMT          read SRC as FMT (qcow2, qcow or raw) instead of probing
  -O FORMAT       output format: 'raw' (the default) or 'qcow2'
  -c              (qcow2) compress every cluster that is not all zeros, on
                  every core; the output is the same bytes whatever the
                  number of cores
  -o OPTIONS      (qcow2) image options as for 'create': cluster_size,
                  compat, refcount_bits, extended_l2, compression_type,
                  lazy_refcounts, preallocation (not with -c, -B or to a
                  stream), backing_file, backing_fmt; '-o help'
  -B BACKING      (qcow2) the new image's backing file: only what the top
                  layer of SRC allocates is written
  -F FMT          (qcow2) the format of -B's file (qcow2, raw...): required
  -S BYTES        leave aligned all-zero runs of this size as holes
                  (default 4096, a multiple of 512 up to 16M; 0 writes
                  every byte; suffixes k, M allowed, and 1.5k)
  -l SNAPSHOT     convert the disk as it was in an internal snapshot: an ID
                  or a name, or snapshot.id=ID / snapshot.name=NAME. DST
                  has the snapshot's own size, as 'qemu-img snapshot -a'
                  restores it, even if the image was resized since
                  (qemu-img convert -l writes the current size instead,
                  cutting or padding with zeros)
  --top           convert the top layer alone (what it does not allocate
                  reads as zeros; no backing file is opened)
  -p              show a progress bar on standard error, if it is a terminal
  -q, --quiet     print nothing but errors (overrides -p)
  --json, --output=json
                  when done, print a JSON summary on standard output (not
                  with DST '-'), with the keys
                  source, destination, format, virtual-size (DST's size:
                  with -l, the snapshot's), sparse-size, snapshot,
                  top-only, files-read, duration-ms;
                  with -O raw: bytes-written, bytes-skipped,
                  image-virtual-size (only with -l on an image resized
                  since the snapshot);
                  with -O qcow2: file-size, cluster-size, compat,
                  refcount-bits, extended-l2, compression-type, compressed,
                  data-clusters, compressed-clusters, zero-clusters,
                  backing-file
  -U, --force-share  accepted for qemu-img's sake (images are never locked)
${SECRET_HELP}
  -h, --help      show this help

Needs: --allow-read=SRC --allow-write=DST, and read access to each backing
file and the external data file the image names (and -B's file). With
--allow-ffi, a raw SRC's holes are found as qemu-img finds them (SEEK_DATA)
and not read. With read and write access
to DST's directory instead, DST is replaced only once the conversion succeeded.

${unsupportedHelp("convert", SPEC)}`;

/** Chunks in flight when SRC is an http(s) URL. */
const REMOTE_PARALLEL = 16;
/** Chunks in flight when SRC is a file. */
const LOCAL_PARALLEL = 8;

/** Runs `qcow2 convert ARGS` and resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  const flags = parse("convert", args, SPEC);
  if (flags.help) {
    console.log(usage);
    return 0;
  }
  const usageError = (message: string) => new UsageError(message, "convert");
  const srcFormat = imageFormat(flags.format, "-f", "convert");
  const snapshot = snapshotParam(flags.l, "convert");
  const format = flags.O ?? "raw";
  if (format !== "raw" && format !== "qcow2") {
    throw usageError(
      `output format '${format}' is not supported; 'raw' and 'qcow2' are`,
    );
  }
  const optionText = flags.o as string | undefined;
  if (format === "qcow2" && (optionText === "help" || optionText === "?")) {
    console.log(CREATE_OPTIONS_HELP);
    return 0;
  }
  if (
    format === "raw" &&
    (flags.c || optionText !== undefined || flags.B !== undefined ||
      flags.F !== undefined)
  ) {
    throw usageError("-c, -o, -B and -F need -O qcow2");
  }
  const sparseSize = flags.S === undefined ? 4096 : sparseOption(flags.S);
  const files = flags._.map(String);
  if (files.length !== 2) {
    throw usageError(`convert takes SRC and DST (${files.length} given)`);
  }
  const [{ path: srcPath, password }] = await namedImages(
    flags,
    [files[0]],
    "convert",
  );
  const dstPath = files[1];
  if (flags.quiet && flags.json) {
    throw usageError(
      "-q prints nothing and --json prints a summary: choose one",
    );
  }
  if (dstPath === "-" && flags.json) {
    throw usageError(
      "--json prints its summary on standard output, which DST '-' fills with the image; give DST a file name",
    );
  }
  if (format === "qcow2") {
    // The writer (and its compressors) is loaded only for -O qcow2.
    const { convertToQcow2Command } = await import("./_convert_qcow2.ts");
    return await convertToQcow2Command({
      flags,
      srcPath,
      dstPath,
      srcFormat,
      snapshot,
      sparseSize,
      password,
    });
  }
  if (dstPath === "-" && Deno.stdout.isTerminal()) {
    throw usageError(
      "refusing to write a raw disk image to a terminal; redirect standard output to a file (> disk.raw) or a pipe",
    );
  }

  // Every file the conversion reads: DST must be none of them. Permissions
  // are checked first, so Deno never stops to prompt.
  const inputs: InputFile[] = [srcPath];
  await requireRead(srcPath);
  const remote = /^https?:\/\//i.test(srcPath);
  // Compressed clusters are decompressed on the other cores (the workers
  // start on the first one: an image without any costs nothing), straight
  // into the chunk buffers; this thread reads, and once there are
  // compressed clusters the writes run on the runtime's I/O threads
  // (figures in bench/README.md).
  const pool = workerCodecs();
  let compressed = false;
  const codecs: Codecs = {
    zlib: (input, maxOutput, into) => {
      compressed = true;
      return pool.zlib!(input, maxOutput, into);
    },
    zstd: (input, maxOutput, into) => {
      compressed = true;
      return pool.zstd!(input, maxOutput, into);
    },
  };
  const { image } = await openInput(srcPath, srcFormat, {
    codecs,
    password,
    // Sectors decrypted on every core.
    crypto: pooledNodeCrypto,
    snapshot,
    ignoreBackingFile: flags.top,
    l2CacheBytes: CONVERT_L2_CACHE_BYTES,
    openFile: chainOpener(srcPath, inputs),
  }).catch((e) => {
    pool.close();
    return Promise.reject(new InFile(srcPath, e));
  }).finally(() => password?.fill(0));
  const bar = progressOf(flags);
  // An image error names SRC; an I/O error is said as it is.
  const inSource = (e: unknown) =>
    e instanceof Qcow2Error ? new InFile(srcPath, e) : e;
  let summary: ConvertSummary;
  try {
    // Ctrl-C stops the conversion, removes what was written and exits 130.
    summary = await interruptible(async (signal) => {
      const options = {
        sparseSize,
        signal,
        onProgress: bar?.update,
        // Over HTTP, more chunks in flight: their reads queue in the
        // source and adjacent ones merge into larger requests.
        parallel: remote ? REMOTE_PARALLEL : LOCAL_PARALLEL,
      };
      if (dstPath === "-") {
        return await nativeFace.convert(image, Deno.stdout.writable, options)
          .catch((e) => Promise.reject(inSource(atDestination(e, "-"))));
      }
      return await writeOutput(
        dstPath,
        inputs,
        async (file) =>
          await nativeFace.convert(
            image,
            await fileSink(file, { synchronous: () => !compressed }),
            { ...options, allocate: pool.allocate },
          ),
        { signal, blame: inSource },
      );
    });
  } finally {
    image.close();
    pool.close();
    bar?.end();
  }
  if (flags.json) {
    // With -l, the output is the snapshot's disk, at its own size; say the
    // image's when it differs (the image was resized since).
    const current = (image as { header?: { size?: number } }).header?.size;
    const resized = snapshot !== undefined && current !== undefined &&
      current !== summary.virtualSize;
    console.log(JSON.stringify(
      {
        "source": srcPath,
        "destination": dstPath,
        "format": "raw",
        "virtual-size": summary.virtualSize,
        ...(resized ? { "image-virtual-size": current } : {}),
        "bytes-written": summary.bytesWritten,
        "bytes-skipped": summary.bytesSkipped,
        ...runFields(flags, sparseSize, inputs, summary.durationMs),
      },
      null,
      4,
    ));
  }
  return 0;
}

/** Largest `-S`: 16 MiB (qemu-img's MAX_BUF_SECTORS of 512 bytes). */
const MAX_SPARSE = 16n * 1024n * 1024n;

/**
 * `-S` as qemu-img reads it ("buffer size for sparse output"): a byte count
 * (suffixes, fractions before them), a multiple of 512 up to 16 MiB.
 *
 * @throws {CommandError} In qemu-img's words, with its exit status 1.
 */
function sparseOption(text: string): number {
  const what = "buffer size for sparse output";
  const value = cvtnum(text, what);
  if (value % 512n !== 0n || value > MAX_SPARSE) {
    throw new CommandError(
      `Invalid ${what} specified. Valid sizes are multiples of 512 up to ${MAX_SPARSE}. Select 0 to disable sparse detection (fully allocates output).`,
    );
  }
  return Number(value);
}

/**
 * The fields both converts' `--json` summaries end with: how the run was
 * asked for, what it read and how long it took.
 */
export function runFields(
  flags: Flags,
  sparseSize: number,
  inputs: InputFile[],
  durationMs: number,
): Record<string, unknown> {
  return {
    "sparse-size": sparseSize,
    "snapshot": flags.l ?? null,
    "top-only": flags.top,
    "files-read": inputs.map((f) => typeof f === "string" ? f : f.path),
    "duration-ms": Math.round(durationMs),
  };
}

/**
 * The `openFile` hook for the files of `src`'s chain: checks the permission
 * (Deno never stops to prompt), adds each file to `inputs` (which DST must
 * be none of) with its role, and opens it.
 */
export function chainOpener(
  src: string,
  inputs: InputFile[],
): (path: string, request: OpenRequest) => Promise<OpenedFile> {
  return async (path, request) => {
    await requireRead(path);
    inputs.push({ path, what: roleIn(src, request) });
    return await openPath(path);
  };
}

/**
 * What a file opened for `src` is to it, as DST's refusal says it: "the
 * backing file of the input 'top.qcow2'", or for a file named deeper in the
 * chain, "a file of the backing chain of the input 'top.qcow2' (the backing
 * file of 'mid.qcow2')".
 */
export function roleIn(src: string, request: OpenRequest): string {
  const what = request.kind === "backing"
    ? "the backing file"
    : "the external data file";
  if (request.from === undefined || request.from === src) {
    return `${what} of the input '${src}'`;
  }
  return `a file of the backing chain of the input '${src}' (${what} of '${request.from}')`;
}
