/**
 * Decompressors for compressed clusters: the injected interface, a portable
 * default built on web streams, and the zstd frame walker both need.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import type { CompressionType } from "../qcow2/header.ts";
import { inflateRaw } from "./inflate.ts";

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
 * The decompressors an image reader uses, by compression type. A runtime
 * with faster native codecs passes its own (see `nodeCodecs` in `mod.ts`).
 *
 * @example The portable codecs, with zstd added
 * ```ts
 * import { type Codecs, nodeCodecs, openImage, Qcow2Error, webCodecs } from "@qcow2/qcow2";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zstd.qcow2", import.meta.url));
 * const cluster = new Uint8Array(65536);
 * const portable = await openImage(bytes, { codecs: webCodecs });
 * const error = await assertRejects(() => portable.read(0, cluster), Qcow2Error);
 * assertEquals(error.code, "UNSUPPORTED_COMPRESSION");
 * const codecs: Codecs = { ...webCodecs, zstd: nodeCodecs.zstd };
 * await (await openImage(bytes, { codecs })).read(0, cluster);
 * assertEquals(new TextDecoder().decode(cluster.subarray(0, 8)), "varied-0");
 * ```
 */
export interface Codecs {
  /** Raw deflate (qcow2 compression type 0, "zlib"). */
  zlib?: Decompressor;
  /** Zstandard (qcow2 compression type 1). */
  zstd?: Decompressor;
}

const ZSTD_MAGIC = 0xfd2fb528;

/**
 * The length of the first zstd frame in `input` (with any skippable frames
 * before it), so that what follows it (padding, or the next compressed
 * cluster, which QEMU packs right behind) can be cut before decoding.
 *
 * @param input Bytes that start with a zstd frame.
 * @returns The byte length up to the end of the first frame.
 * @throws {Qcow2Error} `BAD_COMPRESSED_DATA` if a frame is cut short or
 * malformed.
 *
 * @example A frame followed by padding
 * ```ts
 * import { zstdFrameLength } from "./codecs.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // Magic, descriptor (single segment, 1-byte size), size 3, one last raw block.
 * const frame = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 3, 0x19, 0, 0, 97, 98, 99];
 * assertEquals(zstdFrameLength(new Uint8Array([...frame, 0, 0, 0])), 12);
 * ```
 */
export function zstdFrameLength(input: Uint8Array): number {
  const view = new DataView(input.buffer, input.byteOffset, input.byteLength);
  const fail = (why: string) =>
    new Qcow2Error(
      "BAD_COMPRESSED_DATA",
      `Cannot decompress zstd cluster: ${why}`,
    );
  let pos = 0;
  while (pos + 4 <= input.length) {
    const magic = view.getUint32(pos, true);
    if ((magic & 0xfffffff0) === 0x184d2a50) {
      if (pos + 8 > input.length) throw fail("skippable frame cut short");
      pos += 8 + view.getUint32(pos + 4, true);
      if (pos > input.length) throw fail("skippable frame cut short");
      continue;
    }
    if (magic !== ZSTD_MAGIC) break;
    pos += 4;
    if (pos >= input.length) throw fail("frame header cut short");
    const fhd = input[pos++];
    const fcsFlag = fhd >> 6;
    const singleSegment = (fhd >> 5) & 1;
    const checksum = (fhd >> 2) & 1;
    const dictFlag = fhd & 3;
    if (fhd & 8) throw fail("reserved bit set in frame header");
    pos += singleSegment ? 0 : 1;
    pos += [0, 1, 2, 4][dictFlag];
    pos += [singleSegment ? 1 : 0, 2, 4, 8][fcsFlag];
    for (;;) {
      if (pos + 3 > input.length) throw fail("block header cut short");
      const bh = input[pos] | (input[pos + 1] << 8) | (input[pos + 2] << 16);
      pos += 3;
      const last = bh & 1;
      const type = (bh >> 1) & 3;
      const size = bh >>> 3;
      if (type === 3) throw fail("reserved block type");
      pos += type === 1 ? 1 : size;
      if (pos > input.length) throw fail("block cut short");
      if (last) break;
    }
    pos += checksum ? 4 : 0;
    if (pos > input.length) throw fail("checksum cut short");
    // One frame holds one cluster; what follows may be the next cluster.
    return pos;
  }
  throw fail("no zstd frame found");
}

/**
 * The decompressors available everywhere: raw deflate by the pure TypeScript
 * {@linkcode inflateRaw}, and no zstd. (`DecompressionStream("deflate-raw")`
 * cannot serve: Deno's and Chromium's fail when bytes follow the end of the
 * stream, as they do in qcow2, where compressed clusters are packed back to
 * back.)
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
 * assertEquals(webCodecs.zstd, undefined); // pass your own for zstd
 * ```
 */
export const webCodecs: Codecs = {
  zlib: (input, maxOutput) => {
    try {
      return Promise.resolve(inflateRaw(input, maxOutput));
    } catch (e) {
      return Promise.reject(e);
    }
  },
};

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
