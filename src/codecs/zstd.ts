/**
 * Zstandard (qcow2 compression type 1) on every runtime, by WebAssembly
 * builds of the reference zstd library: `zstddec` decompresses and
 * `@hpcc-js/wasm-zstd` compresses. Each module is loaded, and its
 * WebAssembly compiled, the first time it is needed, so images without zstd
 * clusters do not pay for it.
 *
 * @module
 */

import { zstdFrameLength } from "./zstd_frame.ts";

interface ZstdDecoder {
  decode(input: Uint8Array, uncompressedSize: number): Uint8Array;
}
interface ZstdEncoder {
  compress(input: Uint8Array, level: number): Uint8Array;
}

let decoder: Promise<ZstdDecoder> | undefined;
let encoder: Promise<ZstdEncoder> | undefined;

/** zstd's `ZSTD_CLEVEL_DEFAULT`, the level QEMU compresses at. */
const ZSTD_DEFAULT_LEVEL = 3;

function loadDecoder(): Promise<ZstdDecoder> {
  return decoder ??= import("zstddec").then(async ({ ZSTDDecoder }) => {
    const d = new ZSTDDecoder();
    await d.init();
    return d;
  }).catch((e) => {
    decoder = undefined; // let a later call try again
    throw e;
  });
}

function loadEncoder(): Promise<ZstdEncoder> {
  return encoder ??= import("@hpcc-js/wasm-zstd").then(({ Zstd }) =>
    Zstd.load()
  ).catch((e) => {
    encoder = undefined;
    throw e;
  });
}

/**
 * Decompresses the first zstd frame of `input` into at most `maxOutput`
 * bytes; what follows the frame (padding, the next cluster) is cut off
 * first, since the reference decoder would read it as another frame.
 *
 * Rule: QEMU's `qcow2_zstd_decompress` (block/qcow2-threads.c), which
 * stops at the end of the first frame and accepts only a full cluster.
 *
 * @param input Bytes that start with a zstd frame.
 * @param maxOutput The most bytes the frame may hold (one cluster).
 * @returns The decompressed bytes (a fresh array).
 * @throws {Qcow2Error} `BAD_COMPRESSED_DATA` when the frame is cut short
 *   (from {@linkcode zstdFrameLength}).
 * @throws {Error} When the frame is corrupt or holds more than `maxOutput`
 *   bytes.
 *
 * @example A frame followed by padding
 * ```ts
 * import { zstdDecompress } from "./zstd.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // Magic, descriptor (single segment, 1-byte size), size 3, one last raw block.
 * const frame = [0x28, 0xb5, 0x2f, 0xfd, 0x20, 3, 0x19, 0, 0, 97, 98, 99];
 * const out = await zstdDecompress(new Uint8Array([...frame, 0, 0, 0]), 3);
 * assertEquals(new TextDecoder().decode(out), "abc");
 * ```
 */
export async function zstdDecompress(
  input: Uint8Array,
  maxOutput: number,
): Promise<Uint8Array> {
  const frame = input.subarray(0, zstdFrameLength(input));
  const d = await loadDecoder();
  const out = d.decode(frame, maxOutput);
  // zstddec does not report zstd's errors: a failed ZSTD_decompress (corrupt
  // data, or more than maxOutput bytes) comes back empty.
  if (out.length === 0 && maxOutput > 0) {
    throw new Error("zstd frame is corrupt or holds more than one cluster");
  }
  return out;
}

/**
 * Compresses one cluster as one zstd frame, as QEMU does, at zstd's default
 * level (3). Resolves to `undefined` when the frame would not fit in
 * `maxOutput` bytes (QEMU then writes the cluster uncompressed).
 *
 * Rule: QEMU's `qcow2_zstd_compress` (block/qcow2-threads.c): one frame per
 * cluster, default parameters, `-ENOMEM` when the output does not fit.
 *
 * @param input The cluster's bytes.
 * @param maxOutput The most compressed bytes wanted.
 * @returns The frame, or `undefined`.
 *
 * @example Round trip
 * ```ts
 * import { zstdCompress, zstdDecompress } from "./zstd.ts";
 * import { assert, assertEquals } from "@std/assert";
 *
 * const cluster = new TextEncoder().encode("qcow2 ".repeat(10923)).subarray(0, 65536);
 * const frame = (await zstdCompress(cluster, 65535))!;
 * assert(frame.length < 1000);
 * assertEquals(await zstdDecompress(frame, 65536), cluster);
 * assertEquals(await zstdCompress(cluster, 4), undefined); // does not fit
 * ```
 */
export async function zstdCompress(
  input: Uint8Array,
  maxOutput: number,
): Promise<Uint8Array | undefined> {
  const e = await loadEncoder();
  const frame = e.compress(input, ZSTD_DEFAULT_LEVEL);
  return frame.length <= maxOutput ? frame : undefined;
}
