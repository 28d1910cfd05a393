/**
 * A host file's holes and allocated size, as QEMU's file-posix driver learns
 * them: `lseek(SEEK_DATA)`/`lseek(SEEK_HOLE)` (`find_allocation`) and
 * `fstat`'s `st_blocks`. Deno has no SEEK_DATA, so the holes come through
 * FFI from the C library (Linux only), and only when the program runs with
 * `--allow-ffi`; otherwise a file reads as all data, as QEMU reads one where
 * `lseek` fails. Kept out of `src/` (it uses `Deno.*`).
 *
 * @module
 */

import type { HostAllocation, HostRun } from "../src/ops/map.ts";
import { atPath } from "./fs_errors.ts";
import { libcLoader } from "./libc.ts";

const SEEK_DATA = 3;
const SEEK_HOLE = 4;
const ENXIO = 6;

const SYMBOLS = {
  open: { parameters: ["buffer", "i32"], result: "i32" },
  close: { parameters: ["i32"], result: "i32" },
  lseek: { parameters: ["i32", "i64", "i32"], result: "i64" },
  __errno_location: { parameters: [], result: "pointer" },
} as const;

/** The C library (opened once), or null where FFI is not allowed or not on Linux. */
const loadLibc = libcLoader(SYMBOLS);

/** A {@linkcode HostAllocation} that holds a file descriptor until closed. */
export interface HostFile extends HostAllocation {
  /** Releases the file descriptor, if one was opened. */
  close(): void;
}

/**
 * What the file system tells about the file at `path`.
 *
 * @param path The file's path.
 * @returns Its allocated size, and its holes where FFI is allowed (else
 * `at` answers `undefined`: unknown, read as data).
 */
export function hostFile(path: string): HostFile {
  let stat: Deno.FileInfo;
  try {
    stat = Deno.statSync(path);
  } catch (e) {
    throw atPath(e, path);
  }
  const allocatedBytes = (stat.blocks ?? Math.ceil(stat.size / 512)) * 512;
  const lib = loadLibc();
  const fd = lib
    ? lib.symbols.open(new TextEncoder().encode(path + "\0"), 0)
    : -1;
  if (!lib || fd < 0) {
    return { allocatedBytes, at: () => undefined, close() {} };
  }
  let open = true;
  const seek = (
    position: number,
    whence: number,
  ): number | "enxio" | "error" => {
    const r = Number(lib.symbols.lseek(fd, BigInt(position), whence));
    if (r >= 0) return r;
    const errno = lib.symbols.__errno_location();
    const code = errno ? new Deno.UnsafePointerView(errno).getInt32() : 0;
    return code === ENXIO ? "enxio" : "error";
  };
  return {
    allocatedBytes,
    at(position: number): HostRun | null | undefined {
      if (!open) return undefined;
      // QEMU's find_allocation.
      const data = seek(position, SEEK_DATA);
      if (data === "enxio") return null;
      if (data === "error" || data < position) return undefined;
      if (data > position) return { data: false, end: data };
      const hole = seek(position, SEEK_HOLE);
      if (typeof hole !== "number" || hole <= position) return undefined;
      return { data: true, end: hole };
    },
    close() {
      if (open) lib.symbols.close(fd);
      open = false;
    },
  };
}
