/**
 * Compressors from `node:zlib` (Deno, Node, Bun): raw deflate with a 12-bit
 * window at QEMU's settings, and zstd (one frame per cluster at QEMU's level,
 * no checksum) where the runtime has it. They run on the calling thread;
 * `compress_pool.ts` runs the same code on workers.
 *
 * @module
 */

import type { Compressors } from "../src/codecs/codecs.ts";
import { Qcow2Error } from "../src/errors.ts";
import { importNode } from "./node_builtin.ts";
import type { ZlibHandle, ZlibStream } from "./zlib_handle.ts";

/** The parts of `node:zlib` the compressors use. */
export interface ZlibCompressModule {
  /** One-shot raw deflate. */
  deflateRawSync(input: Uint8Array, options: object): Uint8Array;
  /** A raw deflate stream (its `_handle` is reused, where it has one). */
  createDeflateRaw?(options: object): unknown;
  /** A zstd compression stream (its `_handle` is reused, where it has one). */
  createZstdCompress?(options: object): unknown;
  /** One-shot zstd compression (Deno 2.4+, Node 22.15+). */
  zstdCompressSync?(input: Uint8Array, options: object): Uint8Array;
  /** zstd parameter names, and deflate's flush. */
  constants: {
    ZSTD_c_compressionLevel?: number;
    ZSTD_c_checksumFlag?: number;
    Z_FINISH?: number;
    ZSTD_e_end?: number;
  };
}

/**
 * How QEMU compresses (`qcow2_zlib_compress`, `qcow2_zstd_compress`): zlib
 * `deflateInit2(6, Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY)`; zstd at its
 * default level 3.
 */
export interface CompressSettings {
  /**
   * Deflate level, 1 to 9. Default: {@linkcode DEFAULT_ZLIB_LEVEL}, the
   * level at which this runtime's deflate makes clusters the size QEMU's
   * level 6 makes.
   */
  zlibLevel?: number;
  /** zstd level (default 3, QEMU's). */
  zstdLevel?: number;
}

/**
 * The default deflate level: QEMU's 6 where `node:zlib` is zlib (Node,
 * Bun), 9 in Deno, whose `node:zlib` is another deflate: at level 6 its
 * clusters came out 2.6% larger than zlib's level 6 (150 MiB of binaries in
 * 64 KiB clusters), at level 9 0.1% smaller, at zlib's speed. qemu-img's
 * output is the yardstick for size, so Deno gets 9.
 */
export const DEFAULT_ZLIB_LEVEL: number = "Deno" in globalThis ? 9 : 6;

/**
 * Compresses `cluster` with `zlib` as QEMU does. Runs in workers too (from
 * its source text), so it refers to nothing outside itself.
 */
export function compressWith(
  zlib: ZlibCompressModule,
  type: "zlib" | "zstd",
  cluster: Uint8Array,
  settings: CompressSettings,
): Uint8Array {
  if (type === "zlib") {
    return zlib.deflateRawSync(cluster, {
      level: settings.zlibLevel ?? ("Deno" in globalThis ? 9 : 6),
      windowBits: 12,
      memLevel: 9,
    });
  }
  if (typeof zlib.zstdCompressSync !== "function") {
    throw new Error("this runtime's node:zlib has no zstd");
  }
  const params: Record<number, number> = {};
  if (zlib.constants.ZSTD_c_compressionLevel !== undefined) {
    params[zlib.constants.ZSTD_c_compressionLevel] = settings.zstdLevel ?? 3;
  }
  if (zlib.constants.ZSTD_c_checksumFlag !== undefined) {
    params[zlib.constants.ZSTD_c_checksumFlag] = 0;
  }
  return zlib.zstdCompressSync(cluster, {
    params,
    pledgedSrcSize: cluster.length,
  });
}

/**
 * A cluster compressor over `zlib` with QEMU's settings that keeps one
 * deflate stream and one zstd stream and resets them between clusters,
 * where the runtime's streams have a `_handle` (Deno, Node): a new
 * compression state for every cluster, as the one-shot calls make, grows a
 * conversion's memory by tens of MiB per thread (bench/README.md). Deflate
 * gives `compressWith`'s bytes; a zstd frame of a reused stream does not
 * carry the content size in its header (QEMU's zstd decompression streams,
 * needing none). Elsewhere `compressWith` is called. Answers undefined for a
 * cluster whose compressed form exceeds `maxOutput` bytes; with `into` (at
 * least `maxOutput + 1` bytes) the result is a view of `into` where the
 * stream wrote there, else bytes of their own. Runs in workers too (from
 * its source text), so it refers to nothing outside itself.
 */
export function makeClusterCompress(
  zlib: ZlibCompressModule,
  settings: CompressSettings,
  compress: typeof compressWith,
): (
  type: "zlib" | "zstd",
  cluster: Uint8Array,
  maxOutput: number,
  into?: Uint8Array,
) => Uint8Array | undefined {
  let failed: string | undefined;
  let out = new Uint8Array(0);
  /** One stream's handle, reset after each cluster; undefined: none. */
  const reusable = (make: () => ZlibStream | undefined, finish?: number) => {
    let handle: ZlibHandle | undefined | null;
    let state: Uint32Array | undefined;
    return (cluster: Uint8Array, maxOutput: number, into?: Uint8Array) => {
      if (handle === undefined) {
        handle = null;
        try {
          const stream = make();
          if (stream?._handle && stream._writeState && finish !== undefined) {
            handle = stream._handle;
            state = stream._writeState;
            handle.onerror = (message) => failed = message;
          }
        } catch {
          handle = null;
        }
      }
      if (!handle) return undefined;
      if (out.length < maxOutput + 1) out = new Uint8Array(maxOutput + 1);
      const target = into && into.length > maxOutput ? into : out;
      failed = undefined;
      let produced: number;
      try {
        handle.writeSync(
          finish!,
          cluster,
          0,
          cluster.length,
          target,
          0,
          maxOutput + 1,
        );
        if (failed !== undefined) throw new Error(failed);
        produced = maxOutput + 1 - state![0];
        handle.reset();
      } catch {
        // A runtime whose handle works otherwise: one-shot from now on.
        handle = null;
        return undefined;
      }
      // All of the room used: the stream may not have ended; too large anyway.
      if (produced > maxOutput) return null;
      return target === out
        ? out.slice(0, produced)
        : target.subarray(0, produced);
    };
  };
  const deflate = reusable(
    () =>
      zlib.createDeflateRaw?.({
        level: settings.zlibLevel ?? ("Deno" in globalThis ? 9 : 6),
        windowBits: 12,
        memLevel: 9,
      }) as ZlibStream | undefined,
    zlib.constants.Z_FINISH,
  );
  const zstdParams: Record<number, number> = {};
  if (zlib.constants.ZSTD_c_compressionLevel !== undefined) {
    zstdParams[zlib.constants.ZSTD_c_compressionLevel] = settings.zstdLevel ??
      3;
  }
  if (zlib.constants.ZSTD_c_checksumFlag !== undefined) {
    zstdParams[zlib.constants.ZSTD_c_checksumFlag] = 0;
  }
  const zstd = reusable(
    () =>
      zlib.createZstdCompress?.({ params: zstdParams }) as
        | ZlibStream
        | undefined,
    zlib.constants.ZSTD_e_end,
  );
  return (type, cluster, maxOutput, into) => {
    const packed = (type === "zlib" ? deflate : zstd)(cluster, maxOutput, into);
    if (packed === null) return undefined;
    if (packed !== undefined) return packed;
    // No reusable stream here: one-shot.
    const once = compress(zlib, type, cluster, settings);
    return once.length <= maxOutput ? once : undefined;
  };
}

let loading: Promise<ZlibCompressModule> | undefined;
const load = () => loading ??= importNode<ZlibCompressModule>("zlib");

/**
 * Compressors backed by `node:zlib` on the calling thread, with QEMU's
 * settings unless `settings` says otherwise.
 *
 * @param settings Compression levels.
 * @returns The compressors.
 * @throws {Qcow2Error} `UNSUPPORTED_COMPRESSION` (from the zstd compressor)
 * where `node:zlib` has no zstd.
 *
 * @example A cluster compressed as QEMU reads it
 * ```ts
 * import { makeNodeCompressors } from "@qcow2/qcow2";
 * import { inflateRawSync } from "node:zlib";
 * import { assertEquals } from "@std/assert";
 *
 * const cluster = new TextEncoder().encode("qcow2 ".repeat(10923)).subarray(0, 65536);
 * const packed = (await makeNodeCompressors().zlib!(cluster, 65535))!;
 * assertEquals(new Uint8Array(inflateRawSync(packed, { windowBits: 12 })), cluster);
 * ```
 */
export function makeNodeCompressors(
  settings: CompressSettings = {},
): Compressors {
  let run: ReturnType<typeof makeClusterCompress> | undefined;
  const compressor = async () =>
    run ??= makeClusterCompress(await load(), settings, compressWith);
  return {
    zlib: async (cluster, maxOutput) =>
      (await compressor())("zlib", cluster, maxOutput),
    zstd: async (cluster, maxOutput) => {
      const zlib = await load();
      if (typeof zlib.zstdCompressSync !== "function") {
        throw new Qcow2Error(
          "UNSUPPORTED_COMPRESSION",
          "Cannot write zstd clusters: this runtime's node:zlib has no zstd (Node.js 22.15 or later has it); pass a zstd compressor in the 'compressors' option",
        );
      }
      return (await compressor())("zstd", cluster, maxOutput);
    },
  };
}

/**
 * `node:zlib` compressors with QEMU's settings, on the calling thread.
 *
 * @example
 * ```ts
 * import { nodeCompressors } from "@qcow2/qcow2";
 * import { assert } from "@std/assert";
 *
 * const packed = await nodeCompressors.zstd!(new Uint8Array(65536), 65535);
 * assert(packed !== undefined && packed.length < 100);
 * ```
 */
export const nodeCompressors: Compressors = makeNodeCompressors();
