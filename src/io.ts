/**
 * The positional-read contract that the core reads images through, and
 * adapters that turn common file shapes into it.
 *
 * @module
 */

import { hex, Qcow2Error } from "./errors.ts";

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
 */
export interface FileHandleLike {
  /** Reads `length` bytes at file `position` into `buffer` at `offset`. */
  read(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ bytesRead: number }>;
  /** The file's metadata; only `size` is used. */
  stat(): Promise<{ size: number | bigint }>;
}

/**
 * A {@linkcode ByteSource} over a Node-style `FileHandle`. Reads are
 * positional (`pread`), so concurrent calls run in parallel.
 *
 * @param handle An open `FileHandle` (from `node:fs/promises` `open`).
 * @returns A source that reads from `handle`.
 *
 * @example Reading with a Node `FileHandle`
 * ```ts ignore
 * import { open } from "node:fs/promises";
 * import { fileHandleSource, openImage } from "jsr:@qcow2/qcow2";
 *
 * const handle = await open("disk.qcow2");
 * const image = await openImage(await fileHandleSource(handle));
 * ```
 */
export async function fileHandleSource(
  handle: FileHandleLike,
): Promise<ByteSource> {
  const size = Number((await handle.stat()).size);
  return {
    size,
    async readAt(position: number, buffer: Uint8Array): Promise<number> {
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
    },
  };
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

/** Anything an image can be read from. */
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
