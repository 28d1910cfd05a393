/**
 * Opening a file by path for writing: a `Deno.FsFile` in Deno, a
 * `node:fs/promises` `FileHandle` in Node and Bun. Kept out of `src/`.
 *
 * @module
 */

import { Qcow2Error } from "../src/errors.ts";
import {
  type ByteStore,
  fileHandleStore,
  fsFileStore,
  type ReadWriteFileHandleLike,
} from "../src/io/store.ts";
import { importNode } from "./node_builtin.ts";
import type { StorePiece } from "../src/io/store.ts";

/** Extra handles that write data in parallel (Deno has no pwrite). */
const WRITERS = 4;

/**
 * Adds `writeMany` to a store over a Deno file: pieces are spread over
 * extra handles of the same file, each seeking and writing asynchronously
 * (on Deno's blocking-I/O threads), so the kernel copies several at once.
 */
async function withWriters(base: ByteStore, path: string): Promise<ByteStore> {
  const handles: Deno.FsFile[] = [];
  try {
    for (let i = 0; i < WRITERS; i++) {
      handles.push(await Deno.open(path, { write: true }));
    }
  } catch (e) {
    handles.forEach((h) => h.close());
    await base.close?.();
    throw e;
  }
  let end = 0;
  return {
    get size() {
      return Math.max(base.size, end);
    },
    readAt: (position, buffer) => base.readAt(position, buffer),
    writeAt: (position, bytes) => base.writeAt(position, bytes),
    async truncate(length) {
      await base.truncate!(length);
      end = length;
    },
    flush: () => base.flush!(),
    async close() {
      handles.forEach((h) => h.close());
      await base.close?.();
    },
    async writeMany(pieces: readonly StorePiece[]) {
      let next = 0;
      const errors: unknown[] = [];
      await Promise.all(handles.map(async (h) => {
        while (next < pieces.length && errors.length === 0) {
          const { position, bytes } = pieces[next++];
          try {
            h.seekSync(position, Deno.SeekMode.Start);
            let done = 0;
            while (done < bytes.length) {
              done += await h.write(bytes.subarray(done));
            }
            end = Math.max(end, position + bytes.length);
          } catch (e) {
            errors.push(e);
          }
        }
      }));
      if (errors.length > 0) throw errors[0];
    },
  };
}

/** Error names and codes that mean the file cannot be written. */
const READ_ONLY = new Set([
  "PermissionDenied",
  "NotCapable",
  "EACCES",
  "EPERM",
  "EROFS",
]);

/**
 * Opens `path` for reading and writing as a {@linkcode ByteStore} that
 * closes the file when closed.
 *
 * @param path The file's path.
 * @returns The store.
 * @throws {Qcow2Error} `NOT_WRITABLE` if the file or the program may not
 * write it; the runtime's error if it does not exist.
 */
export async function openPathWritable(path: string): Promise<ByteStore> {
  try {
    if (typeof Deno !== "undefined" && typeof Deno.open === "function") {
      const file = await Deno.open(path, { read: true, write: true });
      return await withWriters(fsFileStore(file, true), path);
    }
    const { open } = await importNode<{
      open(path: string, flags: string): Promise<ReadWriteFileHandleLike>;
    }>("fs/promises");
    const handle = await open(path, "r+");
    return await fileHandleStore(handle, true);
  } catch (e) {
    const name = (e as { code?: string; name?: string })?.code ??
      (e as Error)?.name;
    if (READ_ONLY.has(name ?? "")) {
      throw new Qcow2Error(
        "NOT_WRITABLE",
        `Cannot open qcow2 image for writing: '${path}' is read-only (${
          (e as Error).message.split("\n")[0]
        })`,
        { cause: e },
      );
    }
    throw e;
  }
}
