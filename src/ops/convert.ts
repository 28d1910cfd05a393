/**
 * Converting an image to raw: walk its extents, write the data, leave holes
 * where the guest reads zeros.
 *
 * @module
 */

import type { DiskImage } from "../disk.ts";
import type { RawSink } from "../io/sink.ts";
import { type StartJob, withJobs } from "../jobs.ts";

/**
 * Progress of a conversion, reported after each chunk.
 *
 * @example Following a conversion to its end
 * ```ts
 * import { convert, type ConvertProgress } from "@qcow2/qcow2";
 * import { assert, assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zlib.qcow2", import.meta.url));
 * const seen: ConvertProgress[] = [];
 * await convert(bytes, new WritableStream(), { onProgress: (p) => seen.push(p) });
 * assert(seen.every((p, i) => i === 0 || p.done >= seen[i - 1].done));
 * assertEquals(seen.at(-1), { done: 2 * 1024 * 1024, total: 2 * 1024 * 1024 });
 * ```
 */
export interface ConvertProgress {
  /** Guest bytes processed so far. */
  done: number;
  /** The virtual size: guest bytes to process in all. */
  total: number;
}

/**
 * Options for converting an image to raw.
 *
 * @example Fully allocated output, and a conversion cancelled
 * ```ts
 * import { convert } from "@qcow2/qcow2";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const sparse = await convert(bytes, new WritableStream()); // all-zero 4 KiB blocks are holes
 * assertEquals(sparse.bytesWritten, 65536);
 * const full = await convert(bytes, new WritableStream(), { sparseSize: 0, chunkSize: 65536 });
 * assertEquals(full.bytesWritten, full.virtualSize); // zeros written too
 * const signal = AbortSignal.abort(new Error("cancelled"));
 * await assertRejects(() => convert(bytes, new WritableStream(), { signal }), Error, "cancelled");
 * ```
 */
export interface ConvertOptions {
  /**
   * A run of zero bytes at least this long, aligned to it, is left as a hole
   * instead of being written, like `qemu-img convert -S`. A multiple of 512;
   * default 4096; 0 writes every byte, zeros included (fully allocated).
   */
  sparseSize?: number;
  /** Called as the conversion advances. */
  onProgress?: (progress: ConvertProgress) => void;
  /** Stops the conversion; it then rejects with the signal's reason. */
  signal?: AbortSignal;
  /** Bytes read per request (default 1 MiB). */
  chunkSize?: number;
  /** Chunks kept in flight, read or being written, at once (default 4). */
  parallel?: number;
  /**
   * Makes the buffers chunks are read into (at most `parallel` of them,
   * each `chunkSize` bytes, reused): such as `workerCodecs().allocate`,
   * whose workers then decompress straight into them. Default: plain
   * `Uint8Array`s.
   */
  allocate?: (length: number) => Uint8Array;
}

/**
 * What a conversion did.
 *
 * @example Converting an image into memory
 * ```ts
 * import { convert, type ConvertSummary } from "@qcow2/qcow2";
 * import { assert, assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zlib.qcow2", import.meta.url));
 * const chunks: Uint8Array[] = [];
 * const sink = new WritableStream<Uint8Array>({ write: (c) => void chunks.push(c.slice()) });
 * const summary: ConvertSummary = await convert(bytes, sink);
 * assertEquals(summary.virtualSize, 2 * 1024 * 1024);
 * assertEquals(chunks.reduce((n, c) => n + c.length, 0), summary.virtualSize);
 * assertEquals(summary.bytesWritten, 512000); // bytes of 4 KiB blocks that are not all zero
 * assertEquals(summary.bytesWritten + summary.bytesSkipped, summary.virtualSize);
 * assert(summary.durationMs >= 0);
 * ```
 */
export interface ConvertSummary {
  /** The virtual size: the length of the raw output. */
  virtualSize: number;
  /** Bytes written to the output. */
  bytesWritten: number;
  /** Bytes left as holes (never written). */
  bytesSkipped: number;
  /** Wall time in milliseconds. */
  durationMs: number;
}

/** Largest `-S` qemu-img accepts (16 MiB). */
const MAX_SPARSE = 16 * 1024 * 1024;

/**
 * The `sparseSize` option of `convert` and `convertToQcow2`, checked.
 *
 * @param value The option (default 4096).
 * @returns The sparse size in bytes (0: nothing is skipped).
 * @throws {RangeError} If it is not a multiple of 512 from 0 to 16 MiB.
 *
 * @ignore
 */
export function sparseSize(value: number | undefined): number {
  const sparse = value ?? 4096;
  if (
    !Number.isSafeInteger(sparse) || sparse < 0 || sparse % 512 !== 0 ||
    sparse > MAX_SPARSE
  ) {
    throw new RangeError(
      `Invalid sparse size ${sparse}: it must be a multiple of 512 from 0 to 16 MiB`,
    );
  }
  return sparse;
}
// 4 chunks of 1 MiB: as fast as larger ones, with less peak memory (figures
// in bench/README.md, "Figures behind design choices").
const DEFAULT_CHUNK = 1024 * 1024;
/** Bytes converted between turns given to the event loop. */
export const YIELD_EVERY: number = 128 * 1024 * 1024;
/**
 * Bytes of L2 tables to cache when an image is opened only to be converted:
 * a conversion visits each table once, in order, so a few suffice, and a
 * smaller cache touches less fresh memory.
 */
export const CONVERT_L2_CACHE_BYTES = 1024 * 1024;
/** Microtask turns to wait for a chunk buffer before making another. */
const SETTLE_TURNS = 256;

/**
 * Writes the guest view of `image` to `sink` as a raw disk image.
 *
 * @param image An open image.
 * @param sink Where the raw bytes go.
 * @param options Sparseness, progress, abort.
 * @returns What was written and skipped.
 * @throws {RangeError} If `sparseSize` is not a multiple of 512 from 0 to
 * 16 MiB.
 */
export async function convertImage(
  image: DiskImage,
  sink: RawSink,
  options: ConvertOptions = {},
): Promise<ConvertSummary> {
  const began = performance.now();
  const sparse = sparseSize(options.sparseSize);
  const chunk = Math.max(
    sparse || 512,
    Math.floor((options.chunkSize ?? DEFAULT_CHUNK) / (sparse || 512)) *
      (sparse || 512),
  );
  const parallel = Math.max(1, options.parallel ?? 4);
  const { signal, onProgress } = options;
  const allocate = options.allocate ?? ((n: number) => new Uint8Array(n));
  const total = image.size;
  let bytesWritten = 0;
  let done = 0;

  // Chunks go through read (and decompression), then write, in order; up
  // to `parallel` chunks are somewhere in between, so reads of later chunks
  // overlap the writes of earlier ones. The chunk buffers are reused, so
  // memory stays at `parallel` chunks. Every chunk's promise is started
  // under `withJobs` (its rejection handled at once; all settled before
  // the caller closes the files): see src/jobs.ts.
  const free: Uint8Array[] = [];
  const pending: Promise<void>[] = [];
  let lastWrite: Promise<void> = Promise.resolve();
  let sinceYield = 0;
  const readAhead = async (
    start: StartJob,
    from: number,
    length: number,
  ) => {
    for (let p = from; p < from + length; p += chunk) {
      while (pending.length >= parallel) await pending.shift();
      // Reads and writes may all be synchronous: let the event loop run
      // now and then, so that a signal or a timer is not held up.
      if ((sinceYield += chunk) >= YIELD_EVERY) {
        sinceYield = 0;
        await nextTask();
      }
      signal?.throwIfAborted();
      // Synchronous files settle a chunk within a few turns of the
      // microtask queue: wait that long for a buffer to come back before
      // making another, so one buffer serves where reads and writes do not
      // overlap (memory touched for the first time is slow: a page fault per
      // 4 KiB). Asynchronous files still get `parallel` chunks in flight.
      if (free.length === 0 && pending.length > 0) {
        await settledWithin(lastWrite, SETTLE_TURNS);
      }
      const buffer = free.pop() ?? allocate(chunk);
      if (buffer.length < chunk) {
        throw new RangeError(
          `convert: allocate(${chunk}) returned ${buffer.length} bytes`,
        );
      }
      const view = buffer.subarray(0, Math.min(chunk, from + length - p));
      const previous = lastWrite;
      // Its own read settles first, whatever happens to earlier chunks.
      const written = image.read(p, view).then(() => previous).then(
        async () => {
          bytesWritten += await writeNonZero(sink, p, view, sparse);
          free.push(buffer);
          done = p + view.length;
          onProgress?.({ done, total });
        },
      );
      start(written);
      lastWrite = written;
      pending.push(written);
    }
  };

  signal?.throwIfAborted();
  await withJobs(async (start) => {
    let runStart = 0;
    let runEnd = 0;
    for await (const e of image.extents()) {
      const hasData = e.kind === "data" || e.kind === "compressed" ||
        sparse === 0;
      if (hasData && runEnd === e.start && runEnd - runStart < chunk) {
        runEnd += e.length;
        continue;
      }
      if (runEnd > runStart) {
        await readAhead(start, runStart, runEnd - runStart);
      }
      runStart = runEnd = hasData ? e.start : e.start + e.length;
      if (hasData) runEnd = e.start + e.length;
    }
    if (runEnd > runStart) await readAhead(start, runStart, runEnd - runStart);
    while (pending.length > 0) await pending.shift();
    signal?.throwIfAborted();
  });
  await sink.finish(total);
  onProgress?.({ done: total, total });
  return {
    virtualSize: total,
    bytesWritten,
    bytesSkipped: total - bytesWritten,
    durationMs: performance.now() - began,
  };
}

/**
 * Writes `bytes` at guest offset `start`, skipping aligned `sparse`-sized
 * blocks that are all zero. Returns the count written.
 */
async function writeNonZero(
  sink: RawSink,
  start: number,
  bytes: Uint8Array,
  sparse: number,
): Promise<number> {
  if (sparse === 0) {
    await sink.writeAt(start, bytes);
    return bytes.length;
  }
  let written = 0;
  let runFrom = -1;
  const words = bytes.byteOffset % 4 === 0
    ? new Uint32Array(bytes.buffer, bytes.byteOffset, bytes.length >>> 2)
    : undefined;
  // Blocks are aligned to guest offsets, as a file system's would be.
  let p = 0;
  while (p < bytes.length) {
    const blockEnd = Math.min(
      bytes.length,
      p + sparse - ((start + p) % sparse),
    );
    const zero = isZero(bytes, words, p, blockEnd);
    if (!zero && runFrom < 0) runFrom = p;
    if (zero && runFrom >= 0) {
      await sink.writeAt(start + runFrom, bytes.subarray(runFrom, p));
      written += p - runFrom;
      runFrom = -1;
    }
    p = blockEnd;
  }
  if (runFrom >= 0) {
    await sink.writeAt(start + runFrom, bytes.subarray(runFrom));
    written += bytes.length - runFrom;
  }
  return written;
}

/** Whether `bytes[from, to)` are all zero, by 32-bit words where aligned. */
function isZero(
  bytes: Uint8Array,
  words: Uint32Array | undefined,
  from: number,
  to: number,
): boolean {
  let i = from;
  if (words) {
    while (i < to && i % 4 !== 0) if (bytes[i++] !== 0) return false;
    const wordEnd = to >>> 2;
    for (let w = i >>> 2; w < wordEnd; w++) if (words[w] !== 0) return false;
    i = Math.max(i, wordEnd << 2);
  }
  for (; i < to; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * Resolves once `promise` has settled or `turns` turns of the microtask
 * queue have passed, whichever is first; never rejects.
 */
async function settledWithin(
  promise: Promise<unknown>,
  turns: number,
): Promise<void> {
  let settled = false;
  const done = () => settled = true;
  promise.then(done, done);
  for (let i = 0; i < turns && !settled; i++) await undefined;
}

/**
 * Resolves on a later turn of the event loop, after pending timers, I/O
 * callbacks and signal handlers have had their turn. A message to oneself
 * rather than `setTimeout`: in Deno the first `setTimeout` loads the timers
 * implementation (about 18 ms, against 2 ms for `MessageChannel`).
 */
export function nextTask(): Promise<void> {
  if (typeof MessageChannel !== "function") {
    return new Promise((resolve) => setTimeout(resolve, 0));
  }
  return new Promise((resolve) => {
    const { port1, port2 } = new MessageChannel();
    port1.onmessage = () => {
      port1.close();
      resolve();
    };
    port2.postMessage(null);
  });
}
