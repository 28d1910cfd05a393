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

import type {
  ConvertFunction,
  ConvertToQcow2Function,
  OpenImageFunction,
} from "./src/face.ts";
import { nativeFace } from "./native/face.ts";

export * from "./web.ts";
export { openPath } from "./native/open_path.ts";
export { nodeCodecs } from "./native/zlib.ts";
export { nodeCrypto } from "./native/crypto.ts";
export {
  workerCrypto,
  type WorkerCryptoOptions,
} from "./native/crypto_pool.ts";
export {
  type WorkerCodecs,
  workerCodecs,
  type WorkerCodecsOptions,
} from "./native/worker_codecs.ts";
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

/** The face of `web.ts` over the native defaults. */
const native = nativeFace;

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
 * With `options.writable` set, it opens a qcow2 image read-write. The image gets
 * `write`, `writeZeroes`, `discard` and `flush`, all applied in call order
 * (one queue per image, so `Promise.all` of many writes is fine), and reads
 * see every earlier write; `close()` flushes, clears the dirty bit it set
 * (lazy refcounts) and closes the files it opened.
 *
 * @param input A path, a `Deno.FsFile`-shaped file, bytes in memory, a `Blob`, or a {@linkcode ByteSource}.
 * @param options Codecs, cache size, snapshot, and how to open named files.
 * @returns The open image (writable with `writable: true`).
 * @throws {Qcow2Error} If the image or a file it needs is invalid, missing or
 * unsupported; `NOT_WRITABLE` for qcow v1, the corrupt bit, an encrypted
 * image or a read-only file with `writable: true`.
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
export const openImage: OpenImageFunction = native.openImage;

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
 * @throws {RangeError} If `sparseSize` is not a multiple of 512 from 0 to
 * 16 MiB.
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
export const convert: ConvertFunction = native.convert;

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
 * @throws {Qcow2Error} For an invalid source.
 * @throws {RangeError} For options qemu-img refuses, a bad `sparseSize` or
 * LUKS options QEMU refuses.
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
export const convertToQcow2: ConvertToQcow2Function = native.convertToQcow2;
