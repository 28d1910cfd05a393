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
  settled,
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
 * only contend for the file's lock in the kernel), without a seek where a
 * piece starts where the last one ended; once a MiB of them is written,
 * the writeback of the range they span is started early where the platform
 * allows it (`writeback.ts`), so that the final `fdatasync` finds little
 * left to do.
 */
function withWriteback(
  file: Deno.FsFile,
  base: ByteStore,
  path: string,
): ByteStore {
  const early = writeback(path);
  if (!early) return base;
  let end = 0; // the end of the last piece written
  let at = -1; // the file's position, where known
  let lo = Infinity;
  let hi = 0;
  let pending = 0;
  return {
    get size() {
      return Math.max(base.size, end);
    },
    readAt(position, buffer) {
      at = -1;
      return base.readAt(position, buffer);
    },
    writeAt(position, bytes) {
      at = -1;
      return base.writeAt(position, bytes);
    },
    async truncate(length) {
      await base.truncate!(length);
      end = length;
    },
    async flush() {
      await base.flush!();
      lo = Infinity;
      hi = pending = 0;
    },
    async close() {
      early.close();
      await base.close?.();
    },
    writeMany(pieces: readonly StorePiece[]) {
      return settled(() => {
        for (const { position, bytes } of pieces) {
          if (position !== at) file.seekSync(position, Deno.SeekMode.Start);
          at = -1; // unknown if the write fails
          let done = 0;
          while (done < bytes.length) {
            done += file.writeSync(bytes.subarray(done));
          }
          at = position + bytes.length;
          end = Math.max(end, at);
          lo = Math.min(lo, position);
          hi = Math.max(hi, at);
          pending += bytes.length;
        }
        if (pending >= WRITEBACK_BYTES) {
          early.start(lo, hi - lo);
          lo = Infinity;
          hi = pending = 0;
        }
      });
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
      return withWriteback(file, fsFileStore(file, true), path);
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
