/**
 * Native decompressors from `node:zlib`, which Deno, Node and Bun provide:
 * faster than the portable inflate, and the only source of zstd. Kept out of
 * `src/` so the core stays runtime-agnostic; `mod.ts` wires them in.
 * `node:zlib` is loaded on the first compressed cluster (see
 * `node_builtin.ts`): an image without compressed clusters does not pay for
 * Node compatibility.
 *
 * @module
 */

import {
  type Codecs,
  webCodecs,
  zstdFrameLength,
} from "../src/codecs/codecs.ts";
import { importNode } from "./node_builtin.ts";
import {
  type ClusterDecompressor,
  clusterDecompressor,
  type ZlibModule,
} from "./zlib_handle.ts";

let loading: Promise<ClusterDecompressor> | undefined;
const load = () =>
  loading ??= importNode<ZlibModule>("zlib").then(clusterDecompressor);

/** Output space for one cluster and one byte more, reused. */
let scratch = new Uint8Array(0);

/** Decompresses one cluster on this thread, into `into` when given. */
async function decompress(
  type: "zlib" | "zstd",
  input: Uint8Array,
  maxOutput: number,
  into?: Uint8Array,
): Promise<Uint8Array> {
  const run = await load();
  if (scratch.length < maxOutput + 1) scratch = new Uint8Array(maxOutput + 1);
  const n = run(type, input, scratch, maxOutput);
  if (n === maxOutput && into?.length === maxOutput) {
    into.set(scratch.subarray(0, n));
    return into;
  }
  return scratch.slice(0, n); // the caller refuses a wrong length
}

/**
 * Codecs backed by `node:zlib`: raw deflate everywhere, and zstd where the
 * runtime's `node:zlib` has it (Deno 2.4+, Node 22.15+, Bun). Where it has
 * not (Node 20), zstd falls back to the portable WebAssembly decoder of
 * {@linkcode webCodecs}, so zstd images read on every runtime. zstd input
 * is cut at the end of its frame first, since trailing padding makes
 * `node:zlib` fail. They run synchronously on the calling thread, with one
 * reused handle (see `zlib_handle.ts`). `compress` is the portable one of
 * {@linkcode webCodecs}.
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
  zlib: (input, maxOutput, into) => decompress("zlib", input, maxOutput, into),
  zstd: async (input, maxOutput, into) => {
    const zlib = await importNode<ZlibModule>("zlib");
    if (typeof zlib.zstdDecompressSync !== "function") {
      return webCodecs.zstd!(input, maxOutput, into);
    }
    return decompress(
      "zstd",
      input.subarray(0, zstdFrameLength(input)),
      maxOutput,
      into,
    );
  },
  compress: webCodecs.compress,
};

/**
 * Whether this runtime's `node:zlib` decompresses zstd (Deno 2.4+, Node
 * 22.15+, Bun); where it does not, {@linkcode nodeCodecs} uses the portable
 * decoder.
 *
 * @returns `true` when `node:zlib` has `zstdDecompressSync`.
 *
 * @example
 * ```ts
 * import { hasNativeZstd } from "./zlib.ts";
 * import { assert } from "@std/assert";
 *
 * assert(await hasNativeZstd()); // Deno 2.4 and later
 * ```
 */
export async function hasNativeZstd(): Promise<boolean> {
  const zlib = await importNode<ZlibModule>("zlib");
  return typeof zlib.zstdDecompressSync === "function";
}
