/**
 * Raw deflate (qcow2 compression type 0, "zlib") on every runtime, by pako,
 * the JavaScript port of zlib: inflating one compressed cluster, and
 * deflating one with the 12-bit window QEMU requires.
 *
 * pako's low-level stream API is used as zlib's C API is in QEMU
 * (`qcow2_zlib_decompress` and `qcow2_zlib_compress` in block/qcow2-threads.c):
 * one `Z_FINISH` call into an output buffer of fixed size, so inflating stops
 * at the end of the deflate stream (what follows, sector padding or the next
 * cluster, is never read) and never writes more than the buffer holds.
 *
 * @module
 */

import {
  Z_BUF_ERROR,
  Z_DEFAULT_STRATEGY,
  Z_FINISH,
  Z_OK,
  Z_STREAM_END,
  zlibDeflate,
  zlibDeflateInit2,
  zlibDeflateReset,
  zlibInflate,
  zlibInflateInit2,
  zlibInflateReset,
  ZStream,
} from "pako";

/** zlib's `Z_DEFLATED`, the only method. */
const Z_DEFLATED = 8;
/** zlib's `Z_DEFAULT_COMPRESSION` (level 6), as QEMU asks for. */
const Z_DEFAULT_COMPRESSION = -1;
/** Raw deflate (negative) with a 4 KiB window: QEMU's `-12`. */
const QEMU_WINDOW_BITS = -12;
/** zlib's `memLevel` QEMU passes. */
const QEMU_MEM_LEVEL = 9;

/** One inflate stream, reset for each cluster (its window is reused). */
let inflater: ZStream | undefined;
/** One deflate stream, reset for each cluster. */
let deflater: ZStream | undefined;
/** Output space for one cluster and one byte more, reused. */
let scratch = new Uint8Array(0);
/** Output space for one compressed cluster, reused. */
let packed = new Uint8Array(0);

/**
 * Inflates one raw deflate stream of at most `maxOutput` bytes. Reading
 * stops at the end of the stream; bytes after it are ignored. At most
 * `maxOutput` bytes are written; a stream that holds more resolves to a
 * buffer of `maxOutput + 1` bytes, which callers that want exactly one
 * cluster refuse (see `decompressCluster`).
 *
 * Rule: QEMU's `qcow2_zlib_decompress` (inflateInit2 with window bits -12,
 * one `inflate(Z_FINISH)` into one cluster; `Z_STREAM_END`, or `Z_BUF_ERROR`
 * with the output full, is success). A 15-bit window is set here, which
 * also reads streams made with smaller windows.
 *
 * @param input The compressed bytes, with anything after the stream.
 * @param maxOutput The most bytes the stream may hold (one cluster).
 * @param into Optional output of exactly `maxOutput` bytes to inflate into;
 *   when the stream fills it exactly, `into` itself is returned.
 * @returns The inflated bytes (a fresh copy, or `into`).
 * @throws {Error} With zlib's message (such as "invalid distance too far
 *   back"), when the data is corrupt or ends before the stream does.
 *
 * @example A stream followed by padding
 * ```ts
 * import { inflateRaw } from "./deflate.ts";
 * import { assertEquals } from "@std/assert";
 *
 * // "abc" in a stored block, then three bytes of sector padding.
 * const input = new Uint8Array([1, 3, 0, 0xfc, 0xff, 97, 98, 99, 0, 0, 0]);
 * assertEquals(new TextDecoder().decode(inflateRaw(input, 3)), "abc");
 * ```
 */
export function inflateRaw(
  input: Uint8Array,
  maxOutput: number,
  into?: Uint8Array,
): Uint8Array {
  let s = inflater;
  if (!s) {
    s = new ZStream();
    const status = zlibInflateInit2(s, -15);
    if (status !== Z_OK) throw new Error(`inflateInit2 failed (${status})`);
    inflater = s;
  } else {
    zlibInflateReset(s);
  }
  const direct = into !== undefined && into.length === maxOutput;
  let out: Uint8Array;
  if (direct) {
    out = into;
  } else {
    if (scratch.length < maxOutput + 1) scratch = new Uint8Array(maxOutput + 1);
    out = scratch.subarray(0, maxOutput + 1);
  }
  const status = finish(s, zlibInflate, input, out);
  const produced = s.next_out;
  if (status === Z_STREAM_END) {
    if (!direct) return out.slice(0, produced);
    return produced === maxOutput ? into : into.subarray(0, produced);
  }
  if (s.avail_out === 0 && (status === Z_BUF_ERROR || status === Z_OK)) {
    // The output is full and the stream goes on: more than maxOutput bytes.
    return direct ? new Uint8Array(maxOutput + 1) : out.slice(0, produced);
  }
  if (status === Z_BUF_ERROR || status === Z_OK) {
    throw new Error("input ends before the deflate stream does");
  }
  throw new Error(s.msg || `inflate failed (${status})`);
}

const EMPTY = new Uint8Array(0);

/**
 * Deflates one cluster as QEMU does: raw deflate, a 12-bit (4 KiB) window,
 * zlib's default level and `memLevel` 9. Resolves to `undefined` when the
 * result would not fit in `maxOutput` bytes (QEMU then writes the cluster
 * uncompressed).
 *
 * Rule: QEMU's `qcow2_zlib_compress` (deflateInit2(Z_DEFAULT_COMPRESSION,
 * Z_DEFLATED, -12, 9, Z_DEFAULT_STRATEGY), one `deflate(Z_FINISH)`); its
 * caller `qcow2_co_pwritev_compressed_task` passes `cluster_size - 1` as
 * the room. The bytes are pako's: they may differ from those of the zlib
 * build QEMU links, but every zlib inflates them.
 *
 * @param input The cluster's bytes.
 * @param maxOutput The most compressed bytes wanted.
 * @returns The compressed bytes (a fresh array), or `undefined`.
 *
 * @example Round trip
 * ```ts
 * import { deflateRaw12, inflateRaw } from "./deflate.ts";
 * import { assert, assertEquals } from "@std/assert";
 *
 * const cluster = new TextEncoder().encode("qcow2 ".repeat(10923)).subarray(0, 65536);
 * const packed = deflateRaw12(cluster, 65535)!;
 * assert(packed.length < 1000);
 * assertEquals(inflateRaw(packed, 65536), cluster);
 * assertEquals(deflateRaw12(cluster, 10), undefined); // does not fit
 * ```
 */
export function deflateRaw12(
  input: Uint8Array,
  maxOutput: number,
): Uint8Array | undefined {
  let s = deflater;
  if (!s) {
    s = new ZStream();
    const status = zlibDeflateInit2(
      s,
      Z_DEFAULT_COMPRESSION,
      Z_DEFLATED,
      QEMU_WINDOW_BITS,
      QEMU_MEM_LEVEL,
      Z_DEFAULT_STRATEGY,
    );
    if (status !== Z_OK) throw new Error(`deflateInit2 failed (${status})`);
    deflater = s;
  } else {
    zlibDeflateReset(s);
  }
  if (packed.length < maxOutput) packed = new Uint8Array(maxOutput);
  const out = packed.subarray(0, maxOutput);
  const status = finish(s, zlibDeflate, input, out);
  const produced = s.next_out;
  if (status === Z_STREAM_END) return out.slice(0, produced);
  if (status === Z_OK || status === Z_BUF_ERROR) {
    // Out of room: the stream is left unfinished; reset before next use.
    return undefined;
  }
  throw new Error(s.msg || `deflate failed (${status})`);
}

/**
 * Runs `step` (inflate or deflate) once with `Z_FINISH` over all of `input`
 * into `out`, then drops the stream's references to both (so a large input
 * is not kept alive); `next_out` and `avail_out` are left for the caller.
 *
 * @returns zlib's status.
 */
function finish(
  s: ZStream,
  step: typeof zlibInflate,
  input: Uint8Array,
  out: Uint8Array,
): number {
  s.input = input;
  s.next_in = 0;
  s.avail_in = input.length;
  s.output = out as Uint8Array<ArrayBuffer>;
  s.next_out = 0;
  s.avail_out = out.length;
  const status = step(s, Z_FINISH);
  s.input = EMPTY;
  s.output = EMPTY;
  return status;
}
