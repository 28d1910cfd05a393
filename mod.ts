/**
 * Read, inspect and convert QEMU qcow2 disk images, with no native install.
 *
 * The three main uses:
 *
 * ```ts ignore
 * import { convert, openImage, readHeader } from "jsr:@qcow2/qcow2";
 *
 * // 1. Inspect a header.
 * using file = await Deno.open("disk.qcow2");
 * const header = await readHeader(file);
 * console.log(header.version, header.size, header.features);
 *
 * // 2. Read guest bytes at any offset.
 * const image = await openImage(file);
 * const bootSector = new Uint8Array(512);
 * await image.read(0, bootSector);
 *
 * // 3. Convert to a sparse raw image.
 * using out = await Deno.open("disk.raw", { write: true, create: true });
 * const summary = await convert(file, out);
 * console.log(`${summary.bytesWritten} bytes written`);
 * ```
 *
 * Objects shaped like `Deno.FsFile` (`read`, `seek`, and for output `write`
 * and `truncate`) pass as they are. In Node.js and Bun, `node:fs/promises`
 * `FileHandle`s go through {@linkcode fileHandleSource} and
 * {@linkcode fileHandleWriter}; any other storage through a
 * {@linkcode ByteSource}.
 *
 * @module
 */

import {
  CONVERT_L2_CACHE_BYTES,
  convertImage,
  type ConvertOptions,
  type ConvertSummary,
} from "./src/ops/convert.ts";
import type { DiskImage } from "./src/disk.ts";
import type { Qcow2Image } from "./src/qcow2/image.ts";
import {
  type FileHandleLike,
  fileHandleSource,
  type ImageInput,
  type SeekableWriter,
  toByteSource,
} from "./src/io/source.ts";
import {
  type Qcow2Header,
  readHeader as readHeaderFrom,
} from "./src/qcow2/header.ts";
import {
  openDisk,
  type OpenedFile,
  type OpenFile,
  type OpenOptions,
} from "./src/open.ts";
import {
  openWritable,
  toByteStore,
  type WritableInput,
} from "./src/qcow2/open_writable.ts";
import type { WritableQcow2Image } from "./src/qcow2/writable.ts";
import { openPathWritable } from "./native/writable_file.ts";
import type { QcowImage } from "./src/qcow/image.ts";
import { RawImage } from "./src/raw.ts";
import { Qcow2Error } from "./src/errors.ts";
import { type RawSink, toRawSink } from "./src/io/sink.ts";
import { nodeCodecs } from "./native/zlib.ts";
import { nodeCompressors } from "./native/compress.ts";
import {
  convertToQcow2Destination,
  type ConvertToQcow2Options,
  type ConvertToQcow2Summary,
  type Qcow2Destination,
} from "./src/ops/convert_qcow2.ts";
import { nodeCrypto } from "./native/crypto.ts";
import { openDenoFile } from "./native/deno_file.ts";
import { importNode } from "./native/node_builtin.ts";

export {
  Qcow2Error,
  type Qcow2ErrorCode,
  type Qcow2ErrorOptions,
} from "./src/errors.ts";
export {
  type CompressionType,
  parseHeader,
  QCOW2_MAGIC,
  type Qcow2Features,
  type Qcow2Header,
} from "./src/qcow2/header.ts";
export type {
  BitmapsExtension,
  EncryptionExtension,
  FeatureName,
  HeaderExtensions,
  UnknownExtension,
} from "./src/qcow2/extensions.ts";
export {
  blobSource,
  type ByteSource,
  bytesSource,
  type FileHandleLike,
  fileHandleSource,
  fileSource,
  type ImageInput,
  type SeekableReader,
  type SeekableWriter,
} from "./src/io/source.ts";
export {
  fileHandleWriter,
  type WritableFileHandleLike,
} from "./src/io/file_handle_writer.ts";
export type { DiskImage, Extent, ExtentKind } from "./src/disk.ts";
export type { Qcow2Image } from "./src/qcow2/image.ts";
export type { TwoLevelImage } from "./src/qcow2/walk.ts";
export type { WritableQcow2Image } from "./src/qcow2/writable.ts";
export type { WritableInput } from "./src/qcow2/open_writable.ts";
export {
  type ByteStore,
  fileHandleStore,
  type FsFileLike,
  fsFileStore,
  isByteStore,
  type MemoryStore,
  memoryStore,
  type ReadWriteFileHandleLike,
  type StorePiece,
} from "./src/io/store.ts";
export { opfsStore, type SyncAccessHandleLike } from "./src/io/opfs.ts";
export {
  type ImageFormat,
  type OpenedFile,
  type OpenFile,
  type OpenOptions,
  type OpenRequest,
  probeFormat,
  resolveName,
} from "./src/open.ts";
export {
  parseQcowHeader,
  type QcowHeader,
  type QcowImage,
  readQcowHeader,
} from "./src/qcow/image.ts";
export {
  checkSnapshotL1,
  findSnapshot,
  readSnapshots,
  type Snapshot,
} from "./src/qcow2/snapshots.ts";
export { afMerge, afSplit } from "./src/crypto/afsplit.ts";
export {
  type BlockCipher,
  type CryptoProvider,
  HASH_LENGTHS,
  type HashAlgorithm,
  webCrypto,
} from "./src/crypto/provider.ts";
export {
  type CipherAlgorithm,
  cipherKeyLength,
  type CipherMode,
  type CipherSpec,
  type IvGenerator,
  SectorCipher,
  sectorCipher,
} from "./src/crypto/sector_cipher.ts";
export {
  encodeLuksHeader,
  luksCipherSpec,
  type LuksHeader,
  type LuksHeaderFields,
  type LuksKeySlot,
  luksLayout,
  parseLuksHeader,
} from "./src/crypto/luks_header.ts";
export {
  type EncryptedImageHeader,
  type ImageEncryption,
  legacyAesKey,
  openEncryption,
  readLuksHeader,
  sectorEncryption,
  unlockLuks,
} from "./src/crypto/encryption.ts";
export {
  type EncryptInfo,
  type LuksEncryptInfo,
  luksInfo,
  type LuksSlotInfo,
  readEncryptInfo,
} from "./src/crypto/encrypt_info.ts";
export { type Bitmap, readBitmaps } from "./src/qcow2/bitmaps.ts";
export {
  bitmapsSize,
  type BitmapToMeasure,
  preallocSize,
  type Qcow2Geometry,
  refcountMetadataSize,
} from "./src/qcow2/measure.ts";
export {
  type ByteTests,
  compareImages,
  type CompareOptions,
  type CompareResult,
  portableByteTests,
} from "./src/ops/compare.ts";
export {
  measure,
  type Measurement,
  type MeasureOptions,
  type MeasurePreallocation,
} from "./src/ops/measure.ts";
export type {
  Codecs,
  Compressor,
  Compressors,
  Decompressor,
} from "./src/codecs/codecs.ts";
export {
  type WorkerCodecs,
  workerCodecs,
  type WorkerCodecsOptions,
} from "./native/worker_codecs.ts";
export { webCodecs } from "./src/codecs/codecs.ts";
export type {
  ConvertOptions,
  ConvertProgress,
  ConvertSummary,
} from "./src/ops/convert.ts";
export type { RawSink } from "./src/io/sink.ts";
export {
  type CheckOptions,
  checkQcow2,
  type CheckResult,
  DEFAULT_WINDOW_CLUSTERS,
} from "./src/qcow2/check.ts";
export {
  type HostAllocation,
  type HostRun,
  type MapEntry,
  mapImage,
  type MapOptions,
  mapSize,
} from "./src/ops/map.ts";
export {
  type BitmapInfo,
  formatInfo,
  formatSize,
  type ImageInfo,
  imageInfo,
  type InfoExtras,
  type Qcow2HeaderInfo,
  type Qcow2SpecificInfo,
  qcowInfo,
  rawInfo,
  type SnapshotInfo,
} from "./src/ops/info.ts";
export { nodeCodecs };
export { nodeCrypto } from "./native/crypto.ts";

/**
 * Reads and validates the header of a qcow2 image.
 *
 * @param input A `Deno.FsFile`-shaped file, bytes in memory, a `Blob`, or a {@linkcode ByteSource}.
 * @returns The header: every field, named feature bits, and extensions.
 * @throws {Qcow2Error} If the file is not a valid qcow2 image.
 *
 * @example Reading a header from bytes
 * ```ts
 * import { readHeader } from "@qcow2/qcow2";
 * import { assertRejects } from "@std/assert";
 *
 * await assertRejects(() => readHeader(new TextEncoder().encode("not qcow2")));
 * ```
 */
export async function readHeader(input: ImageInput): Promise<Qcow2Header> {
  return readHeaderFrom(await toByteSource(input));
}

/**
 * Opens a file by path for positional reads: in Deno with `Deno.open` and
 * synchronous reads (the fastest Deno has), elsewhere with
 * `node:fs/promises` (Node and Bun). It is the default way `openImage`
 * opens an image given by path, and the backing and data files it names.
 *
 * @param path The file's path.
 * @returns The open file, as a source that can be closed.
 *
 * @example Confining backing files to one directory
 * ```ts ignore
 * import { openImage, openPath } from "jsr:@qcow2/qcow2";
 *
 * const image = await openImage("vm/disk.qcow2", {
 *   openFile: (path, request) => {
 *     if (!path.startsWith("vm/")) throw new Error(`${request.kind} outside vm/`);
 *     return openPath(path);
 *   },
 * });
 * ```
 *
 * @example Following a backing chain one layer down, and no further
 * ```ts
 * import { type OpenFile, openImage, openPath, Qcow2Error } from "@qcow2/qcow2";
 * import { assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
 *
 * const path = new URL("./tests/fixtures/layouts/chain_top.qcow2", import.meta.url).pathname;
 * const file = await openPath(path);
 * assertEquals(file.size, 524288);
 * file.close?.();
 * const openFile: OpenFile = (name, request) =>
 *   request.from === path ? openPath(name) : Promise.reject(new Error("refused"));
 * const error = await assertRejects(() => openImage(path, { openFile }), Qcow2Error);
 * assertEquals(error.code, "BACKING_FILE");
 * assertStringIncludes(error.message, "chain_base.qcow2"); // named by chain_mid.qcow2
 * ```
 */
export async function openPath(path: string): Promise<OpenedFile> {
  if (typeof Deno !== "undefined" && typeof Deno.open === "function") {
    return await openDenoFile(path);
  }
  const { open } = await importNode<{
    open(path: string, flags: string): Promise<FileHandleLike & Closable>;
  }>("fs/promises");
  const handle = await open(path, "r");
  try {
    return {
      ...(await fileHandleSource(handle)),
      // A failed close of a file only read loses nothing.
      close: () => void handle.close().catch(() => {}),
    };
  } catch (e) {
    await handle.close();
    throw e;
  }
}

/** A Node `FileHandle`'s `close`. */
interface Closable {
  close(): Promise<void>;
}

/**
 * Opens a qcow2 image read-write: `options.writable` set. The image gets
 * `write`, `writeZeroes`, `discard` and `flush`, all applied in call order
 * (one queue per image, so `Promise.all` of many writes is fine), and reads
 * see every earlier write; `close()` flushes, clears the dirty bit it set
 * (lazy refcounts) and closes the files it opened.
 *
 * @param input A path (not in web.ts), a {@linkcode ByteStore} (`memoryStore`, `opfsStore`), a `Deno.FsFile` or Node `FileHandle` open read-write, or bytes (copied into a `memoryStore`).
 * @param options `writable: true`, and the options of reading.
 * @returns The writable image.
 * @throws {Qcow2Error} `NOT_WRITABLE` for qcow v1, the corrupt bit, an
 * encrypted image or a read-only file; what reading throws otherwise.
 *
 * @example Writing a pattern and reading it back
 * ```ts
 * import { memoryStore, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/empty.qcow2", import.meta.url));
 * const store = memoryStore(bytes);
 * const image = await openImage(store, { writable: true });
 * await Promise.all([image.write(0, new Uint8Array(4096).fill(0xa5)), image.discard(0, 65536)]);
 * const back = new Uint8Array(1);
 * await image.read(0, back);
 * assertEquals(back[0], 0); // the discard came after the write
 * await image.close();
 * ```
 */
export async function openImage(
  input: WritableInput | string,
  options: OpenOptions & { writable: true },
): Promise<WritableQcow2Image>;
/**
 * Opens a qcow2 (or legacy qcow) image for random-access reads of guest
 * bytes, through its backing chain. Compressed clusters use `node:zlib`
 * (zlib and zstd) on the calling thread unless `options.codecs` says
 * otherwise ({@linkcode workerCodecs} spreads them over worker threads).
 *
 * Given a path, it opens the file and, unless `options.openFile` says
 * otherwise, the backing and data files it names with
 * {@linkcode openPath}, resolved against its directory as QEMU resolves
 * them; `close()` closes them all. Given an open file, bytes or a `Blob`, backing and
 * data files are opened only through `options.openFile` (with
 * `options.path` to resolve their names).
 *
 * @param input A path, a `Deno.FsFile`-shaped file, bytes in memory, a `Blob`, or a {@linkcode ByteSource}.
 * @param options Codecs, cache size, snapshot, and how to open named files.
 * @returns The open image.
 * @throws {Qcow2Error} If the image or a file it needs is invalid, missing or
 * unsupported.
 *
 * @example Reading guest bytes of an image in memory
 * ```ts
 * import { openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const image = await openImage(bytes);
 * assertEquals(image.size, 4 * 1024 * 1024);
 * const sector = new Uint8Array(512);
 * await image.read(0, sector);
 * ```
 */
export async function openImage(
  input: ImageInput | string,
  options?: OpenOptions,
): Promise<Qcow2Image | QcowImage>;
export async function openImage(
  input: ImageInput | WritableInput | string,
  options: OpenOptions = {},
): Promise<Qcow2Image | QcowImage | WritableQcow2Image> {
  const codecs = options.codecs ?? nodeCodecs;
  const crypto = options.crypto ?? nodeCrypto;
  if (options.writable) {
    return await openImageWritable(input as WritableInput | string, {
      ...options,
      codecs,
    });
  }
  input = input as ImageInput | string;
  if (typeof input !== "string") {
    return openDisk(await toByteSource(input), { ...options, codecs, crypto });
  }
  const file = await openPath(input);
  try {
    const image = await openDisk(file, {
      openFile: openPath,
      path: input,
      ...options,
      codecs,
      crypto,
    });
    const closeLayers = image.close.bind(image);
    image.close = () => {
      closeLayers();
      file.close!();
    };
    return image;
  } catch (e) {
    file.close!();
    throw e;
  }
}

/** `openImage` with `writable`: a path is opened read-write, as are data files. */
async function openImageWritable(
  input: WritableInput | string,
  options: OpenOptions,
): Promise<WritableQcow2Image> {
  const openFile: OpenFile = (path, request) =>
    request.writable ? openPathWritable(path) : openPath(path);
  if (typeof input !== "string") {
    return openWritable(await toByteStore(input), options);
  }
  const store = await openPathWritable(input);
  try {
    return await openWritable(
      store,
      { openFile, path: input, ...options },
      true,
    );
  } catch (e) {
    await store.close?.();
    throw e;
  }
}

/**
 * Converts a qcow2 image to a raw disk image. To a seekable file the output
 * is sparse: clusters that read as zeros and all-zero blocks of
 * `sparseSize` bytes are never written, and the final length is set with
 * `truncate`. To a `WritableStream` every byte is written.
 *
 * @param src The image: a path, a `Deno.FsFile`-shaped file, bytes, a `Blob`, a {@linkcode ByteSource}, or an open image.
 * @param dst A `Deno.FsFile`-shaped file open for writing (emptied first), a `WritableStream`, or a {@linkcode RawSink} of your own.
 * @param options Sparseness, progress, abort, and the options of {@linkcode openImage}.
 * @returns Bytes written, bytes skipped as holes, and the time taken.
 * @throws {Qcow2Error} If the image is invalid; the signal's reason if aborted.
 *
 * @example Converting an image to raw bytes in memory
 * ```ts
 * import { convert } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const chunks: Uint8Array[] = [];
 * const sink = new WritableStream<Uint8Array>({ write: (c) => { chunks.push(c.slice()); } });
 * const summary = await convert(bytes, sink);
 * assertEquals(summary.virtualSize, 4 * 1024 * 1024);
 * assertEquals(chunks.reduce((n, c) => n + c.length, 0), summary.virtualSize);
 * ```
 */
export async function convert(
  src: ImageInput | string | DiskImage,
  dst: SeekableWriter | WritableStream<Uint8Array> | RawSink,
  options: ConvertOptions & OpenOptions = {},
): Promise<ConvertSummary> {
  const opened = typeof src === "string" || !("extents" in src);
  const image = opened
    ? await openImage(src, { l2CacheBytes: CONVERT_L2_CACHE_BYTES, ...options })
    : src;
  try {
    return await convertImage(
      image,
      await toRawSink(dst, options.signal),
      options,
    );
  } finally {
    if (opened) image.close();
  }
}

export {
  CREATE_OPTIONS_HELP,
  type CreateOptions,
  optionsFromText,
  type OptionText,
  parseSize,
  type Preallocation,
  resolveCreateOptions,
  type ResolvedCreateOptions,
  splitOptions,
} from "./src/qcow2/create_options.ts";
export {
  type CreatedImage,
  createImage,
  type MemoryTarget,
  memoryTarget,
} from "./src/ops/create.ts";
export {
  type ClusterWrite,
  type ImageTarget,
  Qcow2Writer,
} from "./src/qcow2/writer.ts";
export type { ClusterKind, MetadataLayout } from "./src/qcow2/placement.ts";
export type {
  ConvertToQcow2Options,
  ConvertToQcow2Summary,
  Qcow2Destination,
} from "./src/ops/convert_qcow2.ts";
export {
  type CompressSettings,
  DEFAULT_ZLIB_LEVEL,
  makeNodeCompressors,
  nodeCompressors,
} from "./native/compress.ts";
export {
  type WorkerCompressors,
  workerCompressors,
  type WorkerCompressorsOptions,
} from "./native/compress_pool.ts";

/**
 * Converts an image to qcow2, as `qemu-img convert -O qcow2` does (see
 * {@linkcode ConvertToQcow2Options}), compressing with `node:zlib` unless
 * `codecs.compress` says otherwise. Into an {@linkcode ImageTarget} or a
 * seekable file (a `Deno.FsFile` open for writing) the metadata is written
 * once the data is; into a `WritableStream` the image goes front to back,
 * metadata first, and the source is read twice.
 *
 * @param src The source: a path, bytes, a `Blob`, a {@linkcode ByteSource},
 * a seekable file, or an open image (left open).
 * @param dst Where the image goes.
 * @param options The new image's options, the conversion's, and those of
 * {@linkcode openImage}.
 * @returns What was written.
 * @throws {Qcow2Error} For an invalid source or refused options.
 *
 * @example A compressed copy of an image, in memory
 * ```ts
 * import { convertToQcow2, memoryTarget, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const target = memoryTarget();
 * const summary = await convertToQcow2("tests/fixtures/zlib.qcow2", target, { compress: true });
 * assertEquals(summary.compressedClusters, 9);
 * const image = await openImage(target.bytes());
 * assertEquals(image.size, 2 * 1024 * 1024);
 * ```
 */
export async function convertToQcow2(
  src: ImageInput | string | DiskImage,
  dst: Qcow2Destination,
  options: ConvertToQcow2Options & OpenOptions = {},
): Promise<ConvertToQcow2Summary> {
  const opened = typeof src === "string" || !("extents" in src);
  const image = opened ? await openSource(src, options) : src;
  try {
    return await convertToQcow2Destination(image, dst, {
      ...options,
      codecs: {
        ...nodeCodecs,
        ...options.codecs,
        compress: options.codecs?.compress ?? nodeCompressors,
      },
    });
  } finally {
    if (opened) image.close();
  }
}

/** Opens `src` as an image, or as a raw disk if it is no qcow2 or qcow image. */
async function openSource(
  src: ImageInput | string,
  options: OpenOptions,
): Promise<DiskImage> {
  try {
    return await openImage(src, {
      l2CacheBytes: CONVERT_L2_CACHE_BYTES,
      ...options,
    });
  } catch (e) {
    if (!(e instanceof Qcow2Error) || e.code !== "BAD_MAGIC") throw e;
  }
  if (typeof src !== "string") return new RawImage(await toByteSource(src));
  const file = await openPath(src);
  return new RawImage(file, () => file.close!());
}
