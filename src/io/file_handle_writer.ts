/**
 * An output adapter for Node-style `FileHandle`s (`node:fs/promises`), which
 * write at a position instead of seeking: the writing twin of
 * `fileHandleSource`.
 *
 * @module
 */

import { SEEK_END, SEEK_START, type SeekableWriter } from "./source.ts";

/** `Deno.SeekMode.Current`, for objects shaped like `Deno.FsFile`. */
const SEEK_CURRENT = 1;

/**
 * The subset of a Node `fs/promises` `FileHandle` needed to write:
 * positional `write`, `truncate` and `stat`. Deno, Node and Bun all provide
 * it.
 *
 * @example A handle of your own, into memory
 * ```ts
 * import { convert, fileHandleWriter, type WritableFileHandleLike } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const disk = new Uint8Array(8 * 1024 * 1024); // room enough
 * let size = 0;
 * const handle: WritableFileHandleLike = {
 *   write(buffer, offset, length, position) {
 *     disk.set(buffer.subarray(offset, offset + length), position);
 *     size = Math.max(size, position + length);
 *     return Promise.resolve({ bytesWritten: length });
 *   },
 *   truncate(len = 0) {
 *     disk.fill(0, len);
 *     size = len;
 *     return Promise.resolve();
 *   },
 *   stat: () => Promise.resolve({ size }),
 * };
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/snap.qcow2", import.meta.url));
 * const summary = await convert(bytes, fileHandleWriter(handle));
 * assertEquals(size, summary.virtualSize);
 * assertEquals(disk[0], 0xa5); // the active state's first cluster
 * ```
 */
export interface WritableFileHandleLike {
  /** Writes `length` bytes of `buffer` from `offset` at file `position`. */
  write(
    buffer: Uint8Array,
    offset: number,
    length: number,
    position: number,
  ): Promise<{ bytesWritten: number }>;
  /** Sets the file length. */
  truncate(len?: number): Promise<void>;
  /** The file's metadata; only `size` is used. */
  stat(): Promise<{ size: number | bigint }>;
}

/**
 * A {@linkcode SeekableWriter} over a Node-style `FileHandle` open for
 * writing, so that `convert` writes a sparse raw image through it: the
 * position is kept here and every write is positional (`pwrite`). The handle
 * is not closed.
 *
 * @param handle A `FileHandle` open for writing (from `node:fs/promises`
 * `open(path, "w")`).
 * @returns A writer that writes to `handle`.
 *
 * @example Converting to a file through `node:fs/promises`
 * ```ts
 * import { open, mkdtemp, rm, stat } from "node:fs/promises";
 * import { tmpdir } from "node:os";
 * import { join } from "node:path";
 * import { convert, fileHandleSource, fileHandleWriter } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = await mkdtemp(join(tmpdir(), "qcow2-"));
 * const input = await open(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const output = await open(join(dir, "disk.raw"), "w");
 * try {
 *   await convert(await fileHandleSource(input), fileHandleWriter(output));
 * } finally {
 *   await input.close();
 *   await output.close();
 * }
 * assertEquals((await stat(join(dir, "disk.raw"))).size, 4 * 1024 * 1024);
 * await rm(dir, { recursive: true });
 * ```
 */
export function fileHandleWriter(
  handle: WritableFileHandleLike,
): SeekableWriter {
  let position = 0;
  return {
    async write(p: Uint8Array): Promise<number> {
      const { bytesWritten } = await handle.write(p, 0, p.length, position);
      position += bytesWritten;
      return bytesWritten;
    },
    async seek(offset: number, whence: number): Promise<number> {
      const base = whence === SEEK_START
        ? 0
        : whence === SEEK_CURRENT
        ? position
        : whence === SEEK_END
        ? Number((await handle.stat()).size)
        : NaN;
      const next = base + offset;
      if (!Number.isSafeInteger(next) || next < 0) {
        throw new RangeError(
          `Cannot seek to ${offset} from ${whence}: the position must be a non-negative integer`,
        );
      }
      position = next;
      return position;
    },
    truncate(len?: number): Promise<void> {
      return handle.truncate(len);
    },
  };
}
