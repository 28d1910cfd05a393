/**
 * Where converted raw bytes go: a seekable file (holes are skipped) or a
 * plain stream (holes are written as zeros).
 *
 * @module
 */

import { SEEK_END, SEEK_START, type SeekableWriter } from "./source.ts";

/**
 * A destination for raw guest bytes, written in increasing offset order. What
 * is never written reads as zeros once {@linkcode RawSink.finish} has run.
 *
 * `convert` builds one over a file or a stream, and takes one of your own
 * as it is: a sink can send the bytes anywhere, and learns where the holes
 * are from the offsets it is given.
 *
 * @example A sink of your own: the raw image in memory
 * ```ts
 * import { convert, type RawSink } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const raw = new Uint8Array(8 * 1024 * 1024); // room enough, zero-filled
 * let size = 0;
 * const sink: RawSink = {
 *   writeAt(position, bytes) {
 *     raw.set(bytes, position);
 *     return Promise.resolve();
 *   },
 *   finish(length) {
 *     size = length;
 *     return Promise.resolve();
 *   },
 * };
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * await convert(bytes, sink);
 * assertEquals(size, 4 * 1024 * 1024);
 * assertEquals([raw[0], raw[0xff00], raw[0x10000]], [0x55, 0x66, 0]);
 * ```
 */
export interface RawSink {
  /**
   * Writes `bytes` at guest offset `position` (never before an earlier
   * write's end). `bytes` may be reused once the promise settles: copy what
   * you keep.
   */
  writeAt(position: number, bytes: Uint8Array): Promise<void>;
  /** Ends the output at `size` bytes. */
  finish(size: number): Promise<void>;
}

/**
 * The sink for a conversion's output: `dst` itself if it is a sink, else one
 * over the file or the stream.
 *
 * @param dst A sink, a seekable file, or a stream.
 * @param signal Stops the zeros a stream gets for holes (see
 *   {@linkcode streamSink}).
 * @returns The sink.
 */
export function toRawSink(
  dst: RawSink | SeekableWriter | WritableStream<Uint8Array>,
  signal?: AbortSignal,
): Promise<RawSink> {
  // (`in` tests rather than `instanceof WritableStream`: in Deno the latter
  // loads the streams implementation, about 2 ms.)
  if ("writeAt" in dst) return Promise.resolve(dst);
  return "seek" in dst
    ? fileSink(dst)
    : Promise.resolve(streamSink(dst, signal));
}

/**
 * A sink over a seekable file: empties it first, seeks over holes, and sets
 * the final length with `truncate`, so holes stay sparse.
 *
 * Writes are synchronous where the file has `writeSync` and `seekSync`
 * (no hand-off to another thread), unless `options.synchronous` says
 * otherwise: `false`, or a function that answers `false` at the time of a
 * write. Then that write runs on the runtime's I/O threads, and the calling
 * thread may do other work meanwhile (decompression, network).
 *
 * @param file A file shaped like `Deno.FsFile`, open for writing.
 * @param options `synchronous`: `false` (or a function asked before each
 *   write) to use `write`/`seek` even where `writeSync`/`seekSync` exist.
 * @returns The sink.
 *
 * @example Asynchronous writes, holes left unwritten
 * ```ts
 * import { fileSink } from "./sink.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const path = await Deno.makeTempFile();
 * using file = await Deno.open(path, { write: true });
 * let calls = 0;
 * const sink = await fileSink(file, { synchronous: () => calls++ === 0 });
 * await sink.writeAt(0, new Uint8Array([9])); // synchronous
 * await sink.writeAt(4096, new Uint8Array([1, 2, 3])); // asynchronous
 * await sink.finish(8192);
 * const bytes = await Deno.readFile(path);
 * assertEquals([bytes.length, bytes[0], bytes[1], bytes[4097]], [8192, 9, 0, 2]);
 * await Deno.remove(path);
 * ```
 */
export async function fileSink(
  file: SeekableWriter,
  options: { synchronous?: boolean | (() => boolean) } = {},
): Promise<RawSink> {
  // Truncating a file that has data makes its close flush (ext4): skip it
  // when the file is already empty.
  if (await file.seek(0, SEEK_END) !== 0) await file.truncate(0);
  let pos = -1;
  const { writeSync, seekSync } = file;
  const wanted = options.synchronous ?? true;
  const synchronous = !writeSync || !seekSync || wanted === false
    ? () => false
    : wanted === true
    ? () => true
    : wanted;
  // Writes never overlap (each awaits the one before), so the two kinds
  // may alternate on one file position.
  const writeAsync = async (position: number, bytes: Uint8Array) => {
    if (position !== pos) await file.seek(position, SEEK_START);
    let done = 0;
    while (done < bytes.length) {
      done += await file.write(bytes.subarray(done));
    }
    pos = position + bytes.length;
  };
  return {
    writeAt(position: number, bytes: Uint8Array): Promise<void> {
      if (!synchronous()) return writeAsync(position, bytes);
      // Synchronous writes: no hand-off to another thread and no copy of
      // the buffer (faster in Deno: bench/README.md, "Figures behind
      // design choices").
      try {
        if (position !== pos) seekSync!.call(file, position, SEEK_START);
        let done = 0;
        while (done < bytes.length) {
          done += writeSync!.call(file, bytes.subarray(done));
        }
        pos = position + bytes.length;
        return Promise.resolve();
      } catch (e) {
        return Promise.reject(e);
      }
    },
    async finish(size: number): Promise<void> {
      await file.truncate(size);
    },
  };
}

const ZEROS = new Uint8Array(1024 * 1024);

/**
 * A sink over a `WritableStream`: every byte is written, holes as zeros. The
 * stream is not closed.
 *
 * @param stream Where the raw image is streamed, such as `Deno.stdout.writable`.
 * @param signal Checked before each MiB of zeros written for a hole, so
 *   that a conversion aborted in a long hole (the end of a sparse disk)
 *   stops there, rejecting with the signal's reason.
 * @returns The sink.
 */
export function streamSink(
  stream: WritableStream<Uint8Array>,
  signal?: AbortSignal,
): RawSink {
  const writer = stream.getWriter();
  let pos = 0;
  const zeroTo = async (end: number) => {
    while (pos < end) {
      signal?.throwIfAborted();
      const n = Math.min(ZEROS.length, end - pos);
      await writer.write(ZEROS.subarray(0, n));
      pos += n;
    }
  };
  return {
    async writeAt(position: number, bytes: Uint8Array): Promise<void> {
      await zeroTo(position);
      await writer.write(bytes);
      pos += bytes.length;
    },
    async finish(size: number): Promise<void> {
      await zeroTo(size);
      writer.releaseLock();
    },
  };
}
