/**
 * Decompression on other threads: a pool of workers that each run
 * `node:zlib`, behind the same {@linkcode Codecs} interface as the in-thread
 * decompressors. Requests made together travel as one batch through memory
 * shared with the worker (two batch slots per worker, so a worker always has
 * its next batch), and each cluster is copied once, into the buffer the
 * caller passed as `into`: by the worker itself when `into` lies in a buffer
 * from `allocate()` (shared memory), else by the calling thread. Nothing is
 * allocated per batch.
 *
 * Workers start on the first compressed cluster (an image without any costs
 * nothing) and stop after a moment idle, or at `close()`.
 *
 * The library's default stays `node:zlib` on the calling thread (a caller
 * opts in: pass it as `codecs` to `openImage`, and its `allocate` to
 * `convert`). The CLI's `convert -O raw` uses it that way, with its file
 * writes on the runtime's I/O threads, so that the calling thread only
 * reads (a file or the network): figures in bench/README.md ("Images over
 * HTTP").
 *
 * @module
 */

import {
  type Codecs,
  type Decompressor,
  zstdFrameLength,
} from "../src/codecs/codecs.ts";
import {
  workerMain,
  type WorkerReply,
  type WorkerRequest,
} from "./decompress_worker.ts";
import { hasNativeZstd, nodeCodecs } from "./zlib.ts";
import { clusterDecompressor } from "./zlib_handle.ts";

/**
 * Options for {@linkcode workerCodecs}.
 *
 * @example One worker for a zstd image, stopped soon after it is idle
 * ```ts
 * import { nodeCodecs, openImage, workerCodecs, type WorkerCodecsOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const options: WorkerCodecsOptions = { workers: 1, idleMs: 100, fallback: nodeCodecs };
 * const codecs = workerCodecs(options);
 * try {
 *   const bytes = await Deno.readFile(new URL("../tests/fixtures/zstd.qcow2", import.meta.url));
 *   const image = await openImage(bytes, { codecs });
 *   const cluster = new Uint8Array(65536);
 *   await image.read(0, cluster);
 *   assertEquals(new TextDecoder().decode(cluster.subarray(0, 8)), "varied-0");
 * } finally {
 *   codecs.close();
 * }
 * ```
 */
export interface WorkerCodecsOptions {
  /** Workers to run (default: the count of logical cores, at most 8). */
  workers?: number;
  /** Milliseconds idle after which the workers stop (default 500). */
  idleMs?: number;
  /**
   * Where requests go if a worker cannot start or fails: the in-thread
   * `node:zlib` codecs by default.
   */
  fallback?: Codecs;
}

/**
 * Decompressors that run on worker threads, and a way to stop them.
 *
 * @example Decompressing one cluster on a worker, before and after `close()`
 * ```ts
 * import { type WorkerCodecs, workerCodecs } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const cluster = new Uint8Array(65536).map((_, i) => i % 251);
 * const stream = new Blob([cluster]).stream().pipeThrough(new CompressionStream("deflate-raw"));
 * const packed = new Uint8Array(await new Response(stream).arrayBuffer());
 * const codecs: WorkerCodecs = workerCodecs({ workers: 1 });
 * try {
 *   assertEquals(await codecs.zlib!(packed, cluster.length), cluster);
 *   codecs.close(); // stops the worker; the next request starts it again
 *   assertEquals(await codecs.zlib!(packed, cluster.length), cluster);
 * } finally {
 *   codecs.close();
 * }
 * ```
 */
export interface WorkerCodecs extends Codecs {
  /** Stops the workers; a later request starts them again. */
  close(): void;
  /**
   * A zero-filled buffer of `length` bytes in memory the workers share: a
   * cluster decompressed `into` it is written there by the worker, and the
   * calling thread does not copy it (pass it as `convert`'s `allocate`).
   * The memory stays with the pool until `close()`; allocate a few buffers
   * and reuse them. Where `SharedArrayBuffer` is missing, a plain buffer.
   *
   * @param length Bytes.
   * @returns The buffer.
   */
  allocate(length: number): Uint8Array;
}

interface Pending {
  input: Uint8Array;
  into?: Uint8Array;
  /** The id of `into`'s shared buffer, when the worker writes into it. */
  target?: number;
  resolve(out: Uint8Array): void;
  reject(e: unknown): void;
}

interface Batch {
  type: "zlib" | "zstd";
  clusterSize: number;
  items: Pending[];
}

interface Slot {
  worker: Worker;
  /** Shared input and output memory, one per batch in flight. */
  arenas: { input: Uint8Array; output: Uint8Array }[];
  free: number[];
}

/** Decompressed bytes a batch slot holds (at least one cluster). */
const ARENA_BYTES = 1024 * 1024;
/** Batch slots per worker. */
const SLOTS = 2;

/**
 * Decompressors that run on a pool of workers (Deno; the workers use
 * `node:zlib`).
 *
 * @param options Pool size and idle time.
 * @returns Codecs for `openImage`, with `close()`.
 *
 * @example Converting with decompression on every core
 * ```ts ignore
 * import { convert, workerCodecs } from "jsr:@qcow2/qcow2";
 *
 * const codecs = workerCodecs();
 * try {
 *   using out = await Deno.open("disk.raw", { write: true, create: true });
 *   await convert("disk.qcow2", out, { codecs });
 * } finally {
 *   codecs.close();
 * }
 * ```
 *
 * @example Converting a compressed image with two workers
 * ```ts
 * import { convert, workerCodecs } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../tests/fixtures/zlib.qcow2", import.meta.url));
 * const raw = new Uint8Array(2 * 1024 * 1024);
 * let at = 0;
 * const sink = new WritableStream<Uint8Array>({ write: (c) => { raw.set(c, at); at += c.length; } });
 * const codecs = workerCodecs({ workers: 2 });
 * try {
 *   await convert(bytes, sink, { codecs });
 * } finally {
 *   codecs.close();
 * }
 * assertEquals(at, raw.length);
 * const text = (offset: number) => new TextDecoder().decode(raw.subarray(offset, offset + 20));
 * assertEquals(text(0), "varied-0 line 000000"); // the first compressed cluster
 * assertEquals(text(0x60000), "varied-5 line 000000"); // and a later one
 * ```
 */
export function workerCodecs(options: WorkerCodecsOptions = {}): WorkerCodecs {
  const size = Math.max(
    1,
    Math.min(8, options.workers ?? navigator.hardwareConcurrency ?? 2),
  );
  const idleMs = options.idleMs ?? 500;
  const fallback = options.fallback ?? nodeCodecs;
  /** Set once a worker failed: from then on, requests go to `fallback`. */
  let broken = false;
  let slots: Slot[] = [];
  const inFlight = new Map<
    number,
    { batch: Batch; slot: Slot; arena: number }
  >();
  const ready: Batch[] = [];
  let nextId = 1;
  let open: Batch | undefined; // gathering requests
  let openBytes = 0;
  let flushQueued = false;
  /** Shared buffers from `allocate`, by id, which every worker is given. */
  const targets = new Map<SharedArrayBuffer, number>();
  let idleTimer: ReturnType<typeof setTimeout> | undefined;

  /** Clusters per batch, and the bytes an arena needs for a batch. */
  const capacity = (cs: number) => Math.max(1, Math.floor(ARENA_BYTES / cs));
  const outputBytes = (cs: number) => capacity(cs) * cs + 1;
  const inputBytes = (cs: number) => capacity(cs) * cs + 2 * cs + 1024;

  /** Gives `slot` arenas for batches of `cs`-byte clusters (and smaller). */
  const layArenas = (slot: Slot, cs: number) => {
    const shared = Array.from({ length: SLOTS }, () => ({
      input: new SharedArrayBuffer(inputBytes(cs)),
      output: new SharedArrayBuffer(outputBytes(cs)),
    }));
    slot.arenas = shared.map((a) => ({
      input: new Uint8Array(a.input),
      output: new Uint8Array(a.output),
    }));
    slot.free = shared.map((_, i) => i);
    slot.worker.postMessage({ arenas: shared } satisfies WorkerRequest);
  };

  let script: string | undefined;
  const start = () => {
    // From a blob: URL, a worker needs no permission to read its script.
    script ??= URL.createObjectURL(
      new Blob([`(${workerMain})(${clusterDecompressor});`], {
        type: "text/javascript",
      }),
    );
    for (let i = 0; i < size; i++) {
      const worker = new Worker(script, { type: "module" });
      const slot: Slot = { worker, arenas: [], free: [] };
      layArenas(slot, 64 * 1024); // QEMU's default cluster size
      worker.onmessage = ({ data }: MessageEvent<WorkerReply>) => answer(data);
      worker.onerror = (event) => {
        event.preventDefault();
        fallBack();
      };
      if (targets.size > 0) {
        worker.postMessage(
          {
            shared: [...targets].map(([b, key]) => [key, b]),
          } satisfies WorkerRequest,
        );
      }
      slots.push(slot);
    }
  };

  const answer = ({ id, results }: WorkerReply) => {
    const job = inFlight.get(id);
    if (!job) return;
    inFlight.delete(id);
    const { batch, slot, arena } = job;
    const output = slot.arenas[arena].output;
    const cs = batch.clusterSize;
    batch.items.forEach((item, i) => {
      const r = results[i];
      if (typeof r === "string") return item.reject(new Error(r));
      if (r !== cs) return item.resolve(new Uint8Array(r)); // caller rejects
      if (item.target !== undefined) return item.resolve(item.into!);
      const cluster = output.subarray(i * cs, (i + 1) * cs);
      if (item.into) {
        item.into.set(cluster);
        item.resolve(item.into);
      } else item.resolve(cluster.slice());
    });
    slot.free.push(arena);
    pump();
  };

  /** Sends ready batches to workers with a free slot. */
  const pump = () => {
    while (ready.length > 0) {
      const batch = ready[0];
      if (slots.length === 0) start();
      const slot = slots.reduce((a, b) =>
        b.free.length > a.free.length ? b : a
      );
      if (slot.free.length === 0) return;
      const cs = batch.clusterSize;
      if (
        slot.arenas[0].output.length < outputBytes(cs) ||
        slot.arenas[0].input.length < inputBytes(cs)
      ) {
        // Clusters larger than the arenas were laid for: lay larger ones,
        // once nothing is in flight on this worker.
        if (slot.free.length < SLOTS) return;
        layArenas(slot, batch.clusterSize);
      }
      const arena = slot.free.pop()!;
      ready.shift();
      const { input } = slot.arenas[arena];
      const bounds = [0];
      let into: number[] | undefined;
      batch.items.forEach((item, i) => {
        const at = bounds[bounds.length - 1];
        input.set(item.input, at);
        bounds.push(at + item.input.length);
        if (item.target !== undefined) {
          into ??= new Array(2 * batch.items.length).fill(-1);
          into[2 * i] = item.target;
          into[2 * i + 1] = item.into!.byteOffset;
        }
      });
      const id = nextId++;
      inFlight.set(id, { batch, slot, arena });
      slot.worker.postMessage(
        {
          id,
          arena,
          type: batch.type,
          clusterSize: batch.clusterSize,
          bounds,
          targets: into,
        } satisfies WorkerRequest,
      );
    }
    if (inFlight.size === 0 && !open) armIdle();
    else clearTimeout(idleTimer);
  };

  const armIdle = () => {
    clearTimeout(idleTimer);
    idleTimer = setTimeout(() => stop(), idleMs);
    // The idle timer alone must not keep a process alive.
    (globalThis as { Deno?: { unrefTimer(id: unknown): void } }).Deno
      ?.unrefTimer(idleTimer);
  };

  const flush = () => {
    if (open) ready.push(open);
    open = undefined;
    openBytes = 0;
    pump();
  };

  const request =
    (type: "zlib" | "zstd"): Decompressor => (input, maxOutput, into) =>
      new Promise<Uint8Array>((resolve, reject) => {
        // Bytes after a zstd frame make node:zlib fail: cut them here.
        if (type === "zstd") input = input.subarray(0, zstdFrameLength(input));
        if (broken) {
          return runFallback(type, maxOutput, { input, into, resolve, reject });
        }
        const limit = inputBytes(maxOutput);
        if (input.length > 2 * maxOutput + 1024) {
          // No valid compressed cluster is that long: let the caller see it.
          return reject(
            new Error("compressed data longer than twice a cluster"),
          );
        }
        if (
          open &&
          (open.type !== type || open.clusterSize !== maxOutput ||
            open.items.length >= capacity(maxOutput) ||
            openBytes + input.length > limit)
        ) flush();
        open ??= { type, clusterSize: maxOutput, items: [] };
        const whole = into?.length === maxOutput ? into : undefined;
        open.items.push({
          input,
          into: whole,
          target: whole && targets.get(whole.buffer as SharedArrayBuffer),
          resolve,
          reject,
        });
        openBytes += input.length;
        if (open.items.length >= capacity(maxOutput)) flush();
        else if (!flushQueued) {
          // Requests made in one go (a group of clusters read together)
          // travel together: the batch leaves once they are all in.
          flushQueued = true;
          queueMicrotask(() => {
            flushQueued = false;
            flush();
          });
        }
      });

  /** Runs one request on the fallback codecs. */
  const runFallback = (type: "zlib" | "zstd", cs: number, item: Pending) => {
    const codec = fallback[type];
    if (!codec) {
      return item.reject(new Error(`no ${type} decompressor to fall back on`));
    }
    codec(item.input, cs, item.into).then(item.resolve, item.reject);
  };

  /** After a worker failed: stops them all and reruns what was pending. */
  const fallBack = () => {
    broken = true;
    const batches = [
      ...[...inFlight.values()].map((job) => job.batch),
      ...ready,
      ...(open ? [open] : []),
    ];
    inFlight.clear();
    ready.length = 0;
    open = undefined;
    openBytes = 0;
    stop();
    for (const batch of batches) {
      for (const item of batch.items) {
        runFallback(batch.type, batch.clusterSize, item);
      }
    }
  };

  /** Stops the workers, failing whatever is pending with `reason`. */
  const stop = (reason?: Error) => {
    clearTimeout(idleTimer);
    for (const slot of slots) slot.worker.terminate();
    slots = [];
    const failed = reason ?? new Error("decompression workers were stopped");
    for (const { batch } of inFlight.values()) {
      for (const item of batch.items) item.reject(failed);
    }
    inFlight.clear();
    if (reason) {
      for (const batch of [...ready, ...(open ? [open] : [])]) {
        for (const item of batch.items) item.reject(failed);
      }
      ready.length = 0;
      open = undefined;
      openBytes = 0;
    }
  };

  const close = () => {
    stop(new Error("decompression workers were closed"));
    targets.clear();
    if (script) URL.revokeObjectURL(script);
    script = undefined;
  };

  const queued = request("zstd");
  /** zstd: in the workers where node:zlib has it, else on the fallback. */
  const zstd: Decompressor = async (input, maxOutput, into) => {
    if (await hasNativeZstd()) return queued(input, maxOutput, into);
    return new Promise<Uint8Array>((resolve, reject) =>
      runFallback("zstd", maxOutput, { input, into, resolve, reject })
    );
  };
  const allocate = (length: number): Uint8Array => {
    if (typeof SharedArrayBuffer !== "function") return new Uint8Array(length);
    const buffer = new SharedArrayBuffer(length);
    const key = targets.size;
    targets.set(buffer, key);
    for (const slot of slots) {
      slot.worker.postMessage(
        { shared: [[key, buffer]] } satisfies WorkerRequest,
      );
    }
    return new Uint8Array(buffer);
  };
  return { zlib: request("zlib"), zstd, close, allocate };
}
