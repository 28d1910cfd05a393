/**
 * The C library through FFI, for the calls Deno lacks (`lseek` with
 * SEEK_DATA/SEEK_HOLE in `holes.ts`, `sync_file_range` in `writeback.ts`):
 * Linux only, and only when the program runs with `--allow-ffi`. Kept out
 * of `src/` (it uses `Deno.*`).
 *
 * @module
 */

/**
 * Opens the C library with `symbols`.
 *
 * @param symbols The functions to bind.
 * @returns The library, or null where FFI is not allowed, not on Linux, or
 * the library or a symbol is missing.
 */
export function openLibc<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): Deno.DynamicLibrary<S> | null {
  try {
    if (
      Deno.build.os === "linux" &&
      Deno.permissions.querySync({ name: "ffi" }).state === "granted"
    ) {
      return Deno.dlopen("libc.so.6", symbols);
    }
  } catch {
    // No FFI here: callers do without.
  }
  return null;
}
