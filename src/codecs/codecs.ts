/**
 * Codecs for compressed clusters: the injected interfaces (decompressors
 * for readers, compressors for writers) and the portable defaults, built on
 * well-kept libraries.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import type { CompressionType } from "../qcow2/header.ts";
import { zstdCompress, zstdDecompress } from "./zstd.ts";

export { zstdFrameLength } from "./zstd_frame.ts";

/**
 * Decompresses one compressed cluster. `input` may carry bytes after the end
 * of the compressed stream (sector padding, or the next cluster's data); an
 * implementation ignores them. It resolves to the decompressed bytes, which
 * the caller checks are exactly one cluster: an implementation may stop once
 * it has produced `maxOutput + 1` bytes. It rejects on corrupt input.
 *
 * When the caller passes `into` (exactly `maxOutput` bytes), an
 * implementation may decompress straight into it and resolve to `into`
 * itself, saving an allocation and a copy; it may also ignore it.
 *
 * @example Counting the clusters a read decompresses
 * ```ts
 * import { type Decompressor, openImage, webCodecs } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let clusters = 0;
 * const counting: Decompressor = (input, maxOutput, into) => {
 *   clusters++;
 *   return webCodecs.zlib!(input, maxOutput, into);
 * };
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zlib.qcow2", import.meta.url));
 * const image = await openImage(bytes, { codecs: { zlib: counting } });
 * await image.read(0, new Uint8Array(2 * 65536)); // a compressed cluster, then a plain one
 * assertEquals(clusters, 1);
 * ```
 */
export type Decompressor = (
  input: Uint8Array,
  maxOutput: number,
  into?: Uint8Array,
) => Promise<Uint8Array>;

/**
 * Compresses one cluster for a writer. It resolves to the compressed bytes
 * (a stream that ends by itself: a raw deflate stream, or one zstd frame),
 * or to `undefined` when they would not fit in `maxOutput` bytes: QEMU then
 * writes the cluster uncompressed, and so should the caller. It rejects
 * only on a failure of the codec itself.
 *
 * Rule: QEMU's `qcow2_co_compress` and its callers (block/qcow2-threads.c,
 * block/qcow2.c `qcow2_co_pwritev_compressed_task`, which passes
 * `cluster_size - 1` as `maxOutput`).
 *
 * @example A compressor that refuses every cluster (all stored uncompressed)
 * ```ts
 * import { type Compressor, webCodecs } from "@qcow2/qcow2";
 * import { assert, assertEquals } from "@std/assert";
 *
 * const never: Compressor = () => Promise.resolve(undefined);
 * const cluster = new Uint8Array(65536);
 * assertEquals(await never(cluster, 65535), undefined);
 * const packed = await webCodecs.compress!.zlib!(cluster, 65535);
 * assert(packed !== undefined && packed.length < 100);
 * ```
 */
export type Compressor = (
  input: Uint8Array,
  maxOutput: number,
) => Promise<Uint8Array | undefined>;

/**
 * The compressors a writer uses, by compression type: raw deflate with
 * QEMU's 12-bit window for `zlib`, one frame per cluster for `zstd`.
 *
 * @example Compressing one cluster both ways
 * ```ts
 * import { type Compressors, webCodecs } from "@qcow2/qcow2";
 * import { assert } from "@std/assert";
 *
 * const compressors: Compressors = webCodecs.compress!;
 * const cluster = new TextEncoder().encode("a".repeat(65536));
 * assert((await compressors.zlib!(cluster, 65535))!.length < 200);
 * assert((await compressors.zstd!(cluster, 65535))!.length < 200);
 * ```
 */
export interface Compressors {
  /** Raw deflate, 12-bit window (qcow2 compression type 0, "zlib"). */
  zlib?: Compressor;
  /** Zstandard, one frame per cluster (qcow2 compression type 1). */
  zstd?: Compressor;
  /**
   * Takes back a result of these compressors once the caller is done with
   * it, so that its memory is used again (a writer calls it after writing
   * the bytes; fewer buffers left to the garbage collector).
   */
  release?(bytes: Uint8Array): void;
}

/**
 * The codecs an image reader or writer uses, by compression type:
 * decompressors for reading, and `compress` for writing. A runtime with
 * faster native codecs passes its own (see `nodeCodecs` in `mod.ts`).
 *
 * @example Counting zstd clusters on top of the portable codecs
 * ```ts
 * import { type Codecs, openImage, webCodecs } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * let clusters = 0;
 * const codecs: Codecs = {
 *   ...webCodecs,
 *   zstd: (input, maxOutput, into) => {
 *     clusters++;
 *     return webCodecs.zstd!(input, maxOutput, into);
 *   },
 * };
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zstd.qcow2", import.meta.url));
 * const cluster = new Uint8Array(65536);
 * await (await openImage(bytes, { codecs })).read(0, cluster);
 * assertEquals(new TextDecoder().decode(cluster.subarray(0, 8)), "varied-0");
 * assertEquals(clusters, 1);
 * ```
 */
export interface Codecs {
  /** Raw deflate (qcow2 compression type 0, "zlib"). */
  zlib?: Decompressor;
  /** Zstandard (qcow2 compression type 1). */
  zstd?: Decompressor;
  /** Compressors for writing compressed clusters. */
  compress?: Compressors;
}

/**
 * The codecs available everywhere, from well-kept libraries: raw deflate by
 * pako (zlib ported to JavaScript), zstd by WebAssembly builds of the
 * reference zstd library (`zstddec` to decompress, `@hpcc-js/wasm-zstd` to
 * compress). Both decompressors stop at the end of the compressed stream
 * and ignore what follows it, and write at most one cluster. (The browsers'
 * `DecompressionStream("deflate-raw")` cannot serve: it fails when bytes
 * follow the end of the stream, as they do in qcow2, where compressed
 * clusters are packed back to back.)
 *
 * @example Inflating a deflate-raw stream that has bytes after its end
 * ```ts
 * import { webCodecs } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const cluster = new TextEncoder().encode("hello ".repeat(100));
 * const stream = new Blob([cluster]).stream()
 *   .pipeThrough(new CompressionStream("deflate-raw"));
 * const packed = new Uint8Array(await new Response(stream).arrayBuffer());
 * const padded = new Uint8Array(packed.length + 7); // as in an image
 * padded.set(packed);
 * assertEquals(await webCodecs.zlib!(padded, cluster.length), cluster);
 * ```
 */
export const webCodecs: Codecs = {
  zlib: async (input, maxOutput, into) =>
    (deflate ?? await loadDeflate()).inflateRaw(input, maxOutput, into),
  zstd: (input, maxOutput) => zstdDecompress(input, maxOutput),
  compress: {
    zlib: async (input, maxOutput) =>
      (deflate ?? await loadDeflate()).deflateRaw12(input, maxOutput),
    zstd: zstdCompress,
  },
};

/** pako's deflate, once loaded: only images with zlib clusters need it. */
let deflate: typeof import("./deflate.ts") | undefined;

/** Loads `./deflate.ts` (and pako) on first use, not at start-up. */
async function loadDeflate(): Promise<typeof import("./deflate.ts")> {
  return deflate ??= await import("./deflate.ts");
}

/**
 * Decompresses one cluster with the codec for `type`, checking that exactly
 * `clusterSize` bytes come out.
 *
 * @param codecs The available decompressors.
 * @param type The image's compression type.
 * @param input The compressed bytes (with any trailing bytes).
 * @param clusterSize The cluster size.
 * @param where A description of the cluster, for error messages (a
 *   function, so that it is built only when there is an error).
 * @returns The cluster's bytes.
 */
export async function decompressCluster(
  codecs: Codecs,
  type: CompressionType,
  input: Uint8Array,
  clusterSize: number,
  where: string | (() => string),
  into?: Uint8Array,
): Promise<Uint8Array> {
  const codec = codecs[type];
  if (!codec) {
    throw new Qcow2Error(
      "UNSUPPORTED_COMPRESSION",
      `Cannot read qcow2 image: it uses ${type} compression and no ${type} decompressor is available in this runtime; pass one in the 'codecs' option`,
    );
  }
  let out: Uint8Array;
  try {
    out = await codec(input, clusterSize, into);
  } catch (e) {
    if (e instanceof Qcow2Error) throw e;
    throw new Qcow2Error(
      "BAD_COMPRESSED_DATA",
      `Cannot read qcow2 image: the ${type} data of ${
        describe(where)
      } is corrupt (${(e as Error)?.message ?? e})`,
      { cause: e },
    );
  }
  if (out.length !== clusterSize) {
    throw new Qcow2Error(
      "BAD_COMPRESSED_DATA",
      `Cannot read qcow2 image: the ${type} data of ${
        describe(where)
      } decompresses to ${
        out.length > clusterSize ? "more" : out.length
      } bytes instead of one cluster (${clusterSize})`,
    );
  }
  return out;
}

function describe(where: string | (() => string)): string {
  return typeof where === "string" ? where : where();
}
