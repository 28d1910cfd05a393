/**
 * Native decompressors from `node:zlib`, which Deno, Node and Bun provide:
 * faster than web streams, and the only source of zstd. Kept out of `src/`
 * so the core stays runtime-agnostic; `mod.ts` wires them in.
 *
 * @module
 */

import * as zlib from "node:zlib";
import { type Codecs, zstdFrameLength } from "../src/codecs.ts";

type Callback = (error: Error | null, result: Uint8Array) => void;

function promisify(
  run: (input: Uint8Array, options: object, callback: Callback) => void,
): (input: Uint8Array, maxOutput: number) => Promise<Uint8Array> {
  return (input, maxOutput) =>
    new Promise((resolve, reject) =>
      run(input, { maxOutputLength: maxOutput }, (error, result) => {
        if (error) reject(error);
        else resolve(result);
      })
    );
}

const inflateRaw = promisify(zlib.inflateRaw as never);
// zstd runs synchronously: measured faster here than the async variant,
// whose thread hand-off costs more than a 64 KiB frame takes to decode.
const zstdDecompress = typeof zlib.zstdDecompressSync === "function"
  ? (input: Uint8Array, maxOutput: number): Promise<Uint8Array> => {
    try {
      return Promise.resolve(
        zlib.zstdDecompressSync(input, { maxOutputLength: maxOutput }),
      );
    } catch (e) {
      return Promise.reject(e);
    }
  }
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
