/**
 * A positional reader over a `Deno.FsFile` that uses Deno's synchronous
 * `seekSync` and `readSync`: the fastest way to read a local file in Deno
 * (figures in bench/README.md, "Figures behind design choices"). A seek and
 * its read run with nothing in between, so
 * concurrent callers are safe. Kept out of `src/` (it uses `Deno.*`).
 *
 * @module
 */

import type { OpenedFile } from "../src/open.ts";
import { readSyncAt } from "../src/io/store.ts";
import { atPath } from "./fs_errors.ts";

/** An {@linkcode OpenedFile} whose `close` is always there. */
type ClosableFile = OpenedFile & { close(): void };

/**
 * Opens `path` for reading as a {@linkcode ClosableFile}: a regular file or
 * a block device (its size found by a seek to its end, as QEMU's
 * `raw_getlength` does).
 *
 * @param path The file's path.
 * @returns The open file.
 * @throws {Error} If it is a pipe, a socket or a character device (it
 *   cannot be read at any offset).
 */
export async function openDenoFile(path: string): Promise<ClosableFile> {
  const file = await Deno.open(path, { read: true }).catch((e) =>
    Promise.reject(atPath(e, path))
  );
  try {
    const info = await file.stat();
    if (info.isFifo || info.isSocket || info.isCharDevice) {
      // Its size reads 0: it would read as an empty disk.
      throw Object.assign(
        new Error(
          `Cannot read '${path}': it is a pipe, a socket or a character device: an image is read at any offset; give a file or a block device`,
        ),
        { path }, // (as node:fs errors name theirs: said once)
      );
    }
    // A block device's size is where its end is (stat says 0).
    const size = info.isBlockDevice
      ? await file.seek(0, Deno.SeekMode.End)
      : info.size;
    return denoFileSource(file, size);
  } catch (e) {
    file.close();
    throw e;
  }
}

/**
 * A {@linkcode ClosableFile} over an open `Deno.FsFile` of `size` bytes.
 *
 * @param file The open file; closing the source closes it.
 * @param size Its length in bytes.
 * @returns The source.
 */
export function denoFileSource(
  file: Deno.FsFile,
  size: number,
): ClosableFile {
  return {
    size,
    readAt(position: number, buffer: Uint8Array): Promise<number> {
      return readSyncAt(
        (part, at) => {
          file.seekSync(at, Deno.SeekMode.Start);
          return file.readSync(part);
        },
        position,
        buffer,
      );
    },
    close: () => file.close(),
  };
}
