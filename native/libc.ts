/**
 * The C library through FFI, for the calls Deno lacks (`lseek` with
 * SEEK_DATA/SEEK_HOLE in `holes.ts`, `sync_file_range` in `writeback.ts`):
 * Linux only, and only when the program runs with `--allow-ffi`. Kept out
 * of `src/` (it uses `Deno.*`).
 *
 * @module
 */

/**
 * What opens the C library with `symbols`, on its first call only.
 *
 * @param symbols The functions to bind.
 * @returns A function giving the library, or null where FFI is not allowed,
 * not on Linux, or the library or a symbol is missing.
 */
export function libcLoader<S extends Deno.ForeignLibraryInterface>(
  symbols: S,
): () => Deno.DynamicLibrary<S> | null {
  let libc: Deno.DynamicLibrary<S> | null | undefined;
  return () => {
    if (libc === undefined) libc = openLibc(symbols);
    return libc;
  };
}

/** The C library with `symbols`, or null (see {@linkcode libcLoader}). */
function openLibc<S extends Deno.ForeignLibraryInterface>(
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
