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

import { type Codecs, zstdFrameLength } from "../src/codecs.ts";
import { Qcow2Error } from "../src/errors.ts";
import { importNode, type NodeZlib } from "./node_builtin.ts";

let loading: Promise<NodeZlib> | undefined;
const load = () => loading ??= importNode<NodeZlib>("zlib");

/**
 * Options for one cluster: at most `maxOutput` bytes, in one output chunk
 * (node:zlib's default 16 KiB chunks cost about 40% more on 64 KiB clusters).
 */
const once = (maxOutput: number) => ({
  maxOutputLength: maxOutput,
  chunkSize: Math.max(maxOutput, 64),
});

/**
 * Decompressors backed by `node:zlib`: raw deflate everywhere, zstd where the
 * runtime's `node:zlib` has it (Deno 2.4+, Node 22.15+; elsewhere a zstd
 * image fails with `UNSUPPORTED_COMPRESSION`). zstd input is cut at the end
 * of its frame first, since trailing padding makes `node:zlib` fail. Both
 * run synchronously: in Deno the async variants decompress on the main
 * thread anyway, through Node's stream machinery, and cost more.
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
  zlib: async (input, maxOutput) =>
    (await load()).inflateRawSync(input, once(maxOutput)),
  zstd: async (input, maxOutput) => {
    const zlib = await load();
    if (typeof zlib.zstdDecompressSync !== "function") {
      throw new Qcow2Error(
        "UNSUPPORTED_COMPRESSION",
        "Cannot read qcow2 image: it uses zstd compression and this runtime's node:zlib has no zstd (Node.js 22.15 or later has it); pass a zstd decompressor in the 'codecs' option",
      );
    }
    return zlib.zstdDecompressSync(
      input.subarray(0, zstdFrameLength(input)),
      once(maxOutput),
    );
  },
};
