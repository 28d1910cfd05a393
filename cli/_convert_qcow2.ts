/**
 * `qcow2 convert -O qcow2`: any image we read, to a new qcow2 image (a file
 * renamed into place on success, or a stream on standard output).
 *
 * @module
 */

// Only what this command uses, not mod.ts (start-up time and memory); the
// LUKS code is loaded for encrypt.* options alone.
import type { DiskImage, Extent } from "../src/disk.ts";
import type {
  ConvertToQcow2Options,
  ConvertToQcow2Summary,
} from "../src/ops/convert_qcow2.ts";
import { optionsFromText, splitOptions } from "../src/qcow2/create_options.ts";
import { Qcow2Error } from "../src/errors.ts";
import { nativeFace } from "../native/face.ts";
import { nodeCodecs } from "../native/zlib.ts";
import { openPath } from "../native/open_path.ts";
import { pooledNodeCrypto } from "../native/crypto.ts";
import { backingImageError, InFile } from "../native/explain.ts";
import { type HostFile, hostFile } from "../native/holes.ts";
import {
  atDestination,
  type InputFile,
  requireRead,
  writeOutput,
} from "../native/output.ts";
import { workerCompressors } from "../native/compress_pool.ts";
import { workerTarget } from "../native/worker_target.ts";
import { CONVERT_L2_CACHE_BYTES } from "../src/ops/convert.ts";
import { type Flags, type FormatName, UsageError } from "./_args.ts";
import { interruptible } from "./_interrupt.ts";
import { openInput, probePath } from "./_open.ts";
import { progressOf } from "./_progress.ts";
import { chainOpener, runFields } from "./convert.ts";
import { atPath } from "../native/fs_errors.ts";
import { resolveName } from "../src/chain.ts";

/** The virtual size of the backing file given with -B. */
async function backingSize(path: string, format: string): Promise<number> {
  await requireRead(path);
  if (format === "raw") {
    return (await Deno.stat(path).catch((e) => Promise.reject(atPath(e, path))))
      .size;
  }
  const image = await nativeFace.openImage(path, {
    ignoreBackingFile: true,
    openFile: openPath,
  });
  image.close();
  return image.size;
}

/**
 * `image` (a raw file) with its extents from the file system: holes are
 * `zero` extents, read no more. Without FFI, all is data, as before.
 */
function withHoles(image: DiskImage, host: HostFile): DiskImage {
  return {
    size: image.size,
    read: (position, buffer) => image.read(position, buffer),
    close() {
      host.close();
      image.close();
    },
    async *extents(start = 0, end = image.size): AsyncGenerator<Extent> {
      let at = start;
      while (at < end) {
        const run = host.at(at);
        if (run === undefined || run === null) {
          // Unknown: data; past the last data: a hole to the end.
          yield {
            start: at,
            length: end - at,
            kind: run === null ? "zero" : "data",
            depth: 0,
          };
          return;
        }
        const to = Math.min(end, run.end);
        yield {
          start: at,
          length: to - at,
          kind: run.data ? "data" : "zero",
          depth: 0,
        };
        at = to;
      }
    },
  };
}

/** What `convert -O qcow2` was asked. */
export interface Qcow2Command {
  /** The parsed command line. */
  flags: Flags;
  /** SRC. */
  srcPath: string;
  /** DST, or `-` for standard output. */
  dstPath: string;
  /** `-f`, or undefined to probe. */
  srcFormat: FormatName | undefined;
  /** `-l`. */
  snapshot: string | undefined;
  /** `-S` in bytes. */
  sparseSize: number;
  /** SRC's password, if given. */
  password?: Uint8Array;
}

/**
 * Runs `convert -O qcow2` with parsed flags.
 *
 * @param command What was asked.
 * @returns The exit status.
 */
export async function convertToQcow2Command(
  command: Qcow2Command,
): Promise<number> {
  const { flags, srcPath, dstPath, sparseSize } = command;
  const optionText = flags.o as string | undefined;
  const text = splitOptions(optionText === undefined ? [] : [optionText]);
  const options: ConvertToQcow2Options = optionsFromText(text);
  if (text.has("size")) {
    throw new RangeError(
      "Invalid parameter 'size': convert takes the source's size",
    );
  }
  if (flags.B !== undefined) options.backingFile = flags.B;
  if (flags.F !== undefined) options.backingFormat = flags.F;
  if (
    options.backingFile !== undefined && options.backingFormat === undefined
  ) {
    throw new RangeError(
      "Use of backing file requires explicit backing format; give it with -F (qcow2, raw, ...)",
    );
  }
  if (dstPath === "-" && Deno.stdout.isTerminal()) {
    throw new UsageError(
      "refusing to write a qcow2 image to a terminal; redirect standard output to a file (> disk.qcow2) or a pipe",
      "convert",
    );
  }
  const inputs: InputFile[] = [srcPath];
  if (options.backingFile !== undefined) {
    // Relative to DST's directory, as the image will be opened.
    const backing = resolveName(
      dstPath === "-" ? undefined : dstPath,
      options.backingFile,
    );
    inputs.push({ path: backing, what: "the backing file given with -B" });
    options.backingSize = await backingSize(backing, options.backingFormat!)
      .catch((e) => Promise.reject(backingImageError(backing, e)));
  }
  await requireRead(srcPath);
  // qemu-img reads a file without the qcow magic as raw.
  const srcFormat = command.srcFormat ??
    await probePath(srcPath, openPath).catch(() => undefined);
  const luks = [...text.keys()].some((name) => name.startsWith("encrypt."))
    ? await (await import("./_encrypt.ts")).luksFromOptions(
      text,
      flags,
      "convert",
    )
    : undefined;
  delete options.encrypt; // read into `luks`
  const { image: opened, format } = await openInput(srcPath, srcFormat, {
    password: command.password,
    // Sectors decrypted on every core.
    crypto: pooledNodeCrypto,
    snapshot: command.snapshot,
    ignoreBackingFile: flags.top,
    l2CacheBytes: CONVERT_L2_CACHE_BYTES,
    openFile: chainOpener(srcPath, inputs),
    // (SRC's format was probed as qemu-img probes it: raw without a magic.)
  }, { probeRaw: true }).catch((e) => Promise.reject(new InFile(srcPath, e)));
  // A raw file's holes, where FFI tells them (as QEMU's SEEK_DATA): not read.
  const image = format === "raw"
    ? withHoles(opened, hostFile(srcPath))
    : opened;
  const bar = progressOf(flags);
  const pool = flags.c ? workerCompressors() : undefined;
  // An image error names SRC; an option error or an I/O error is said as it is.
  const inSource = (e: unknown) =>
    e instanceof Qcow2Error && e.code !== "TOO_LARGE"
      ? new InFile(srcPath, e)
      : e;
  let summary: ConvertToQcow2Summary;
  try {
    // Ctrl-C stops the conversion, removes what was written and exits 130.
    summary = await interruptible(async (signal) => {
      const run: ConvertToQcow2Options = {
        ...options,
        luks,
        compress: flags.c,
        sparseSize,
        signal,
        onProgress: bar?.update,
        ...(pool ? { codecs: { ...nodeCodecs, compress: pool } } : {}),
      };
      if (dstPath === "-") {
        return await nativeFace.convertToQcow2(image, Deno.stdout.writable, run)
          .catch((e) => Promise.reject(inSource(atDestination(e, "-"))));
      }
      return await writeOutput(
        dstPath,
        inputs,
        async (file, path) => {
          // Uncompressed, writing costs as much as reading: a worker writes
          // while this thread reads (compressed output is small, and the
          // worker's memory is better spent compressing).
          if (flags.c) return await nativeFace.convertToQcow2(image, file, run);
          const target = await workerTarget(file, path);
          try {
            return await nativeFace.convertToQcow2(image, target, run);
          } finally {
            await target.close();
          }
        },
        { signal, blame: inSource },
      );
    });
  } finally {
    image.close();
    pool?.close();
    luks?.encryption.close();
    bar?.end();
  }
  if (flags.json) {
    const o = summary.options;
    console.log(JSON.stringify(
      {
        "source": srcPath,
        "destination": dstPath,
        "format": "qcow2",
        "virtual-size": summary.virtualSize,
        "file-size": summary.fileSize,
        "cluster-size": o.clusterSize,
        "compat": o.compat,
        "refcount-bits": o.refcountBits,
        "extended-l2": o.extendedL2,
        "compression-type": o.compressionType,
        "compressed": flags.c,
        "data-clusters": summary.dataClusters,
        "compressed-clusters": summary.compressedClusters,
        "zero-clusters": summary.zeroClusters,
        "backing-file": o.backingFile ?? null,
        ...runFields(flags, sparseSize, inputs, summary.durationMs),
      },
      null,
      4,
    ));
  }
  return 0;
}
