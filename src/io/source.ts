/**
 * The positional-read contract that the core reads images through, and
 * adapters that turn common file shapes into it.
 *
 * @module
 */

import { hex, Qcow2Error } from "../errors.ts";

/**
 * A random-access, read-only view of bytes: the only way the core touches an
 * image file. Implementations must be safe under concurrent calls.
 *
 * @example A source over bytes already in memory
 * ```ts
 * import { bytesSource } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const source = bytesSource(new Uint8Array([1, 2, 3, 4]));
 * const buffer = new Uint8Array(3);
 * assertEquals(await source.readAt(2, buffer), 2);
 * assertEquals(buffer.subarray(0, 2), new Uint8Array([3, 4]));
 * ```
 */
export interface ByteSource {
  /** The length of the underlying file in bytes. */
  readonly size: number;
  /**
   * Fills `buffer` with the bytes at `position` and resolves to how many were
   * read: `buffer.length`, or fewer only where the file ends.
   */
  readAt(position: number, buffer: Uint8Array): Promise<number>;
}

/** `Deno.SeekMode.Start`, for objects shaped like `Deno.FsFile`. */
export const SEEK_START = 0;
/** `Deno.SeekMode.End`, for objects shaped like `Deno.FsFile`. */
export const SEEK_END = 2;

/**
 * The subset of `Deno.FsFile` needed to read: `read` and `seek`. A
 * `Deno.FsFile` passes as it is.
 *
 * @example A reader of your own, over bytes in memory
 * ```ts
 * import { openImage, type SeekableReader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * let position = 0;
 * const reader: SeekableReader = {
 *   read(p) {
 *     const part = bytes.subarray(position, position + p.length);
 *     p.set(part);
 *     position += part.length;
 *     return Promise.resolve(part.length > 0 ? part.length : null);
 *   },
 *   seek(offset, whence) { // whence as Deno.SeekMode: 0 start, 1 current, 2 end
 *     position = [0, position, bytes.length][whence] + offset;
 *     return Promise.resolve(position);
 *   },
 * };
 * const image = await openImage(reader);
 * const sector = new Uint8Array(512);
 * await image.read(0, sector);
 * assertEquals(sector[0], 0x55);
 * ```
 */
export interface SeekableReader {
  /** Reads into `p`, resolving to the count read or `null` at end of file. */
  read(p: Uint8Array): Promise<number | null>;
  /** Moves the file position; resolves to the new position from the start. */
  seek(offset: number, whence: number): Promise<number>;
}

/**
 * The subset of `Deno.FsFile` needed to write: `write`, `seek` and
 * `truncate`. A `Deno.FsFile` opened for writing passes as it is.
 *
 * @example A writer of your own, into memory: holes are sought over
 * ```ts
 * import { convert, type SeekableWriter } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const disk = new Uint8Array(8 * 1024 * 1024); // room enough
 * let length = 0;
 * let position = 0;
 * const writer: SeekableWriter = {
 *   write(p) {
 *     disk.set(p, position);
 *     position += p.length;
 *     length = Math.max(length, position);
 *     return Promise.resolve(p.length);
 *   },
 *   seek(offset, whence) { // whence as Deno.SeekMode: 0 start, 1 current, 2 end
 *     position = [0, position, length][whence] + offset;
 *     return Promise.resolve(position);
 *   },
 *   truncate(len = 0) {
 *     disk.fill(0, len);
 *     length = len;
 *     return Promise.resolve();
 *   },
 * };
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const summary = await convert(bytes, writer);
 * assertEquals(length, 4 * 1024 * 1024); // set by truncate at the end
 * assertEquals(summary.bytesWritten, 65536); // the one cluster of data
 * assertEquals(disk[0], 0x55);
 * ```
 */
export interface SeekableWriter {
  /** Writes from `p`, resolving to the count written. */
  write(p: Uint8Array): Promise<number>;
  /** Moves the file position; resolves to the new position from the start. */
  seek(offset: number, whence: number): Promise<number>;
  /** Sets the file length. */
  truncate(len?: number): Promise<void>;
  /**
   * Writes from `p` synchronously, returning the count written. Optional:
   * where present (as on `Deno.FsFile`) with `seekSync`, output is written
   * synchronously, which is faster.
   */
  writeSync?(p: Uint8Array): number;
  /** Moves the file position synchronously (see `writeSync`). */
  seekSync?(offset: number, whence: number): number;
}

/**
 * A {@linkcode ByteSource} over bytes in memory. The bytes are not copied.
 *
 * @param bytes The whole file.
 * @returns A source that reads from `bytes`.
 *
 * @example Reading past the end returns fewer bytes
 * ```ts
 * import { bytesSource } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const source = bytesSource(new Uint8Array(10));
 * assertEquals(source.size, 10);
 * assertEquals(await source.readAt(8, new Uint8Array(4)), 2);
 * ```
 */
export function bytesSource(bytes: Uint8Array): ByteSource {
  return {
    size: bytes.length,
    readAt(position: number, buffer: Uint8Array): Promise<number> {
      if (position >= bytes.length) return Promise.resolve(0);
      const part = bytes.subarray(position, position + buffer.length);
      buffer.set(part);
      return Promise.resolve(part.length);
    },
  };
}

/**
 * A {@linkcode ByteSource} over a `Blob`, such as a `File` a user picked in a
 * browser. Each read slices the blob and reads only that slice
 * (`blob.slice(a, b).arrayBuffer()`), so the image is never loaded whole,
 * and concurrent reads are independent.
 *
 * @param blob The whole file.
 * @returns A source that reads from `blob`.
 *
 * @example Reading part of a Blob
 * ```ts
 * import { blobSource } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const source = blobSource(new Blob([new Uint8Array([1, 2, 3, 4, 5])]));
 * assertEquals(source.size, 5);
 * const buffer = new Uint8Array(4);
 * assertEquals(await source.readAt(3, buffer), 2); // the blob ends
 * assertEquals(buffer.subarray(0, 2), new Uint8Array([4, 5]));
 * ```
 *
 * @example Opening the file a user picked in a browser
 * ```ts ignore
 * import { blobSource, openImage } from "jsr:@qcow2/qcow2/web";
 *
 * const picker = document.querySelector<HTMLInputElement>("input[type=file]")!;
 * const image = await openImage(blobSource(picker.files![0]));
 * console.log(image.size);
 * ```
 */
export function blobSource(blob: Blob): ByteSource {
  return {
    size: blob.size,
    async readAt(position: number, buffer: Uint8Array): Promise<number> {
      if (position >= blob.size || buffer.length === 0) return 0;
      const part = new Uint8Array(
        await blob.slice(position, position + buffer.length).arrayBuffer(),
      );
      buffer.set(part);
      return part.length;
    },
  };
}

/**
 * A {@linkcode ByteSource} over an object shaped like `Deno.FsFile`. Calls are
 * serialized, since `seek` then `read` must not interleave.
 *
 * @param file An open file with `read` and `seek`.
 * @returns A source that reads from `file`.
 *
 * @example Reading a `Deno.FsFile`
 * ```ts ignore
 * import { fileSource } from "jsr:@qcow2/qcow2";
 *
 * using file = await Deno.open("disk.qcow2");
 * const source = await fileSource(file);
 * console.log(source.size);
 * ```
 *
 * @example Reads at any position, made one at a time
 * ```ts
 * import { fileSource, readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * using file = await Deno.open(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const source = await fileSource(file);
 * assertEquals(source.size, 458752);
 * const header = await readHeader(source);
 * const [a, b] = [new Uint8Array(4), new Uint8Array(4)];
 * // Both start at once; the second waits for the first's seek and read.
 * await Promise.all([source.readAt(0, a), source.readAt(header.l1TableOffset, b)]);
 * assertEquals(a, new Uint8Array([0x51, 0x46, 0x49, 0xfb])); // QFI\xfb
 * ```
 */
export async function fileSource(file: SeekableReader): Promise<ByteSource> {
  const size = await file.seek(0, SEEK_END);
  let tail: Promise<unknown> = Promise.resolve();
  const readAt = async (position: number, buffer: Uint8Array) => {
    await file.seek(position, SEEK_START);
    let done = 0;
    while (done < buffer.length) {
      const n = await file.read(buffer.subarray(done));
      if (n === null || n === 0) break;
      done += n;
    }
    return done;
  };
  return {
    size,
    readAt(position: number, buffer: Uint8Array): Promise<number> {
      const result = tail.then(() => readAt(position, buffer));
      tail = result.catch(() => {});
      return result;
    },
  };
}

/**
 * The subset of a Node `fs/promises` `FileHandle` needed to read: positional
 * `read` and `stat`. Deno, Node and Bun all provide it.
 *
 * @example A handle of your own, over bytes in memory
 * ```ts
 * import { fileHandleSource, type FileHandleLike, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const handle: FileHandleLike = {
 *   read(buffer, offset, length, position) {
 *     const part = bytes.subarray(position, position + length);
 *     buffer.set(part, offset);
 *     return Promise.resolve({ bytesRead: part.length });
 *   },
 *   stat: () => Promise.resolve({ size: bytes.length }),
 * };
 * const image = await openImage(await fileHandleSource(handle));
 * assertEquals(image.size, 4 * 1024 * 1024);
 * ```
 */
export interface FileHandleLike {
  /** Reads `length` bytes at file `position` into `buffer` at `offset`. */
  read(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ bytesRead: number }>;
  /**
   * The file's metadata: its `size`, and, where given (Node's `Stats`),
   * what kind of file it is.
   */
  stat(): Promise<FileHandleStats>;
}

/** What {@linkcode fileHandleSource} reads of a `FileHandle`'s `stat()`. */
export interface FileHandleStats {
  /** Bytes (0 for a pipe or a block device). */
  size: number | bigint;
  /** A pipe. */
  isFIFO?(): boolean;
  /** A socket. */
  isSocket?(): boolean;
  /** A character device. */
  isCharacterDevice?(): boolean;
  /** A block device: its size is found by reading. */
  isBlockDevice?(): boolean;
}

/**
 * A {@linkcode ByteSource} over a Node-style `FileHandle`. Reads are
 * positional (`pread`), so concurrent calls run in parallel.
 *
 * @param handle An open `FileHandle` (from `node:fs/promises` `open`).
 * @returns A source that reads from `handle`.
 * @throws {Error} If `handle` is a pipe, a socket or a character device
 *   (it cannot be read at any offset; its size reads 0).
 *
 * @example Reading with a Node `FileHandle`
 * ```ts ignore
 * import { open } from "node:fs/promises";
 * import { fileHandleSource, openImage } from "jsr:@qcow2/qcow2";
 *
 * const handle = await open("disk.qcow2");
 * const image = await openImage(await fileHandleSource(handle));
 * ```
 *
 * @example Reading the header of a fixture through `node:fs/promises`
 * ```ts
 * import { open } from "node:fs/promises";
 * import { fileHandleSource, readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const handle = await open(new URL("../../tests/fixtures/layouts/snap.qcow2", import.meta.url));
 * try {
 *   const source = await fileHandleSource(handle);
 *   assertEquals(source.size, (await handle.stat()).size);
 *   const header = await readHeader(source);
 *   assertEquals(header.nbSnapshots, 2);
 * } finally {
 *   await handle.close();
 * }
 * ```
 */
export async function fileHandleSource(
  handle: FileHandleLike,
): Promise<ByteSource> {
  const stats = await handle.stat();
  if (stats.isFIFO?.() || stats.isSocket?.() || stats.isCharacterDevice?.()) {
    // Its size reads 0: it would read as an empty disk.
    throw new Error(
      "Cannot read it: it is a pipe, a socket or a character device: an image is read at any offset; give a file or a block device",
    );
  }
  const size = stats.isBlockDevice?.()
    ? await deviceSize(handle)
    : Number(stats.size);
  return {
    size,
    readAt: (position, buffer) => readHandleAt(handle, position, buffer),
  };
}

/**
 * The length of a block device read through `handle` (no seek to its end
 * here): the last 512-byte sector that reads, found by doubling then
 * halving, about 2 log2(sectors) one-byte reads.
 */
async function deviceSize(handle: FileHandleLike): Promise<number> {
  const byte = new Uint8Array(1);
  const reads = async (sector: number) =>
    (await handle.read(byte, 0, 1, sector * 512)).bytesRead === 1;
  if (!(await reads(0))) return 0;
  let lo = 0; // a sector that reads
  let hi = 1; // one that does not, once found
  while (await reads(hi)) {
    lo = hi;
    hi *= 2;
  }
  while (hi - lo > 1) {
    const mid = Math.floor((lo + hi) / 2);
    if (await reads(mid)) lo = mid;
    else hi = mid;
  }
  return (lo + 1) * 512;
}

/**
 * Fills `buffer` from file `position` through a FileHandle's positional
 * reads, stopping early only at the end of the file.
 *
 * @returns The bytes read.
 * @ignore
 */
export async function readHandleAt(
  handle: Pick<FileHandleLike, "read">,
  position: number,
  buffer: Uint8Array,
): Promise<number> {
  let done = 0;
  while (done < buffer.length) {
    const { bytesRead } = await handle.read(
      buffer,
      done,
      buffer.length - done,
      position + done,
    );
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/**
 * Reads exactly `length` bytes at `position`, or fails with `TRUNCATED`
 * naming `what` was being read.
 */
export async function readExact(
  source: ByteSource,
  position: number,
  length: number,
  what: string,
): Promise<Uint8Array> {
  const buffer = new Uint8Array(length);
  const n = await source.readAt(position, buffer);
  if (n !== length) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read qcow2 image: ${what} at ${
        hex(position)
      } (${length} bytes) runs past the end of the file (${source.size} bytes)`,
      { offset: position },
    );
  }
  return buffer;
}

/**
 * Anything an image can be read from.
 *
 * @example The same image in each of its forms
 * ```ts
 * import { bytesSource, type ImageInput, readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const url = new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url);
 * const bytes = await Deno.readFile(url);
 * using file = await Deno.open(url);
 * const inputs: ImageInput[] = [bytes, new Blob([bytes]), bytesSource(bytes), file];
 * for (const input of inputs) {
 *   assertEquals((await readHeader(input)).size, 4 * 1024 * 1024);
 * }
 * ```
 */
export type ImageInput = ByteSource | SeekableReader | Uint8Array | Blob;

/**
 * Turns any {@linkcode ImageInput} into a {@linkcode ByteSource}.
 *
 * @param input Bytes in memory, a `Blob`, a `Deno.FsFile`-shaped file, or a
 * source.
 * @returns A source over the same bytes.
 */
export function toByteSource(input: ImageInput): Promise<ByteSource> {
  if (input instanceof Uint8Array) return Promise.resolve(bytesSource(input));
  if ("readAt" in input) return Promise.resolve(input);
  if ("seek" in input) return fileSource(input);
  return Promise.resolve(blobSource(input));
}
