/**
 * The positional-write side of the I/O contract: a {@linkcode ByteStore} is
 * a {@linkcode ByteSource} that can also be written at any position, grown,
 * and made durable. Writable images go through it, whatever holds the bytes:
 * a `Deno.FsFile`, a Node `FileHandle`, memory, or (see `opfs.ts`) a
 * browser's origin private file system.
 *
 * @module
 */

import {
  type ByteSource,
  type FileHandleLike,
  type FileHandleStats,
  readHandleAt,
} from "./source.ts";
import type { WritableFileHandleLike } from "./file_handle_writer.ts";

/**
 * A random-access file that can be read and written: what a writable image
 * needs. `size` follows writes and `truncate`. Calls may be made
 * concurrently only where a store says so; writable images make one at a
 * time.
 *
 * @example A store in memory, written and read back
 * ```ts
 * import { memoryStore } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const store = memoryStore();
 * await store.writeAt(4096, new Uint8Array([1, 2, 3]));
 * assertEquals(store.size, 4099);
 * const back = new Uint8Array(5);
 * assertEquals(await store.readAt(4096, back), 3); // the file ends
 * assertEquals(back, new Uint8Array([1, 2, 3, 0, 0]));
 * ```
 */
export interface ByteStore extends ByteSource {
  /** The length of the file in bytes, after every write so far. */
  readonly size: number;
  /**
   * Writes all of `bytes` at `position`, growing the file if it ends
   * before; a gap reads as zeros.
   */
  writeAt(position: number, bytes: Uint8Array): Promise<void>;
  /** Sets the file length; bytes added read as zeros. */
  truncate?(length: number): Promise<void>;
  /** Resolves once every write so far is durable (`fdatasync`). */
  flush?(): Promise<void>;
  /** Releases the file. Writable images call it when closed, if they opened it. */
  close?(): void | Promise<void>;
  /**
   * Optional: writes every piece, in any order or at once (they never
   * overlap); resolves when all are written. Stores that write pieces
   * better together offer it (in parallel, or with one early-writeback
   * hint for their span); without it pieces are written one by one.
   */
  writeMany?(pieces: readonly StorePiece[]): Promise<void>;
}

/**
 * Bytes to write at a position, for {@linkcode ByteStore.writeMany}.
 *
 * @example
 * ```ts
 * import type { StorePiece } from "@qcow2/qcow2";
 *
 * const piece: StorePiece = { position: 65536, bytes: new Uint8Array(512) };
 * ```
 */
export interface StorePiece {
  /** File offset. */
  position: number;
  /** The bytes. */
  bytes: Uint8Array;
}

/**
 * Whether `input` is a {@linkcode ByteStore} (a source with `writeAt`).
 *
 * @param input Anything.
 * @returns True for a store.
 *
 * @example
 * ```ts
 * import { bytesSource, isByteStore, memoryStore } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(isByteStore(memoryStore()), true);
 * assertEquals(isByteStore(bytesSource(new Uint8Array(1))), false);
 * ```
 */
export function isByteStore(input: unknown): input is ByteStore {
  return typeof input === "object" && input !== null &&
    typeof (input as ByteStore).readAt === "function" &&
    typeof (input as ByteStore).writeAt === "function";
}

/** Default chunk size of {@linkcode memoryStore}: 1 MiB. */
export const MEMORY_STORE_CHUNK = 1024 * 1024;

/**
 * A {@linkcode ByteStore} in memory that can also give its bytes back.
 *
 * @example Exporting what was written
 * ```ts
 * import { memoryStore } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const store = memoryStore(new Uint8Array([9, 9]));
 * await store.writeAt(1, new Uint8Array([7]));
 * assertEquals(store.bytes(), new Uint8Array([9, 7]));
 * ```
 */
export interface MemoryStore extends ByteStore {
  /** Sets the file length; bytes added read as zeros. */
  truncate(length: number): Promise<void>;
  /** Resolves at once: memory has nothing to make durable. */
  flush(): Promise<void>;
  /** A copy of the whole file. */
  bytes(): Uint8Array;
  /** Bytes of memory the chunks hold now. */
  readonly allocatedBytes: number;
}

/**
 * A growable {@linkcode ByteStore} in memory, kept as chunks of
 * `chunkSize` bytes: a chunk is made only when a non-zero byte is first
 * written into it, so holes cost nothing and growing never copies the file.
 *
 * @param initial The file's first contents (copied), if any.
 * @param chunkSize Bytes per chunk (default 1 MiB).
 * @returns The store.
 * @throws {RangeError} If `chunkSize` is not a positive integer.
 *
 * @example A 1 TiB hole costs nothing
 * ```ts
 * import { memoryStore } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const store = memoryStore();
 * await store.truncate(2 ** 40);
 * await store.writeAt(2 ** 39, new Uint8Array([1]));
 * assertEquals(store.size, 2 ** 40);
 * assertEquals(store.allocatedBytes, 1024 * 1024); // one chunk
 * ```
 */
export function memoryStore(
  initial?: Uint8Array,
  chunkSize: number = MEMORY_STORE_CHUNK,
): MemoryStore {
  if (!Number.isSafeInteger(chunkSize) || chunkSize <= 0) {
    throw new RangeError(`chunkSize must be a positive integer: ${chunkSize}`);
  }
  const chunks = new Map<number, Uint8Array>();
  let size = 0;
  const write = (position: number, bytes: Uint8Array, skipZero: boolean) => {
    let done = 0;
    while (done < bytes.length) {
      const at = position + done;
      const index = Math.floor(at / chunkSize);
      const within = at - index * chunkSize;
      const n = Math.min(chunkSize - within, bytes.length - done);
      const part = bytes.subarray(done, done + n);
      let chunk = chunks.get(index);
      if (!chunk && !(skipZero && isZero(part))) {
        chunk = new Uint8Array(chunkSize);
        chunks.set(index, chunk);
      }
      chunk?.set(part, within);
      done += n;
    }
    size = Math.max(size, position + bytes.length);
  };
  if (initial) write(0, initial, true);
  const store: MemoryStore = {
    get size() {
      return size;
    },
    get allocatedBytes() {
      return chunks.size * chunkSize;
    },
    readAt(position: number, buffer: Uint8Array): Promise<number> {
      const n = Math.max(0, Math.min(buffer.length, size - position));
      let done = 0;
      while (done < n) {
        const at = position + done;
        const index = Math.floor(at / chunkSize);
        const within = at - index * chunkSize;
        const m = Math.min(chunkSize - within, n - done);
        const chunk = chunks.get(index);
        if (chunk) buffer.set(chunk.subarray(within, within + m), done);
        else buffer.fill(0, done, done + m);
        done += m;
      }
      return Promise.resolve(n);
    },
    writeAt(position: number, bytes: Uint8Array): Promise<void> {
      write(position, bytes, true);
      return Promise.resolve();
    },
    truncate(length: number): Promise<void> {
      if (length < size) {
        for (const index of [...chunks.keys()]) {
          const from = index * chunkSize;
          if (from >= length) chunks.delete(index);
          else if (from + chunkSize > length) {
            chunks.get(index)!.fill(0, length - from);
          }
        }
      }
      size = length;
      return Promise.resolve();
    },
    flush: () => Promise.resolve(),
    bytes(): Uint8Array {
      const out = new Uint8Array(size);
      for (const [index, chunk] of chunks) {
        const from = index * chunkSize;
        out.set(chunk.subarray(0, Math.max(0, size - from)), from);
      }
      return out;
    },
  };
  return store;
}

function isZero(bytes: Uint8Array): boolean {
  const words = bytes.byteOffset % 4 === 0
    ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2)
    : undefined;
  let i = 0;
  if (words) {
    for (; i < words.length; i++) if (words[i] !== 0) return false;
    i *= 4;
  }
  for (; i < bytes.length; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * The subset of `Deno.FsFile` a writable image needs. A `Deno.FsFile` opened
 * with `read` and `write` passes as it is; the synchronous calls are used,
 * which are the fastest in Deno.
 *
 * @example A file of your own, in memory
 * ```ts
 * import { fsFileStore, type FsFileLike } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let disk = new Uint8Array(0);
 * let at = 0;
 * const file: FsFileLike = {
 *   seekSync(offset, whence) {
 *     at = whence === 2 ? disk.length + offset : offset;
 *     return at;
 *   },
 *   readSync(p) {
 *     const part = disk.subarray(at, at + p.length);
 *     p.set(part);
 *     at += part.length;
 *     return part.length || null;
 *   },
 *   writeSync(p) {
 *     if (at + p.length > disk.length) {
 *       const grown = new Uint8Array(at + p.length);
 *       grown.set(disk);
 *       disk = grown;
 *     }
 *     disk.set(p, at);
 *     at += p.length;
 *     return p.length;
 *   },
 *   truncateSync(len = 0) {
 *     const resized = new Uint8Array(len);
 *     resized.set(disk.subarray(0, len));
 *     disk = resized;
 *   },
 *   syncDataSync() {},
 * };
 * const store = fsFileStore(file);
 * await store.writeAt(2, new Uint8Array([5]));
 * assertEquals(disk, new Uint8Array([0, 0, 5]));
 * ```
 */
export interface FsFileLike {
  /** Moves the file position (`whence` as `Deno.SeekMode`: 0 start, 2 end). */
  seekSync(offset: number, whence: number): number;
  /** Reads into `p`; the count read, or `null` at end of file. */
  readSync(p: Uint8Array): number | null;
  /** Writes from `p`; the count written. */
  writeSync(p: Uint8Array): number;
  /** Sets the file length. */
  truncateSync(len?: number): void;
  /** Makes written data durable. */
  syncDataSync(): void;
  /** Closes the file. */
  close?(): void;
}

/**
 * A {@linkcode ByteStore} over a `Deno.FsFile` (or anything shaped like
 * {@linkcode FsFileLike}), with synchronous seeks, reads and writes: a seek
 * and its transfer run with nothing in between, so callers never interleave.
 *
 * @param file A file open for reading and writing.
 * @param owned Whether `close()` closes `file` (default false).
 * @returns The store.
 *
 * @example Writing into a temporary file
 * ```ts
 * import { fsFileStore } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const path = await Deno.makeTempFile();
 * using file = await Deno.open(path, { read: true, write: true });
 * const store = fsFileStore(file);
 * await store.writeAt(1, new Uint8Array([7]));
 * await store.flush!();
 * assertEquals(await Deno.readFile(path), new Uint8Array([0, 7]));
 * await Deno.remove(path);
 * ```
 */
export function fsFileStore(file: FsFileLike, owned = false): ByteStore {
  return syncStore({
    size: file.seekSync(0, 2),
    read(part, at) {
      file.seekSync(at, 0);
      return file.readSync(part);
    },
    write(part, at) {
      file.seekSync(at, 0);
      return file.writeSync(part);
    },
    truncate: (length) => file.truncateSync(length),
    flush: () => file.syncDataSync(),
    close: () => {
      if (owned) file.close?.();
    },
  });
}

/**
 * A file a {@linkcode syncStore} reads and writes synchronously, each
 * transfer at a file position.
 *
 * @ignore
 */
export interface SyncFile {
  /** The file's length in bytes, when the store is made. */
  size: number;
  /** Reads into `part` at `at`; the count read (0 or null at end of file). */
  read(part: Uint8Array, at: number): number | null;
  /** Writes `part` at `at`; the count written. */
  write(part: Uint8Array, at: number): number;
  /** Sets the file length. */
  truncate(length: number): void;
  /** Makes written data durable. */
  flush(): void;
  /** Closes the file (or not, when the caller owns it). */
  close(): void;
}

/**
 * A {@linkcode ByteStore} over a file with synchronous transfers (a
 * `Deno.FsFile`, an OPFS sync access handle): a read or write is repeated
 * until the buffer is done (a read stops at the end of the file), the size
 * follows writes and truncation, and each operation's outcome is a promise
 * ({@linkcode settled}).
 *
 * @ignore
 */
export function syncStore(file: SyncFile): ByteStore {
  let size = file.size;
  return {
    get size() {
      return size;
    },
    readAt(position: number, buffer: Uint8Array): Promise<number> {
      return readSyncAt((part, at) => file.read(part, at), position, buffer);
    },
    writeAt(position: number, bytes: Uint8Array): Promise<void> {
      return settled(() => {
        let done = 0;
        while (done < bytes.length) {
          done += file.write(bytes.subarray(done), position + done);
        }
        size = Math.max(size, position + bytes.length);
      });
    },
    truncate(length: number): Promise<void> {
      return settled(() => {
        file.truncate(length);
        size = length;
      });
    },
    flush(): Promise<void> {
      return settled(() => file.flush());
    },
    close(): void {
      file.close();
    },
  };
}

/**
 * The subset of a Node `fs/promises` `FileHandle` a writable image needs:
 * what a source reads through ({@linkcode FileHandleLike}) and `convert`
 * writes through ({@linkcode WritableFileHandleLike}), and `datasync`.
 * Deno, Node and Bun all provide it.
 *
 * @example A handle of your own, in memory
 * ```ts
 * import { fileHandleStore, type ReadWriteFileHandleLike } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let disk = new Uint8Array(4);
 * const handle: ReadWriteFileHandleLike = {
 *   read(buffer, offset, length, position) {
 *     const part = disk.subarray(position, position + length);
 *     buffer.set(part, offset);
 *     return Promise.resolve({ bytesRead: part.length });
 *   },
 *   write(buffer, offset, length, position) {
 *     disk.set(buffer.subarray(offset, offset + length), position);
 *     return Promise.resolve({ bytesWritten: length });
 *   },
 *   stat: () => Promise.resolve({ size: disk.length }),
 *   truncate(len = 0) {
 *     disk = disk.slice(0, len);
 *     return Promise.resolve();
 *   },
 *   datasync: () => Promise.resolve(),
 * };
 * const store = await fileHandleStore(handle);
 * await store.writeAt(1, new Uint8Array([3, 4]));
 * assertEquals(disk, new Uint8Array([0, 3, 4, 0]));
 * ```
 */
export interface ReadWriteFileHandleLike
  extends FileHandleLike, WritableFileHandleLike {
  /** The file's metadata (as {@linkcode FileHandleLike} reads it). */
  stat(): Promise<FileHandleStats>;
  /** Makes written data durable. */
  datasync(): Promise<void>;
  /** Closes the handle. */
  close?(): Promise<void>;
}

/**
 * A {@linkcode ByteStore} over a Node-style `FileHandle` open for reading
 * and writing (`open(path, "r+")`): positional `pread`/`pwrite`.
 *
 * @param handle The open handle.
 * @param owned Whether `close()` closes `handle` (default false).
 * @returns The store.
 *
 * @example Through `node:fs/promises`
 * ```ts
 * import { open } from "node:fs/promises";
 * import { fileHandleStore } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const path = await Deno.makeTempFile();
 * const handle = await open(path, "r+");
 * const store = await fileHandleStore(handle, true);
 * await store.writeAt(0, new Uint8Array([1, 2]));
 * await store.close!();
 * assertEquals(await Deno.readFile(path), new Uint8Array([1, 2]));
 * await Deno.remove(path);
 * ```
 */
export async function fileHandleStore(
  handle: ReadWriteFileHandleLike,
  owned = false,
): Promise<ByteStore> {
  let size = Number((await handle.stat()).size);
  const store: ByteStore = {
    get size() {
      return size;
    },
    readAt: (position, buffer) => readHandleAt(handle, position, buffer),
    async writeAt(position: number, bytes: Uint8Array): Promise<void> {
      let done = 0;
      while (done < bytes.length) {
        const { bytesWritten } = await handle.write(
          bytes,
          done,
          bytes.length - done,
          position + done,
        );
        done += bytesWritten;
      }
      size = Math.max(size, position + bytes.length);
    },
    async truncate(length: number): Promise<void> {
      await handle.truncate(length);
      size = length;
    },
    flush: () => handle.datasync(),
    async close(): Promise<void> {
      if (owned) await handle.close?.();
    },
    // pwrite at any position: many at once are safe.
    async writeMany(pieces: readonly StorePiece[]): Promise<void> {
      const settled = await Promise.allSettled(
        pieces.map((p) => store.writeAt(p.position, p.bytes)),
      );
      const failed = settled.find((r) => r.status === "rejected");
      if (failed) throw (failed as PromiseRejectedResult).reason;
    },
  };
  return store;
}

/**
 * Fills `buffer` from file `position` with synchronous reads, until it is
 * full or the file ends.
 *
 * @param read One read into `part` at `at`: the count read (0 or null at
 * the end of the file).
 * @returns The count read, as a promise (rejected with what `read` throws).
 *
 * @ignore
 */
export function readSyncAt(
  read: SyncFile["read"],
  position: number,
  buffer: Uint8Array,
): Promise<number> {
  try {
    let done = 0;
    while (done < buffer.length) {
      const n = read(buffer.subarray(done), position + done);
      if (n === null || n <= 0) break;
      done += n;
    }
    return Promise.resolve(done);
  } catch (e) {
    return Promise.reject(e);
  }
}

/**
 * Runs a synchronous store operation and gives its outcome as a promise:
 * resolved when it returns, rejected with what it throws (never a throw
 * out of a function whose callers expect a promise).
 *
 * @ignore
 */
export function settled(operation: () => void): Promise<void> {
  try {
    operation();
    return Promise.resolve();
  } catch (e) {
    return Promise.reject(e);
  }
}
