/**
 * Opening a file by path for writing: a `Deno.FsFile` in Deno, a
 * `node:fs/promises` `FileHandle` in Node and Bun. Kept out of `src/`.
 *
 * @module
 */

import { firstLine, Qcow2Error } from "../src/errors.ts";
import {
  type ByteStore,
  fileHandleStore,
  fsFileStore,
  type ReadWriteFileHandleLike,
} from "../src/io/store.ts";
import { importNode } from "./node_builtin.ts";
import type { StorePiece } from "../src/io/store.ts";
import { writeback } from "./writeback.ts";
import { atPath } from "./fs_errors.ts";

/**
 * Bytes of data written before their writeback is started: small writes
 * are left to gather (a page being written to the disk may make the next
 * write into it wait).
 */
const WRITEBACK_BYTES = 1 << 20;

/**
 * Adds `writeMany` to a store over a Deno file: the pieces are written one
 * after the other on the calling thread (several handles writing at once
 * only contend for the file's lock in the kernel); once a MiB of them is
 * written, the writeback of the range they span is started early where the
 * platform allows it (`writeback.ts`), so that the final `fdatasync` finds
 * little left to do.
 */
function withWriteback(base: ByteStore, path: string): ByteStore {
  const early = writeback(path);
  if (!early) return base;
  let lo = Infinity;
  let hi = 0;
  let pending = 0;
  return {
    get size() {
      return base.size;
    },
    readAt: (position, buffer) => base.readAt(position, buffer),
    writeAt: (position, bytes) => base.writeAt(position, bytes),
    truncate: (length) => base.truncate!(length),
    async flush() {
      await base.flush!();
      lo = Infinity;
      hi = pending = 0;
    },
    async close() {
      early.close();
      await base.close?.();
    },
    async writeMany(pieces: readonly StorePiece[]) {
      for (const { position, bytes } of pieces) {
        await base.writeAt(position, bytes);
        lo = Math.min(lo, position);
        hi = Math.max(hi, position + bytes.length);
        pending += bytes.length;
      }
      if (pending >= WRITEBACK_BYTES) {
        early.start(lo, hi - lo);
        lo = Infinity;
        hi = pending = 0;
      }
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
      return withWriteback(fsFileStore(file, true), path);
    }
    const { open } = await importNode<{
      open(path: string, flags: string): Promise<ReadWriteFileHandleLike>;
    }>("fs/promises");
    const handle = await open(path, "r+");
    return await fileHandleStore(handle, true);
  } catch (e) {
    const name = (e as { code?: string; name?: string })?.code ??
      (e as Error)?.name;
    const cause = atPath(e, path, "write");
    if (READ_ONLY.has(name ?? "")) {
      throw new Qcow2Error(
        "NOT_WRITABLE",
        `Cannot open qcow2 image for writing: '${path}' is read-only (${
          firstLine(e)
        })`,
        { cause, file: path },
      );
    }
    throw cause;
  }
}
