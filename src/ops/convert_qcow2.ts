/**
 * Converting any image to qcow2, as `qemu-img convert -O qcow2` does: which
 * guest clusters become data, compressed data, zero clusters or nothing
 * (QEMU `convert_iteration_sectors`, `convert_co_write`,
 * `is_allocated_sectors_min`), then the sequential writer.
 *
 * @module
 */

import type { DiskImage } from "../disk.ts";
import type { NewLuks } from "../crypto/luks_create.ts";
import { Qcow2Error } from "../errors.ts";
import type { Codecs, Compressor } from "../codecs/codecs.ts";
import {
  type CreateOptions,
  resolveCreateOptions,
  type ResolvedCreateOptions,
} from "../qcow2/create_options.ts";
import {
  type ClusterKind,
  layoutMetadata,
  Placer,
} from "../qcow2/placement.ts";
import {
  type ClusterWrite,
  geometryOf,
  type ImageTarget,
  type PlannedRun,
  Qcow2Writer,
  writeStream,
} from "../qcow2/writer.ts";
import { type ConvertProgress, nextTask, sparseSize } from "./convert.ts";
import { finishPreallocated } from "./create.ts";
import { fileSink, streamSink } from "../io/sink.ts";
import type { SeekableWriter } from "../io/source.ts";

/**
 * Options for converting to qcow2: the new image's options (as
 * `qemu-img convert -O qcow2 -o`; the size is the source's), and how.
 *
 * @example Compressed with zstd, 4 KiB clusters
 * ```ts
 * import { convertToQcow2, type ConvertToQcow2Options, memoryTarget } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zlib.qcow2", import.meta.url));
 * const options: ConvertToQcow2Options = { compress: true, compressionType: "zstd", clusterSize: 4096 };
 * const summary = await convertToQcow2(bytes, memoryTarget(), options);
 * assertEquals(summary.options.compressionType, "zstd");
 * ```
 */
export interface ConvertToQcow2Options extends Omit<CreateOptions, "size"> {
  /**
   * Encrypt the new image with LUKS (from `createLuks`): its LUKS area
   * after the L1 table, data clusters encrypted with their host offsets.
   * Not with `compress`, nor to a stream.
   */
  luks?: NewLuks;
  /** Compress every cluster that is not all zeros (`-c`). */
  compress?: boolean;
  /**
   * The codecs: with `compress`, their `compress` compressors are used
   * (`mod.ts` defaults to `node:zlib`'s; the portable face to pako's and
   * zstd's WebAssembly build).
   */
  codecs?: Codecs;
  /**
   * `-S`: zero runs of at least this many bytes (a multiple of 512, at most
   * 16 MiB) are not written; 0 allocates every cluster. Default 4096.
   */
  sparseSize?: number;
  /**
   * The virtual size of the backing file (`-B`), when there is one: zeros
   * past its end are left unallocated instead of being written as zero
   * clusters. Unknown: every zero is written.
   */
  backingSize?: number;
  /** Compressions kept in flight at once (default 32 clusters, at most 8 MiB). */
  inFlight?: number;
  /** Called as the conversion advances (guest bytes). */
  onProgress?: (progress: ConvertProgress) => void;
  /** Stops the conversion; it then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/**
 * What a conversion to qcow2 made.
 *
 * @example
 * ```ts
 * import { convertToQcow2, type ConvertToQcow2Summary, memoryTarget } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const summary: ConvertToQcow2Summary = await convertToQcow2(bytes, memoryTarget());
 * assertEquals(summary.dataClusters, 1);
 * ```
 */
export interface ConvertToQcow2Summary {
  /** The options the image was written with. */
  options: ResolvedCreateOptions;
  /** The virtual size. */
  virtualSize: number;
  /** The output file's length in bytes. */
  fileSize: number;
  /** Clusters stored uncompressed. */
  dataClusters: number;
  /** Clusters stored compressed. */
  compressedClusters: number;
  /** Zero clusters written (over a backing file). */
  zeroClusters: number;
  /** Wall time in milliseconds. */
  durationMs: number;
}

/** A run of output clusters whose source extents say the same. */
interface SourceRun {
  cluster: number;
  count: number;
  /** Some byte may be non-zero: it must be read. */
  data: boolean;
  /** Allocated in the top layer (matters with a backing file). */
  top: boolean;
  /**
   * With extended L2 over a backing file, for one cluster that the top
   * layer covers in part: the subclusters to allocate (those its data
   * touches, or its zeros in part) and those its zeros cover whole (zero
   * subclusters); the others show the backing file, as qemu-img writes
   * them. With none to allocate, the cluster gets no host cluster.
   */
  subclusters?: { allocated: number; zero: number };
}

/** Guest bytes read between turns given to the event loop. */
const YIELD_EVERY = 128 * 1024 * 1024;
const CHUNK = 1024 * 1024;
/**
 * Read buffers in turn when the writer writes them where they lie, and
 * their size: 2 MiB, a huge page, as the worker target backs them (less
 * system time than 1 MiB reads and writes; 4 MiB took twice as much).
 */
const CHUNKS_WRITING = 4;
const CHUNK_WRITING = 2 * 1024 * 1024;

/**
 * The output clusters of `image` as runs, from its extents: whether each
 * may hold data and whether the top layer allocates it.
 */
async function sourceRuns(
  image: DiskImage,
  clusterSize: number,
  topOnly: boolean,
  dataExtents?: number[],
  subclusterSize?: number,
): Promise<SourceRun[]> {
  const runs: SourceRun[] = [];
  const emit = (
    cluster: number,
    count: number,
    data: boolean,
    top: boolean,
    subclusters?: SourceRun["subclusters"],
  ) => {
    const last = runs.at(-1);
    if (subclusters) runs.push({ cluster, count, data, top, subclusters });
    else if (
      last && last.cluster + last.count === cluster && last.data === data &&
      last.top === top && !last.subclusters
    ) {
      last.count += count;
    } else runs.push({ cluster, count, data, top });
  };
  // The cluster where the last extent ended, which the next may share.
  let pending = -1;
  let pendingData = false;
  let pendingTop = false;
  /** Data of a backing layer in it (with `topOnly`). */
  let pendingUnder = false;
  // With extended L2 over a backing file, for the pending cluster: the
  // subclusters that top-layer data touches, that top-layer zeros cover
  // whole, and that they cover in part.
  let dataBits = 0;
  let zeroBits = 0;
  let zeroPartBits = 0;
  const subclustersIn = (
    cluster: number,
    from: number,
    to: number,
    zeros: boolean,
  ) => {
    if (!subclusterSize) return;
    const base = cluster * clusterSize;
    const lo = Math.max(from, base) - base;
    const hi = Math.min(to, base + clusterSize) - base;
    for (
      let u = Math.floor(lo / subclusterSize);
      u < Math.ceil(hi / subclusterSize);
      u++
    ) {
      const whole = u * subclusterSize >= lo &&
        (u + 1) * subclusterSize <= hi;
      if (!zeros) dataBits |= 1 << u;
      else if (whole) zeroBits |= 1 << u;
      else zeroPartBits |= 1 << u;
    }
  };
  // A cluster the top layer covers in part (zeros) over a backing layer's
  // data is read whole: as a zero cluster it would hide that data (without
  // subclusters to tell the parts apart).
  const flush = () => {
    const allocated = (dataBits | zeroPartBits) >>> 0;
    const zero = (zeroBits & ~allocated) >>> 0;
    if (subclusterSize && pendingTop && allocated !== 0xffffffff) {
      emit(pending, 1, allocated !== 0, true, { allocated, zero });
    } else {
      emit(pending, 1, pendingData || (pendingTop && pendingUnder), pendingTop);
    }
  };
  for await (const e of image.extents()) {
    const top = e.depth === 0 && e.kind !== "unallocated";
    const stored = e.kind === "data" || e.kind === "compressed";
    const data = stored && (!topOnly || e.depth === 0);
    const under = stored && topOnly && e.depth > 0;
    if (data && dataExtents) {
      // Byte-exact, merged: [start, end) pairs.
      if (dataExtents.at(-1) === e.start) {
        dataExtents[dataExtents.length - 1] = e.start + e.length;
      } else dataExtents.push(e.start, e.start + e.length);
    }
    let first = Math.floor(e.start / clusterSize);
    const last = Math.floor((e.start + e.length - 1) / clusterSize);
    const zeros = top && e.kind === "zero";
    if (first === pending) {
      pendingData ||= data;
      pendingTop ||= top;
      pendingUnder ||= under;
      if (top) subclustersIn(first, e.start, e.start + e.length, zeros);
      if (last === first) continue;
      flush();
      first++;
    } else if (pending >= 0) flush();
    if (last > first) emit(first, last - first, data, top);
    pending = last;
    pendingData = data;
    pendingTop = top;
    pendingUnder = under;
    dataBits = zeroBits = zeroPartBits = 0;
    if (top) subclustersIn(last, e.start, e.start + e.length, zeros);
  }
  if (pending >= 0) flush();
  return runs;
}

/**
 * A buffer for a copy of one cluster: in shared memory where there is
 * some, so that a compressor on a worker reads it there rather than from a
 * copy of its own made for each message.
 */
function newCopy(size: number): Uint8Array {
  return typeof SharedArrayBuffer === "function"
    ? new Uint8Array(new SharedArrayBuffer(size))
    : new Uint8Array(size);
}

/** Whether `bytes[from, to)` are all zero. */
function isZero(bytes: Uint8Array, from: number, to: number): boolean {
  let i = from;
  const start = bytes.byteOffset + from;
  if (start % 4 === 0 && to - from >= 16) {
    const words = new Uint32Array(bytes.buffer, start, (to - from) >>> 2);
    for (let w = 0; w < words.length; w++) if (words[w] !== 0) return false;
    i = from + words.length * 4;
  }
  for (; i < to; i++) if (bytes[i] !== 0) return false;
  return true;
}

/**
 * Which clusters of `chunk` (whole clusters, from guest offset `start`)
 * qemu-img writes with `-S sparse`: `is_allocated_sectors` aligns each run
 * of data up (and of zeros down) to blocks of `pow2floor(sparse)` bytes of
 * guest offsets (`alignment` in `img_convert`), so a block with one non-zero
 * byte is written whole, and `is_allocated_sectors_min` writes a run of zero
 * blocks shorter than `sparse` bytes that lies between blocks of data. A
 * cluster is allocated if a byte of it is written.
 */
function clustersToWrite(
  chunk: Uint8Array,
  start: number,
  clusterSize: number,
  sparse: number,
  subclusterSize: number,
): number[] {
  const clusters = chunk.length / clusterSize;
  const out = new Array<number>(clusters);
  if (clusterSize >= sparse && subclusterSize === clusterSize) {
    if (chunk.byteOffset % 4 === 0) {
      // One view of the whole chunk (clusters are multiples of 512 bytes).
      const words = new Uint32Array(
        chunk.buffer,
        chunk.byteOffset,
        chunk.length >>> 2,
      );
      const perCluster = clusterSize >>> 2; // a multiple of 8
      for (let c = 0, w = 0; c < clusters; c++) {
        const end = w + perCluster;
        // Eight words a step: about twice as fast over zeros.
        while (
          w < end &&
          (words[w] | words[w + 1] | words[w + 2] | words[w + 3] |
              words[w + 4] | words[w + 5] | words[w + 6] | words[w + 7]) === 0
        ) w += 8;
        out[c] = w < end ? 1 : 0;
        w = end;
      }
      return out;
    }
    for (let c = 0; c < clusters; c++) {
      out[c] = isZero(chunk, c * clusterSize, (c + 1) * clusterSize) ? 0 : 1;
    }
    return out;
  }
  const { first, block, written } = writtenBlocks(chunk, start, sparse);
  // Per cluster, the subclusters (one bit each; one bit for the cluster
  // without extended L2) that a written block overlaps.
  const units = clusterSize / subclusterSize;
  for (let c = 0; c < clusters; c++) {
    let bits = 0;
    for (let u = 0; u < units; u++) {
      const from = start + c * clusterSize + u * subclusterSize;
      const lo = Math.floor(from / block) - first;
      const hi = Math.floor((from + subclusterSize - 1) / block) - first;
      if (written.subarray(lo, hi + 1).some((x) => x !== 0)) bits |= 1 << u;
    }
    out[c] = bits >>> 0;
  }
  return out;
}

/** The blocks of guest offsets over a chunk that qemu-img writes with `-S`. */
interface WrittenBlocks {
  /** The index of the first block (guest offset / block). */
  first: number;
  /** Bytes per block: `pow2floor(sparse)`. */
  block: number;
  /** 1 for each block written (the first and last may be partial). */
  written: Uint8Array;
}

/**
 * Which blocks of `pow2floor(sparse)` guest bytes over `chunk` (from guest
 * offset `start`) qemu-img writes with `-S sparse` (`is_allocated_sectors`,
 * `is_allocated_sectors_min`): those with a non-zero byte, and the runs of
 * zero blocks shorter than `sparse` bytes between them.
 */
function writtenBlocks(
  chunk: Uint8Array,
  start: number,
  sparse: number,
): WrittenBlocks {
  const block = 2 ** Math.floor(Math.log2(sparse));
  const first = Math.floor(start / block);
  const count = Math.ceil((start + chunk.length) / block) - first;
  const written = new Uint8Array(count);
  for (let b = 0; b < count; b++) {
    const from = Math.max(0, (first + b) * block - start);
    const to = Math.min(chunk.length, (first + b + 1) * block - start);
    written[b] = isZero(chunk, from, to) ? 0 : 1;
  }
  let lastData = -1;
  for (let b = 0; b < count; b++) {
    if (!written[b]) continue;
    const gap = b - lastData - 1;
    if (lastData >= 0 && gap > 0 && gap * block < sparse) {
      written.fill(1, lastData + 1, b);
    }
    lastData = b;
  }
  return { first, block, written };
}

/**
 * The byte ranges of the cluster at guest offset `from` that the written
 * blocks cover, as `[from, to)` pairs relative to the cluster, cut at the
 * disk's end `size` (QEMU writes no guest byte past it).
 */
function rangesOf(
  w: WrittenBlocks,
  from: number,
  clusterSize: number,
  size: number,
  extents: number[],
): number[] {
  const end = Math.min(from + clusterSize, size);
  const ranges: number[] = [];
  const add = (lo: number, hi: number) => {
    if (lo >= hi) return;
    if (ranges.length > 0 && ranges[ranges.length - 1] === lo) {
      ranges[ranges.length - 1] = hi;
    } else ranges.push(lo, hi);
  };
  for (
    let b = Math.floor(from / w.block);
    b * w.block < end;
    b++
  ) {
    if (!w.written[b - w.first]) continue;
    const lo = Math.max(b * w.block, from);
    const hi = Math.min((b + 1) * w.block, end);
    // Cut to the data extents (few per cluster; found by bisection).
    let i = firstExtentEndingAfter(extents, lo);
    for (; i < extents.length && extents[i] < hi; i += 2) {
      add(Math.max(lo, extents[i]) - from, Math.min(hi, extents[i + 1]) - from);
    }
  }
  return ranges;
}

/** The subclusters (bit i: subcluster i) that `ranges` overlap. */
function subclustersOf(ranges: number[], subclusterSize: number): number {
  let bits = 0;
  for (let i = 0; i < ranges.length; i += 2) {
    const first = Math.floor(ranges[i] / subclusterSize);
    const last = Math.floor((ranges[i + 1] - 1) / subclusterSize);
    for (let u = first; u <= last; u++) bits |= 1 << u;
  }
  return bits >>> 0;
}

/** The index (even) of the first `[start, end)` pair of `extents` with end > `at`. */
function firstExtentEndingAfter(extents: number[], at: number): number {
  let lo = 0;
  let hi = extents.length / 2;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (extents[2 * mid + 1] > at) hi = mid;
    else lo = mid + 1;
  }
  return 2 * lo;
}

/** What the classification needs to know. */
interface Classify {
  image: DiskImage;
  options: ResolvedCreateOptions;
  runs: SourceRun[];
  /**
   * With preallocated metadata: the source's data extents, `[start, end)`
   * guest byte pairs. qemu-img writes within them only (it works extent
   * by extent), so a block cut by a hole is written in part.
   */
  dataExtents?: number[];
  compressor?: Compressor;
  /** Gives a compressed result back to its compressors, once written. */
  release?: (bytes: Uint8Array) => void;
  /**
   * Where the source is read to, when the writer writes bytes where they
   * lie (`Qcow2Writer.allocate`), and how to wait until such a buffer may
   * be filled again (`Qcow2Writer.release`). Without them, one buffer is
   * read into again and again: its bytes are copied by the writer.
   */
  chunks?: {
    allocate(size: number): Uint8Array;
    release(buffer: Uint8Array): Promise<void>;
  };
  sparse: number;
  /**
   * `-S 0` without `-c`: the top layer's zeros over a backing file are
   * written as data, as qemu-img writes BLK_ZERO when it may leave nothing
   * sparse.
   */
  zerosAsData: boolean;
  backing: boolean;
  backingSize: number;
  inFlight: number;
  signal?: AbortSignal;
  onProgress?: (progress: ConvertProgress) => void;
}

/**
 * Every output cluster that is not left unallocated, in guest order, with
 * its bytes. Without compression the bytes are views of a reused buffer,
 * valid until the next item is asked for.
 */
async function* classify(c: Classify): AsyncGenerator<ClusterWrite> {
  const cs = c.options.clusterSize;
  const size = c.image.size;
  const v3 = c.options.compat === "1.1";
  const zeroCluster: ClusterKind = v3 ? "zero" : "data";
  const zeros = new Uint8Array(cs);
  const chunkClusters = Math.max(
    1,
    Math.floor((c.chunks ? CHUNK_WRITING : CHUNK) / cs),
  );
  /** Read buffers, taken in turn (several when the writer keeps views). */
  const buffers: Uint8Array[] = [];
  let reads = 0;
  const nextBuffer = async (): Promise<Uint8Array> => {
    const turn = c.chunks ? reads++ % CHUNKS_WRITING : 0;
    if (buffers[turn]) await c.chunks?.release(buffers[turn]);
    else {
      buffers[turn] = c.chunks?.allocate(chunkClusters * cs) ??
        new Uint8Array(chunkClusters * cs);
    }
    return buffers[turn];
  };
  const queue: Promise<ClusterWrite>[] = [];
  let done = 0;
  let sinceYield = 0;
  const progress = (to: number) => {
    if (to > done) {
      done = Math.min(to, size);
      c.onProgress?.({ done, total: size });
    }
  };
  /**
   * A zero (or all-zero) cluster of the top layer: over a backing file, it
   * must hide it. With `-S 0` (uncompressed) it is data, zeros written, as
   * qemu-img writes BLK_ZERO when it may not leave anything sparse.
   */
  const zeroOverBacking = (cluster: number): ClusterWrite | undefined =>
    c.backing && cluster * cs < c.backingSize
      ? c.zerosAsData
        ? { cluster, kind: "data", bytes: zeros }
        : { cluster, kind: zeroCluster, bytes: v3 ? undefined : zeros }
      : undefined;
  /** Cluster copies the writer is done with, to fill again. */
  const spare: Uint8Array[] = [];
  /** Yields the oldest compression, then takes back its copy. */
  const settle = async function* () {
    const item = await queue.shift()!;
    yield item;
    // The writer has written or copied the bytes by the time it asks again.
    if (
      item.kind === "data" && item.bytes !== zeros && spare.length < c.inFlight
    ) {
      spare.push(item.bytes!);
    } else if (item.kind === "compressed") c.release?.(item.bytes!);
  };
  // Preallocation: every cluster of the disk is placed, in guest order; the
  // ones the source leaves zero are preallocated (no bytes written, or
  // zeros with falloc/full) before the next one with data.
  const prealloc = c.options.preallocation !== "off";
  const fillZeros = c.options.preallocation === "falloc" ||
    c.options.preallocation === "full";
  let next = 0;
  const upTo = function* (cluster: number): Generator<ClusterWrite> {
    if (!prealloc) return;
    for (; next < cluster; next++) {
      yield {
        cluster: next,
        kind: "preallocated",
        bytes: fillZeros ? zeros : undefined,
      };
    }
  };
  const emit = function* (item: ClusterWrite): Generator<ClusterWrite> {
    yield* upTo(item.cluster);
    next = item.cluster + (item.count ?? 1);
    yield item;
  };
  /**
   * Cluster `cluster` compressed (its bytes copied first: the caller's are
   * read into again), or as data where that is not smaller.
   */
  const compressed = (
    compressor: Compressor,
    cluster: number,
    bytes: Uint8Array,
  ): Promise<ClusterWrite> => {
    // A copy of its own, from the copies that came back: less garbage, less
    // memory.
    const copy = spare.pop() ?? newCopy(cs);
    copy.set(bytes);
    // QEMU stores a cluster compressed only in cs - 1 bytes or fewer.
    return compressor(copy, cs - 1).then((packed): ClusterWrite => {
      if (packed !== undefined && packed.length < cs) {
        spare.push(copy); // the compressor is done with it
        return { cluster, kind: "compressed", bytes: packed };
      }
      return { cluster, kind: "data", bytes: copy };
    });
  };
  /**
   * With extended L2, `subclusters` (a bitmap) without those wholly past the
   * disk's end: qemu-img looks for data up to the end only, where the last
   * run of data rounded up to the `-S` size would reach past it.
   */
  const inDisk = (
    cluster: number,
    subclusters: number | undefined,
  ): number | undefined => {
    if (!c.options.extendedL2 || c.compressor) return subclusters;
    const inside = Math.ceil((size - cluster * cs) / (cs / 32));
    if (inside >= 32) return subclusters;
    // (None given: the whole cluster, as with -S 0.)
    return ((subclusters ?? 0xffffffff) & (2 ** inside - 1)) >>> 0;
  };
  const push = function* (item: ClusterWrite | Promise<ClusterWrite>) {
    if (!c.compressor) {
      yield* emit(item as ClusterWrite);
      return;
    }
    const p = Promise.resolve(item);
    p.catch(() => {}); // observed when its turn comes
    queue.push(p);
  };

  // Compressions run ahead of the writer, each rejection handled as it
  // starts (src/jobs.ts's rule); when anything fails, or the writer stops
  // asking, every one still running settles before the failure goes on.
  try {
    for (const run of c.runs) {
      c.signal?.throwIfAborted();
      const writeAll = c.sparse === 0 && !c.backing;
      if (!run.data && !writeAll) {
        if (c.backing && run.top) {
          for (let i = 0; i < run.count; i++) {
            const item = zeroOverBacking(run.cluster + i);
            if (item && item.kind === "zero") {
              item.subclusters = run.subclusters?.zero;
            }
            if (item) yield* push(item);
          }
        }
        progress((run.cluster + run.count) * cs);
        continue;
      }
      if (!run.data) {
        // -S 0 without a backing file: every cluster allocated, zeros too
        // (compressed with -c, as qemu-img compresses them).
        for (let i = 0; i < run.count; i++) {
          if ((sinceYield += cs) >= YIELD_EVERY) {
            sinceYield = 0;
            await nextTask();
            c.signal?.throwIfAborted();
          }
          const cluster = run.cluster + i;
          yield* push(
            c.compressor
              ? compressed(c.compressor, cluster, zeros)
              : { cluster, kind: "data", bytes: zeros },
          );
          while (queue.length > 0 && queue.length >= c.inFlight) {
            yield* settle();
          }
        }
        progress((run.cluster + run.count) * cs);
        continue;
      }
      for (let at = 0; at < run.count; at += chunkClusters) {
        // Reads and writes may all be synchronous: give the event loop a turn
        // now and then, so that a signal (Ctrl-C) is seen.
        if ((sinceYield += chunkClusters * cs) >= YIELD_EVERY) {
          sinceYield = 0;
          await nextTask();
        }
        c.signal?.throwIfAborted();
        const n = Math.min(chunkClusters, run.count - at);
        const first = run.cluster + at;
        const chunk = (await nextBuffer()).subarray(0, n * cs);
        const inside = Math.max(0, Math.min(chunk.length, size - first * cs));
        await c.image.read(first * cs, chunk.subarray(0, inside));
        chunk.fill(0, inside);
        // With preallocated metadata only the written blocks are written
        // (the preallocated host cluster keeps its holes, as in QEMU).
        const blocks = c.options.preallocation === "metadata" && c.sparse !== 0
          ? writtenBlocks(chunk, first * cs, c.sparse)
          : undefined;
        const written = c.compressor || c.sparse === 0 ? null : clustersToWrite(
          chunk,
          first * cs,
          cs,
          c.sparse,
          // Subclusters matter without a backing file: over one, an
          // unallocated subcluster would show the backing file.
          c.options.extendedL2 && !c.backing ? cs / 32 : cs,
        );
        /** Data clusters in a row, gathered into one item (views of the chunk). */
        let gathered: ClusterWrite | undefined;
        const flushRun = function* () {
          if (!gathered) return;
          const from = (gathered.cluster - first) * cs;
          gathered.bytes = chunk.subarray(from, from + gathered.count! * cs);
          yield* emit(gathered);
          gathered = undefined;
        };
        for (let i = 0; i < n; i++) {
          const cluster = first + i;
          const nonZero = written
            ? written[i]
            : c.sparse === 0 || !isZero(chunk, i * cs, (i + 1) * cs);
          if (!nonZero) {
            yield* flushRun();
            const item = zeroOverBacking(cluster);
            if (item) yield* push(item);
            while (queue.length > 0 && queue.length >= c.inFlight) {
              yield* settle();
            }
            continue;
          }
          const subclusters = inDisk(
            cluster,
            c.compressor
              ? undefined
              : c.options.extendedL2 && written && !c.backing
              ? written[i]
              : run.subclusters?.allocated,
          );
          if (
            c.chunks && !blocks &&
            (subclusters === undefined || subclusters === 0xffffffff)
          ) {
            // Gathered with the data clusters before it, written as one
            // (no compressor here: nothing is queued).
            if (gathered && gathered.cluster + gathered.count! === cluster) {
              gathered.count!++;
            } else {
              yield* flushRun();
              gathered = { cluster, kind: "data", count: 1 };
            }
            continue;
          }
          const bytes = chunk.subarray(i * cs, (i + 1) * cs);
          if (!c.compressor) {
            const item: ClusterWrite =
              subclusters === undefined || subclusters === 0xffffffff
                ? { cluster, kind: "data", bytes }
                : { cluster, kind: "data", bytes, subclusters };
            // Over a backing file: the top layer's zeros on whole subclusters.
            if (item.subclusters !== undefined && run.subclusters?.zero) {
              item.zeroSubclusters = run.subclusters.zero;
            }
            if (blocks) {
              item.ranges = rangesOf(
                blocks,
                cluster * cs,
                cs,
                size,
                c.dataExtents!,
              );
              // With extended L2: the subclusters those bytes touch.
              if (item.subclusters !== undefined) {
                item.subclusters = inDisk(
                  cluster,
                  subclustersOf(item.ranges, cs / 32),
                );
              }
            }
            yield* flushRun();
            yield* emit(item);
          } else yield* push(compressed(c.compressor, cluster, bytes));
          while (queue.length > 0 && queue.length >= c.inFlight) {
            yield* settle();
          }
        }
        yield* flushRun();
        progress((first + n) * cs);
      }
    }
    while (queue.length > 0) yield* settle();
    yield* upTo(Math.ceil(size / cs));
  } finally {
    await Promise.allSettled(queue);
  }
  progress(size);
}

/**
 * The compressor for `type`, or a `Qcow2Error` saying none is available.
 */
function compressorFor(
  codecs: Codecs | undefined,
  type: "zlib" | "zstd",
): Compressor {
  const compressor = codecs?.compress?.[type];
  if (!compressor) {
    throw new Qcow2Error(
      "UNSUPPORTED_COMPRESSION",
      `Cannot write compressed clusters: no ${type} compressor is available in this runtime; pass one in codecs.compress`,
    );
  }
  return compressor;
}

/** Options checked, the source's runs laid out, the compressor found. */
async function prepare(
  image: DiskImage,
  options: ConvertToQcow2Options,
): Promise<Classify> {
  const resolved = resolveCreateOptions({ ...options, size: image.size });
  const sparse = sparseSize(options.sparseSize);
  const backing = resolved.backingFile !== undefined;
  if (resolved.preallocation !== "off") {
    // qemu-img's words for -c; the others are refused here, not in QEMU.
    if (options.compress) {
      throw new RangeError(
        "Compression and preallocation not supported at the same time",
      );
    }
    if (backing || options.luks) {
      throw new RangeError(
        `preallocation: not supported with ${
          backing ? "a backing file" : "encryption"
        } by convert; create the image with 'qcow2 create -o preallocation=...'`,
      );
    }
  }
  const compressor = options.compress
    ? compressorFor(options.codecs, resolved.compressionType)
    : undefined;
  const compressors = options.codecs?.compress;
  const release = compressor && compressors?.release
    ? (bytes: Uint8Array) => compressors.release!(bytes)
    : undefined;
  const cs = resolved.clusterSize;
  const dataExtents = resolved.preallocation === "metadata" ? [] : undefined;
  const zerosAsData = sparse === 0 && !compressor;
  return {
    image,
    options: resolved,
    runs: await sourceRuns(
      image,
      cs,
      backing,
      dataExtents,
      // Zero subclusters over a backing file, as qemu-img makes them (unless
      // it writes the zeros as data).
      resolved.extendedL2 && backing && !zerosAsData ? cs / 32 : undefined,
    ),
    dataExtents,
    compressor,
    release,
    sparse,
    zerosAsData,
    backing,
    backingSize: options.backingSize ?? Infinity,
    inFlight: Math.max(
      1,
      options.inFlight ?? Math.min(32, Math.floor(8 * 1024 * 1024 / cs)),
    ),
    signal: options.signal,
    onProgress: options.onProgress,
  };
}

/** The most clusters the runs can place: each cluster read, and an L2 table per range. */
function boundOf(c: Classify): number {
  const l2Entries = c.options.clusterSize / (c.options.extendedL2 ? 16 : 8);
  if (c.options.preallocation !== "off") {
    const all = Math.ceil(c.image.size / c.options.clusterSize);
    return all + Math.ceil(all / l2Entries);
  }
  let clusters = 0;
  let tables = 0;
  let lastTable = -1;
  const all = c.sparse === 0 && !c.backing;
  for (const run of c.runs) {
    if (!run.data && !(c.backing && run.top) && !all) continue;
    clusters += run.count;
    const first = Math.floor(run.cluster / l2Entries);
    const last = Math.floor((run.cluster + run.count - 1) / l2Entries);
    tables += last - first + 1 - (first === lastTable ? 1 : 0);
    lastTable = last;
  }
  return clusters + tables;
}

/**
 * `c` with its progress said as pass `pass` (1 or 2) of two over the
 * source: each pass is half of it.
 */
function passOf(c: Classify, pass: 1 | 2): Classify {
  const onProgress = c.onProgress;
  const total = c.image.size;
  const before = pass === 1 ? 0 : total;
  return {
    ...c,
    onProgress: onProgress &&
      ((p) => onProgress({ done: (before + p.done) / 2, total })),
  };
}

/**
 * The most source bytes read a first time to learn the exact layout (see
 * {@linkcode exactBound}): past it, the one-pass layout stands.
 */
const EXACT_READ_LIMIT = 1024 ** 3;

/**
 * The exact number of clusters the conversion places after the metadata,
 * found by reading (and compressing) the source once before writing it,
 * when the bound from its allocation map ({@linkcode boundOf}) could
 * reserve more refcount blocks or table clusters than the image needs: a
 * source whose zeros are written out (they are skipped, not placed), with
 * small clusters where one refcount block covers little. The metadata is
 * laid out before the data, so an overestimate leaves unused clusters
 * before the L1 table and a larger file than qemu-img's (which adds
 * blocks as it goes), where the exact count gives its bytes.
 *
 * Returns undefined where the bound is exact enough (the same blocks and
 * table either way: the usual case, with 64 KiB clusters below 2 GiB of
 * file) or the first read would exceed {@linkcode EXACT_READ_LIMIT} bytes.
 */
async function exactBound(
  c: Classify,
  areaBytes: number,
): Promise<number | undefined> {
  if (c.options.preallocation !== "off") return undefined;
  const bound = boundOf(c);
  const geometry = geometryOf(c.options);
  const most = layoutMetadata(geometry, bound, areaBytes);
  const least = layoutMetadata(geometry, 0, areaBytes);
  if (
    most.refcountBlockSlots === least.refcountBlockSlots &&
    most.refcountTableClusters === least.refcountTableClusters
  ) return undefined;
  const cs = c.options.clusterSize;
  if (bound * cs > EXACT_READ_LIMIT) return undefined;
  // Placed from offset 0, as the stream writer's dry run does.
  const dry = new Placer({ ...least, dataStart: 0 }, c.options.refcountBits);
  for await (const item of classify(passOf(c, 1))) {
    const length = item.kind === "compressed" ? item.bytes!.length : 0;
    for (let i = 0; i < (item.count ?? 1); i++) {
      dry.place(item.cluster + i, item.kind, length);
    }
  }
  return Math.ceil(dry.position / cs);
}

/**
 * Converts `image` to a qcow2 image written through `target` (positional:
 * a file), as `qemu-img convert -O qcow2` does: clusters that read as zeros
 * are left unallocated (or, over a backing file, written as zero clusters
 * in v3 and zeroed data in v2), `-S` has qemu-img's meaning, and with
 * `compress` every other cluster is compressed unless that does not make it
 * smaller. With `backingFile`, only what the top layer of `image` allocates
 * is written (`-B`). The output is the same bytes whatever the timing of
 * reads and compression.
 *
 * @param image The source, open.
 * @param target Where the image goes.
 * @param options The new image's options and the conversion's.
 * @returns What was written.
 * @throws {Qcow2Error} `UNSUPPORTED_COMPRESSION` without a compressor, the
 * source's errors; the signal's reason if aborted.
 * @throws {RangeError} For options qemu-img refuses, a bad `sparseSize` or
 * LUKS options QEMU refuses.
 *
 * @example See {@linkcode convertToQcow2} in `mod.ts`, which opens the source.
 */
export async function convertImageToQcow2(
  image: DiskImage,
  target: ImageTarget,
  options: ConvertToQcow2Options = {},
): Promise<ConvertToQcow2Summary> {
  const began = performance.now();
  if (options.luks && options.compress) {
    throw new RangeError(
      "Compression is not supported for encrypted images (as in QEMU)",
    );
  }
  const prepared = await prepare(image, options);
  const exact = await exactBound(prepared, options.luks?.area.length ?? 0);
  // Read once already: the writing pass is the second half of the progress.
  const c = exact === undefined ? prepared : passOf(prepared, 2);
  const writer = new Qcow2Writer(
    target,
    c.options,
    exact ?? boundOf(c),
    options.luks,
  );
  writer.endOnSector = c.compressor !== undefined;
  if (target.allocate && !c.compressor) {
    // The source is read into the target's memory and written from there.
    c.chunks = {
      allocate: (size) => writer.allocate(size),
      release: (buffer) => writer.release(buffer),
    };
  }
  const counts = { data: 0, preallocated: 0, compressed: 0, zero: 0 };
  let fileSize: number;
  try {
    for await (const item of classify(c)) {
      if (item.count !== undefined) {
        counts.data += item.count;
        await writer.addRun(item.cluster, item.bytes!);
        continue;
      }
      counts[item.kind]++;
      await writer.add(
        item.cluster,
        item.kind,
        item.bytes,
        item.subclusters,
        item.ranges,
        item.zeroSubclusters,
      );
    }
    // Aborted while the last clusters were written: stop before the tables.
    options.signal?.throwIfAborted();
    fileSize = await finishPreallocated(writer, target, c.options);
  } catch (e) {
    // No write outlives the conversion (the caller removes the file).
    await writer.settle().catch(() => {});
    throw e;
  }
  return summaryOf(c, image, fileSize, counts, began);
}

/**
 * Converts `image` to a qcow2 image written front to back through `target`
 * (a pipe), as QEMU's `scripts/qcow2-to-stdout.py` does: the source is read
 * twice, first to learn every cluster's fate (and compressed length), then
 * to write the data after the metadata. The source must read the same both
 * times.
 *
 * @param image The source, open and readable twice.
 * @param target A target written in increasing offset order.
 * @param options As for {@linkcode convertImageToQcow2}.
 * @returns What was written.
 * @throws {Qcow2Error} As {@linkcode convertImageToQcow2}, and
 * `SOURCE_CHANGED` if the source read differently the second time.
 *
 * @example See {@linkcode convertToQcow2} in `mod.ts`, which takes a stream.
 */
export async function convertImageToQcow2Stream(
  image: DiskImage,
  target: ImageTarget,
  options: ConvertToQcow2Options = {},
): Promise<ConvertToQcow2Summary> {
  if (options.luks) {
    throw new RangeError(
      "An encrypted qcow2 image cannot be written to a stream; give DST a file name",
    );
  }
  if (options.preallocation !== undefined && options.preallocation !== "off") {
    throw new RangeError(
      "preallocation: a preallocated image cannot be written to a stream; give DST a file name",
    );
  }
  const began = performance.now();
  const c = await prepare(image, options);
  const plan: PlannedRun[] = [];
  const counts = { data: 0, preallocated: 0, compressed: 0, zero: 0 };
  const total = image.size;
  for await (const item of classify(passOf(c, 1))) {
    counts[item.kind]++;
    const last = plan.at(-1);
    if (item.kind === "compressed") {
      plan.push({
        cluster: item.cluster,
        count: 1,
        kind: "compressed",
        length: item.bytes!.length,
      });
    } else if (item.subclusters !== undefined) {
      plan.push({
        cluster: item.cluster,
        count: 1,
        kind: item.kind,
        subclusters: item.subclusters,
        zeroSubclusters: item.zeroSubclusters,
      });
    } else if (
      last && last.kind === item.kind && last.subclusters === undefined &&
      last.cluster + last.count === item.cluster
    ) {
      last.count++;
    } else plan.push({ cluster: item.cluster, count: 1, kind: item.kind });
  }
  const items = classify(passOf(c, 2));
  const fileSize = await writeStream(
    target,
    c.options,
    plan,
    items,
    c.compressor !== undefined,
  );
  // The writer stops asking once the plan is written: the source's last
  // runs of holes are never reached by the second pass, so say it is done.
  c.onProgress?.({ done: total, total });
  return summaryOf(c, image, fileSize, counts, began);
}

/**
 * What a conversion wrote: `fileSize` bytes, `counts` clusters of each kind,
 * since `began` (`performance.now()`).
 */
function summaryOf(
  c: Classify,
  image: DiskImage,
  fileSize: number,
  counts: Record<ClusterWrite["kind"], number>,
  began: number,
): ConvertToQcow2Summary {
  return {
    options: c.options,
    virtualSize: image.size,
    fileSize,
    dataClusters: counts.data,
    compressedClusters: counts.compressed,
    zeroClusters: counts.zero,
    durationMs: performance.now() - began,
  };
}

/** Where {@linkcode convertToQcow2Destination} writes: a target, a seekable file, or a stream. */
export type Qcow2Destination =
  | ImageTarget
  | SeekableWriter
  | WritableStream<Uint8Array>;

/**
 * Converts `image` to qcow2 into `dst`: an {@linkcode ImageTarget} or a
 * seekable file (emptied first) get {@linkcode convertImageToQcow2}, a
 * `WritableStream` gets {@linkcode convertImageToQcow2Stream} (the source
 * read twice; the stream is not closed).
 *
 * @param image The source, open.
 * @param dst Where the image goes.
 * @param options As for {@linkcode convertImageToQcow2}.
 * @returns What was written.
 */
export async function convertToQcow2Destination(
  image: DiskImage,
  dst: Qcow2Destination,
  options: ConvertToQcow2Options = {},
): Promise<ConvertToQcow2Summary> {
  if ("writeAt" in dst) return await convertImageToQcow2(image, dst, options);
  if ("seek" in dst) {
    return await convertImageToQcow2(image, await fileSink(dst), options);
  }
  return await convertImageToQcow2Stream(image, streamSink(dst), options);
}
