/**
 * `readInfo`: what `qemu-img info [--backing-chain]` reports of an image and
 * of each layer below it, read from the files alone (header, snapshot
 * table, bitmaps, encryption header). The chain walk lives here, not in the
 * CLI; its name resolution, loop check and depth limit are the opener's
 * (`resolveName`, `ChainFiles` in src/chain.ts).
 *
 * @module
 */

import { inFile, Qcow2Error } from "../errors.ts";
import type { ByteSource } from "../io/source.ts";
import { ChainFiles, DEFAULT_MAX_CHAIN_DEPTH, resolveName } from "../chain.ts";
import { type ImageFormat, probeSource } from "../probe.ts";
import { readHeader } from "../qcow2/header.ts";
import { readSnapshots } from "../qcow2/snapshots.ts";
import { readBitmaps } from "../qcow2/bitmaps.ts";
import { readQcowHeader } from "../qcow/header.ts";
import { readEncryptInfo } from "../crypto/encrypt_info.ts";
import { type ImageInfo, imageInfo, qcowInfo, rawInfo } from "./info.ts";

/** Most layers {@linkcode readInfo} follows before it calls the chain a loop. */
export const MAX_INFO_CHAIN_DEPTH: number = DEFAULT_MAX_CHAIN_DEPTH;

/** A file {@linkcode readInfo} opened through its `openFile`. */
export interface InfoFile {
  /** The file's bytes. */
  source: ByteSource;
  /** Bytes the file takes on disk (`actual-size`), when known. */
  actualSize?: number;
  /** Closes the file. */
  close?: () => void;
}

/** Options of {@linkcode readInfo}. */
export interface ReadInfoOptions {
  /** Opens a layer by path (the top image, then each backing file). */
  openFile: (path: string) => Promise<InfoFile>;
  /** The top image's format; probed from its first bytes when absent. */
  format?: ImageFormat;
  /** Whether to report every layer of the backing chain (default: top only). */
  backingChain?: boolean;
}

/**
 * Reports an image as `qemu-img info` does, and with `backingChain` each
 * layer below it, top first. Backing file names are resolved against the
 * naming image's path as QEMU resolves them; a qcow2 layer's backing format
 * extension is its backing file's format, otherwise it is probed.
 *
 * @param path The top image's path, as `openFile` takes it.
 * @param options How to open files, the top format, and whether to follow
 * the chain.
 * @returns One report per layer, top first.
 * @throws {Qcow2Error} `BACKING_FILE` if the chain loops or is deeper than
 * {@linkcode MAX_INFO_CHAIN_DEPTH} layers, if a backing file cannot be
 * opened, or if a layer's format is unsupported; the codes of
 * `readHeader` otherwise, naming the layer in `file`. A failure of
 * `openFile` for the top image is thrown as it is.
 *
 * @example The chain of an overlay, top first
 * ```ts
 * import { readInfo } from "./read_info.ts";
 * import { bytesSource } from "../io/source.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../../tests/fixtures/layouts/", import.meta.url);
 * const openFile = async (path: string) => ({ source: bytesSource(await Deno.readFile(new URL(path, dir))) });
 * const chain = await readInfo("chain_top.qcow2", { openFile, backingChain: true });
 * assertEquals(chain.map((i) => i.filename), ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"]);
 * ```
 */
export async function readInfo(
  path: string,
  options: ReadInfoOptions,
): Promise<ImageInfo[]> {
  const reports: ImageInfo[] = [];
  let layer: { path: string; format?: ImageFormat } | undefined = {
    path,
    format: options.format,
  };
  const files = new ChainFiles(MAX_INFO_CHAIN_DEPTH);
  while (layer) {
    if (files.refusal(layer.path, reports.length)) {
      throw new Qcow2Error(
        "BACKING_FILE",
        `Cannot follow the backing chain: it loops or is deeper than ${MAX_INFO_CHAIN_DEPTH} layers at '${layer.path}'`,
        { file: layer.path },
      );
    }
    files.add(layer.path);
    let described: Described;
    try {
      described = await describe(
        options.openFile,
        layer.path,
        reports.length === 0,
        layer.format,
      );
    } catch (e) {
      const from = reports.at(-1)?.filename;
      if (from === undefined || e instanceof Qcow2Error) {
        throw inFile(e, layer.path);
      }
      // Said as `openImage` says it of a backing file it cannot open.
      throw new Qcow2Error(
        "BACKING_FILE",
        `Cannot open backing file '${layer.path}' (named by '${from}')`,
        { cause: e, quoteCause: true },
      );
    }
    reports.push(described.report);
    layer = options.backingChain ? described.next : undefined;
  }
  return reports;
}

/** The report of one layer, and the backing file it names. */
interface Described {
  report: ImageInfo;
  next?: { path: string; format?: ImageFormat };
}

/** Describes the file at `path`: qcow2, qcow, or (below the top) raw. */
async function describe(
  openFile: ReadInfoOptions["openFile"],
  path: string,
  top: boolean,
  format?: ImageFormat,
): Promise<Described> {
  const file = await openFile(path);
  try {
    return await describeSource(
      file.source,
      file.actualSize,
      path,
      top,
      format,
    );
  } finally {
    file.close?.();
  }
}

async function describeSource(
  source: ByteSource,
  actualSize: number | undefined,
  path: string,
  top: boolean,
  format?: ImageFormat,
): Promise<Described> {
  const probed = await probeSource(source);
  const kind: string = format ?? probed;
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
      { file: path },
    );
  }
  // The top image must be qcow2 (or qcow) unless -f raw is given.
  if (probed === "raw") {
    throw new Qcow2Error(
      "BAD_MAGIC",
      `Cannot read qcow2 image: the file does not start with the qcow2 magic 'QFI\\xfb', so it reads as a raw image; give -f raw to describe it as one`,
      { offset: 0 },
    );
  }
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
      ? {
        path: full,
        format: header.extensions.backingFormat as ImageFormat | undefined,
      }
      : undefined,
  };
}
