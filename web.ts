/**
 * Read, inspect and convert QEMU qcow2 disk images in a browser, or in any
 * JavaScript runtime without `node:` modules: the same API as the main entry
 * (`jsr:@qcow2/qcow2`), built only on web-standard APIs.
 *
 * ```ts ignore
 * import { convert, imageInfo, openImage } from "jsr:@qcow2/qcow2/web";
 *
 * const picker = document.querySelector<HTMLInputElement>("input[type=file]")!;
 * const file = picker.files![0]; // a File is a Blob: read slice by slice
 *
 * const image = await openImage(file);
 * if ("snapshots" in image) {
 *   const info = imageInfo(image.header, file.name, { snapshots: image.snapshots });
 *   console.log(info["virtual-size"], info["cluster-size"], info.snapshots);
 * }
 * for await (const extent of image.extents()) {
 *   console.log(extent.start, extent.length, extent.kind);
 * }
 *
 * // The raw image in memory (as large as the virtual disk).
 * const chunks: Uint8Array[] = [];
 * await convert(image, new WritableStream({ write: (c) => void chunks.push(c.slice()) }));
 * const raw = new Blob(chunks);
 * ```
 *
 * How it differs from the main entry:
 *
 * - Images come as a `Blob` or `File`, a `Uint8Array`, or a
 *   {@linkcode ByteSource}; there are no paths, so `openPath` is absent, and
 *   backing and data files are opened only through the `openFile` option
 *   (map the names an image asks for to files the user picked).
 * - Compressed clusters are decompressed by {@linkcode webCodecs}: zlib (the
 *   default qcow2 compression) by pako, zstd by a WebAssembly build of the
 *   reference zstd library, compiled on the first zstd cluster.
 * - `nodeCodecs` (from `node:zlib`) is absent.
 *
 * @module
 */

import { webCodecs } from "./src/codecs/codecs.ts";
import {
  type ConvertFunction,
  type ConvertToQcow2Function,
  makeFace,
  type OpenImageFunction,
  type ReadHeaderFunction,
} from "./src/face.ts";

/** The face over the portable defaults: web codecs, no paths. */
const face = makeFace({ codecs: webCodecs });

export type {
  ConvertFunction,
  ConvertToQcow2Function,
  OpenImageFunction,
  ReadHeaderFunction,
} from "./src/face.ts";
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
export { CRYPT_METHOD, type CryptMethod } from "./src/qcow2/layout.ts";
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
  type FileHandleStats,
  fileSource,
  type ImageInput,
  type SeekableReader,
  type SeekableWriter,
} from "./src/io/source.ts";
export {
  type HttpSource,
  httpSource,
  type HttpSourceOptions,
} from "./src/io/http.ts";
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
export type {
  OpenedFile,
  OpenFile,
  OpenOptions,
  OpenRequest,
} from "./src/open.ts";
export type { ImageFormat } from "./src/probe.ts";
export {
  parseQcowHeader,
  type QcowHeader,
  readQcowHeader,
} from "./src/qcow/header.ts";
export type { QcowImage } from "./src/qcow/image.ts";
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
  createLuks,
  type LuksCreateOptions,
  type NewLuks,
} from "./src/crypto/luks_create.ts";
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
  LUKS_CIPHER_ALGS,
  LUKS_CIPHER_MODES,
  luksPayloadSize,
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
export { webCodecs };
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
  type ImageInfo,
  imageInfo,
  type InfoExtras,
  type Qcow2HeaderInfo,
  type Qcow2SpecificInfo,
  type SnapshotInfo,
} from "./src/ops/info.ts";
export {
  type InfoFile,
  MAX_INFO_CHAIN_DEPTH,
  readInfo,
  type ReadInfoOptions,
} from "./src/ops/read_info.ts";

/**
 * Reads and validates the header of a qcow2 image.
 *
 * @param input A `Blob` or `File`, bytes in memory, a {@linkcode ByteSource},
 * or a `Deno.FsFile`-shaped file.
 * @returns The header: every field, named feature bits, and extensions.
 * @throws {Qcow2Error} If the file is not a valid qcow2 image.
 *
 * @example Reading the header of a File
 * ```ts
 * import { readHeader } from "@qcow2/qcow2/web";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const header = await readHeader(new File([bytes], "v3_64k.qcow2"));
 * assertEquals(header.version, 3);
 * assertEquals(header.clusterSize, 65536);
 * assertEquals(header.compressionType, "zlib");
 * ```
 */
export const readHeader: ReadHeaderFunction = face.readHeader;

/**
 * Opens a qcow2 (or legacy qcow) image for random-access reads of guest
 * bytes, through its backing chain. Compressed clusters use
 * {@linkcode webCodecs} (zlib and zstd) unless `options.codecs` says otherwise.
 *
 * Backing and data files are opened only through `options.openFile` (with
 * `options.path` to resolve their names); without it, an image that names
 * one fails with `BACKING_FILE` or `EXTERNAL_DATA_FILE`, unless
 * `options.ignoreBackingFile` reads its top layer alone.
 *
/**
 * Opens a qcow2 (or legacy qcow) image for random-access reads of guest
 * bytes, through its backing chain. Compressed clusters use
 * {@linkcode webCodecs} (zlib only) unless `options.codecs` says otherwise.
 *
 * Backing and data files are opened only through `options.openFile` (with
 * `options.path` to resolve their names); without it, an image that names
 * one fails with `BACKING_FILE` or `EXTERNAL_DATA_FILE`, unless
 * `options.ignoreBackingFile` reads its top layer alone.
 *
 * With `options.writable` set, it opens a qcow2 image read-write: the image
 * gets
 * `write`, `writeZeroes`, `discard` and `flush`, all applied in call order
 * (one queue per image, so `Promise.all` of many writes is fine), and reads
 * see every earlier write; `close()` flushes, clears the dirty bit it set
 * (lazy refcounts) and closes the files it opened.
 *
 * @param input A `Blob` or `File`, bytes in memory, a {@linkcode ByteSource},
 * or a `Deno.FsFile`-shaped file.
 * @param options Codecs, cache size, snapshot, and how to open named files.
 * @returns The open image (writable with `writable: true`).
 * @throws {Qcow2Error} If the image or a file it needs is invalid, missing or
 * unsupported.
 *
 * @example Reading guest bytes and extents of a Blob
 * ```ts
 * import { openImage } from "@qcow2/qcow2/web";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const image = await openImage(new Blob([bytes]));
 * assertEquals(image.size, 4 * 1024 * 1024);
 * const sector = new Uint8Array(512);
 * await image.read(0, sector);
 * let covered = 0;
 * for await (const extent of image.extents()) covered += extent.length;
 * assertEquals(covered, image.size);
 * ```
 *
 * @example Backing files the user picked, matched by name
 * ```ts ignore
 * import { blobSource, openImage } from "jsr:@qcow2/qcow2/web";
 *
 * const picker = document.querySelector<HTMLInputElement>("input[type=file]")!;
 * const files = [...picker.files!]; // the overlay and its backing files
 * const byName = (name: string) => files.find((f) => f.name === name.split("/").pop());
 * const image = await openImage(byName("overlay.qcow2")!, {
 *   openFile: async (_path, request) => {
 *     const file = byName(request.name);
 *     if (!file) throw new Error(`pick '${request.name}' too`);
 *     return blobSource(file);
 *   },
 * });
 * ``` A `Blob` or `File`, bytes in memory, a {@linkcode ByteSource},
 * or a `Deno.FsFile`-shaped file.
 * @param options Codecs, cache size, snapshot, and how to open named files.
 * @returns The open image (writable with `writable: true`).
 * @throws {Qcow2Error} If the image or a file it needs is invalid, missing or
 * unsupported.
 *
 * @example Reading guest bytes and extents of a Blob
 * ```ts
 * import { openImage } from "@qcow2/qcow2/web";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const image = await openImage(new Blob([bytes]));
 * assertEquals(image.size, 4 * 1024 * 1024);
 * const sector = new Uint8Array(512);
 * await image.read(0, sector);
 * let covered = 0;
 * for await (const extent of image.extents()) covered += extent.length;
 * assertEquals(covered, image.size);
 * ```
 *
 * @example Backing files the user picked, matched by name
 * ```ts ignore
 * import { blobSource, openImage } from "jsr:@qcow2/qcow2/web";
 *
 * const picker = document.querySelector<HTMLInputElement>("input[type=file]")!;
 * const files = [...picker.files!]; // the overlay and its backing files
 * const byName = (name: string) => files.find((f) => f.name === name.split("/").pop());
 * const image = await openImage(byName("overlay.qcow2")!, {
 *   openFile: async (_path, request) => {
 *     const file = byName(request.name);
 *     if (!file) throw new Error(`pick '${request.name}' too`);
 *     return blobSource(file);
 *   },
 * });
 * ```
 *
 * @example Writing a pattern and reading it back
 * ```ts
 * import { memoryStore, openImage } from "@qcow2/qcow2/web";
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
export const openImage: OpenImageFunction = face.openImage;

/**
 * Converts a qcow2 image to a raw disk image. To a `WritableStream` every
 * byte is written, holes as zeros. To a seekable writer (`write`, `seek`,
 * `truncate`) the output is sparse: clusters that read as zeros and all-zero
 * blocks of `sparseSize` bytes are never written.
 *
 * @param src The image: a `Blob` or `File`, bytes, a {@linkcode ByteSource},
 * a `Deno.FsFile`-shaped file, or an image from {@linkcode openImage} (left
 * open).
 * @param dst A `WritableStream`, a `Deno.FsFile`-shaped file open for
 * writing (emptied first), or a {@linkcode RawSink} of your own.
 * @param options Sparseness, progress, abort, and the options of
 * {@linkcode openImage}.
 * @returns Bytes written, bytes skipped as holes, and the time taken.
 * @throws {Qcow2Error} If the image is invalid; the signal's reason if aborted.
 * @throws {RangeError} If `sparseSize` is not a multiple of 512 from 0 to
 * 16 MiB.
 *
 * @example Converting a Blob to a raw Blob
 * ```ts
 * import { convert } from "@qcow2/qcow2/web";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/zlib.qcow2", import.meta.url));
 * const chunks: Uint8Array<ArrayBuffer>[] = [];
 * const sink = new WritableStream<Uint8Array>({ write: (c) => void chunks.push(c.slice()) });
 * const summary = await convert(new Blob([bytes]), sink);
 * const raw = new Blob(chunks, { type: "application/octet-stream" });
 * assertEquals(raw.size, summary.virtualSize);
 * ```
 */
export const convert: ConvertFunction = face.convert;

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

/**
 * Converts an image to qcow2, as `qemu-img convert -O qcow2` does (see
 * {@linkcode ConvertToQcow2Options}). Into an {@linkcode ImageTarget} or a
 * seekable file the metadata is written once the data is; into a
 * `WritableStream` the image goes front to back (metadata first), and the
 * source is read twice. A source that is no qcow2 or qcow image is read as
 * raw. Compression uses `codecs.compress`, by default the portable
 * compressors of {@linkcode webCodecs}.
 *
 * @param src The source: a `Blob`, bytes, a {@linkcode ByteSource}, a
 * seekable file, or an open image (left open).
 * @param dst Where the image goes.
 * @param options The new image's options, the conversion's, and those of
 * {@linkcode openImage}.
 * @returns What was written.
 * @throws {Qcow2Error} For an invalid source.
 * @throws {RangeError} For options qemu-img refuses, a bad `sparseSize` or
 * LUKS options QEMU refuses.
 *
 * @example Re-packing an image with 4 KiB clusters, in memory
 * ```ts
 * import { convertToQcow2, memoryTarget, openImage } from "@qcow2/qcow2/web";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const target = memoryTarget();
 * await convertToQcow2(new Blob([bytes]), target, { clusterSize: 4096 });
 * const image = await openImage(target.bytes());
 * assertEquals(image.size, 4 * 1024 * 1024);
 * ```
 */
export const convertToQcow2: ConvertToQcow2Function = face.convertToQcow2;
