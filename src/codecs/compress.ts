/**
 * Compressors for writing compressed clusters: the injected interface. The
 * core has none of its own: `mod.ts` passes `node:zlib`'s (see
 * `native/compress.ts`), or a pool of workers running them.
 *
 * What QEMU reads (`qcow2_co_decompress`, `qcow2-threads.c`): for zlib, one
 * raw deflate stream with a 12-bit window (QEMU inflates with `windowBits
 * -12`; a 32 KiB window, as `CompressionStream("deflate-raw")` uses, gives
 * clusters QEMU cannot read); for zstd, one frame. QEMU itself deflates at
 * level 6 with memLevel 9 and compresses zstd at level 3.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import type { CompressionType } from "../qcow2/header.ts";

/**
 * Compresses one cluster (the last one of an image zero-padded to a whole
 * cluster) and resolves to the compressed bytes. It must be deterministic:
 * the same input gives the same output, whichever thread runs it, since the
 * writer's output must not depend on timing. The caller keeps `cluster`
 * unchanged until the promise settles, and does not change the result.
 *
 * @example A compressor that counts its calls
 * ```ts
 * import { type Compressor, convertToQcow2, memoryTarget, nodeCompressors } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let calls = 0;
 * const counting: Compressor = (cluster) => {
 *   calls++;
 *   return nodeCompressors.zlib!(cluster);
 * };
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zlib.qcow2", import.meta.url));
 * await convertToQcow2(bytes, memoryTarget(), { compress: true, compressors: { zlib: counting } });
 * assertEquals(calls, 10); // the clusters that are not all zeros
 * ```
 */
export type Compressor = (cluster: Uint8Array) => Promise<Uint8Array>;

/**
 * The compressors a writer uses, by compression type.
 *
 * @example Only zlib
 * ```ts
 * import { type Compressors, nodeCompressors } from "@qcow2/qcow2";
 * import { assert } from "@std/assert";
 *
 * const compressors: Compressors = { zlib: nodeCompressors.zlib };
 * assert(compressors.zstd === undefined);
 * ```
 */
export interface Compressors {
  /** Raw deflate with a 12-bit window (compression type 0, "zlib"). */
  zlib?: Compressor;
  /** One Zstandard frame (compression type 1). */
  zstd?: Compressor;
}

/**
 * The compressor for `type`, or a `Qcow2Error` saying none is available.
 *
 * @param compressors The available compressors.
 * @param type The image's compression type.
 * @returns The compressor.
 * @throws {Qcow2Error} `UNSUPPORTED_COMPRESSION` if there is none for `type`.
 */
export function compressorFor(
  compressors: Compressors | undefined,
  type: CompressionType,
): Compressor {
  const compressor = compressors?.[type];
  if (!compressor) {
    throw new Qcow2Error(
      "UNSUPPORTED_COMPRESSION",
      `Cannot write compressed clusters: no ${type} compressor is available in this runtime; pass one in the 'compressors' option`,
    );
  }
  return compressor;
}
