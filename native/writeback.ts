/**
 * Early writeback of written ranges: Linux `sync_file_range(2)` with
 * `SYNC_FILE_RANGE_WRITE` starts writing a range of a file's page cache to
 * the disk without waiting for it and without flushing the disk's cache, so
 * the disk works while the program goes on writing and the final
 * `fdatasync` has little left to do. A hint only: it promises nothing about
 * durability or order (`fdatasync` still does). Deno has no such call, so it
 * comes through FFI from the C library (Linux only), and only when the
 * program runs with `--allow-ffi`; otherwise there is none. Kept out of
 * `src/` (it uses `Deno.*`).
 *
 * @module
 */

import { libcLoader } from "./libc.ts";

const SYNC_FILE_RANGE_WRITE = 2;
const O_RDONLY_CLOEXEC = 0o2000000;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  sync_file_range: { parameters: ["i32", "i64", "i64", "u32"], result: "i32" },
} as const;

/** The C library (opened once), or null where FFI is not allowed or not on Linux. */
const loadLibc = libcLoader(SYMBOLS);

/** Starts the writeback of ranges of one file, until closed. */
export interface Writeback {
  /**
   * Starts writing bytes `[position, position + length)` to the disk.
   * Returns whether the kernel took the request; a failure (say, a file
   * system without it) leaves the writeback to the kernel, as without it.
   */
  start(position: number, length: number): boolean;
  /** Releases the file descriptor. */
  close(): void;
}

/**
 * Early writeback for the file at `path`, where the platform and the
 * program's permissions allow it.
 *
 * @param path The file's path.
 * @returns The writeback, or `undefined` where there is none (not Linux,
 * no `--allow-ffi`, or the file cannot be opened).
 */
export function writeback(path: string): Writeback | undefined {
  const lib = loadLibc();
  if (!lib) return undefined;
  const fd = lib.symbols.open(
    new TextEncoder().encode(path + "\0"),
    O_RDONLY_CLOEXEC,
  );
  if (fd < 0) return undefined;
  let open = true;
  return {
    start(position: number, length: number): boolean {
      if (!open || length <= 0) return false;
      return lib.symbols.sync_file_range(
        fd,
        BigInt(position),
        BigInt(length),
        SYNC_FILE_RANGE_WRITE,
      ) === 0;
    },
    close(): void {
      if (open) lib.symbols.close(fd);
      open = false;
    },
  };
}
