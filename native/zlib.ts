/**
 * Native decompressors from `node:zlib`, which Deno, Node and Bun provide:
 * faster than web streams, and the only source of zstd. Kept out of `src/`
 * so the core stays runtime-agnostic; `mod.ts` wires them in.
 *
 * @module
 */

import * as zlib from "node:zlib";
import { type Codecs, zstdFrameLength } from "../src/codecs.ts";

/** Runs a synchronous decompressor, turning a throw into a rejection. */
function settled(
  run: (input: Uint8Array, options: { maxOutputLength: number }) => Uint8Array,
): (input: Uint8Array, maxOutput: number) => Promise<Uint8Array> {
  return (input, maxOutput) => {
    try {
      return Promise.resolve(run(input, { maxOutputLength: maxOutput }));
    } catch (e) {
      return Promise.reject(e);
    }
  };
}

// Both run synchronously: in Deno the async variants decompress on the main
// thread anyway, through Node's stream machinery, and cost more (measured:
// 64 KiB zlib clusters about 130 us sync against 210 us async).
const inflateRaw = settled(zlib.inflateRawSync);
const zstdDecompress = typeof zlib.zstdDecompressSync === "function"
  ? settled(zlib.zstdDecompressSync)
  : undefined;

/**
 * Decompressors backed by `node:zlib`: raw deflate everywhere, zstd where the
 * runtime's `node:zlib` has it (Deno 2.4+, Node 22.15+). zstd input is cut
 * at the end of its frames first, since trailing padding makes `node:zlib`
 * fail.
 *
 * @example Using the native codecs explicitly
 * ```ts
 * import { nodeCodecs } from "@qcow2/qcow2";
 * import { assert } from "@std/assert";
 *
 * assert(nodeCodecs.zlib !== undefined);
 * ```
 */
export const nodeCodecs: Codecs = {
  zlib: inflateRaw,
  zstd: zstdDecompress &&
    ((input, maxOutput) =>
      zstdDecompress(input.subarray(0, zstdFrameLength(input)), maxOutput)),
};
