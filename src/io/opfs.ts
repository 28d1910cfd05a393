/**
 * A {@linkcode ByteStore} over a browser's origin private file system:
 * a `FileSystemSyncAccessHandle`, which a dedicated worker gets with
 * `fileHandle.createSyncAccessHandle()`. Its calls are synchronous and fast.
 *
 * @module
 */

import { type ByteStore, syncStore } from "./store.ts";

/**
 * The subset of `FileSystemSyncAccessHandle` a writable image needs.
 *
 * @example A handle of your own, in memory
 * ```ts
 * import { opfsStore, type SyncAccessHandleLike } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let disk = new Uint8Array(0);
 * const handle: SyncAccessHandleLike = {
 *   read(buffer, { at }) {
 *     const part = disk.subarray(at, at + buffer.length);
 *     buffer.set(part);
 *     return part.length;
 *   },
 *   write(buffer, { at }) {
 *     if (at + buffer.length > disk.length) {
 *       const grown = new Uint8Array(at + buffer.length);
 *       grown.set(disk);
 *       disk = grown;
 *     }
 *     disk.set(buffer, at);
 *     return buffer.length;
 *   },
 *   getSize: () => disk.length,
 *   truncate(size) {
 *     const resized = new Uint8Array(size);
 *     resized.set(disk.subarray(0, size));
 *     disk = resized;
 *   },
 *   flush() {},
 *   close() {},
 * };
 * const store = opfsStore(handle);
 * await store.writeAt(3, new Uint8Array([1]));
 * assertEquals(disk, new Uint8Array([0, 0, 0, 1]));
 * ```
 */
export interface SyncAccessHandleLike {
  /** Reads into `buffer` at file offset `at`; the count read. */
  read(buffer: Uint8Array, options: { at: number }): number;
  /** Writes `buffer` at file offset `at`; the count written. */
  write(buffer: Uint8Array, options: { at: number }): number;
  /** The file's length in bytes. */
  getSize(): number;
  /** Sets the file length. */
  truncate(size: number): void;
  /** Makes written data durable. */
  flush(): void;
  /** Releases the handle (and the file's lock). */
  close(): void;
}

/**
 * A {@linkcode ByteStore} over a `FileSystemSyncAccessHandle` (origin
 * private file system, in a dedicated worker).
 *
 * @param handle The open handle.
 * @param owned Whether `close()` closes `handle` (default true: a sync
 * access handle locks its file until closed).
 * @returns The store.
 *
 * @example In a worker
 * ```ts ignore
 * import { openImage, opfsStore } from "jsr:@qcow2/qcow2/web";
 *
 * const root = await navigator.storage.getDirectory();
 * const file = await root.getFileHandle("disk.qcow2");
 * const image = await openImage(opfsStore(await file.createSyncAccessHandle()), { writable: true });
 * await image.write(0, new Uint8Array(512).fill(0xa5));
 * await image.close();
 * ```
 */
export function opfsStore(
  handle: SyncAccessHandleLike,
  owned = true,
): ByteStore {
  return syncStore({
    size: handle.getSize(),
    read: (part, at) => handle.read(part, { at }),
    write: (part, at) => handle.write(part, { at }),
    truncate: (length) => handle.truncate(length),
    flush: () => handle.flush(),
    close: () => {
      if (owned) handle.close();
    },
  });
}
