/**
 * Compression on every core: a pool of workers, each running the
 * `node:zlib` compressors of `compress.ts`, behind the
 * {@linkcode Compressors} interface. The writer keeps many clusters in
 * flight and places each in guest order whatever worker finishes first, so
 * the output does not depend on the pool's size or timing (every worker
 * runs the same code with the same settings).
 *
 * Workers run from a `blob:` URL made of this module's functions' source
 * text, so starting one needs no read permission for this file.
 *
 * @module
 */

import type { Compressor, Compressors } from "../src/codecs/codecs.ts";
import { Qcow2Error } from "../src/errors.ts";
import {
  type CompressSettings,
  compressWith,
  makeClusterCompress,
  makeNodeCompressors,
  type ZlibCompressModule,
} from "./compress.ts";
import { importNode } from "./node_builtin.ts";

/**
 * Options for {@linkcode workerCompressors}.
 *
 * @example Two workers
 * ```ts
 * import { workerCompressors, type WorkerCompressorsOptions } from "@qcow2/qcow2";
 *
 * const options: WorkerCompressorsOptions = { workers: 2 };
 * workerCompressors(options).close();
 * ```
 */
export interface WorkerCompressorsOptions {
  /**
   * Workers to run (default: one less than the logical cores, at most 8,
   * at least 1). 0 compresses on the calling thread alone.
   */
  workers?: number;
  /**
   * Whether the calling thread takes its share of the clusters too, one in
   * `workers + 1` (default true: the thread that reads and writes is idle
   * most of the time, and a worker costs memory).
   */
  shareCallingThread?: boolean;
  /** Compression levels (default QEMU's). */
  settings?: CompressSettings;
}

/**
 * Compressors on worker threads, and a way to stop them.
 *
 * @example Compressing a cluster on a worker
 * ```ts
 * import { workerCompressors, type WorkerCompressors } from "@qcow2/qcow2";
 * import { inflateRawSync } from "node:zlib";
 * import { assertEquals } from "@std/assert";
 *
 * const pool: WorkerCompressors = workerCompressors({ workers: 1 });
 * try {
 *   const cluster = new Uint8Array(65536).map((_, i) => i % 7);
 *   const packed = (await pool.zlib!(cluster, 65535))!;
 *   assertEquals(new Uint8Array(inflateRawSync(packed, { windowBits: 12 })), cluster);
 * } finally {
 *   pool.close();
 * }
 * ```
 */
export interface WorkerCompressors extends Compressors {
  /** Stops the workers; requests still pending reject. */
  close(): void;
}

interface Job {
  type: "zlib" | "zstd";
  input: Uint8Array;
  maxOutput: number;
  resolve(out: Uint8Array | undefined): void;
  reject(e: unknown): void;
}

interface Slot {
  worker: Worker;
  busy: Map<number, Job>;
}

/** The worker's program: compresses what it is sent, replies in kind. */
function workerMain(
  compress: typeof compressWith,
  make: typeof makeClusterCompress,
): void {
  const scope = globalThis as unknown as {
    onmessage: ((event: MessageEvent) => void) | null;
    postMessage(message: unknown, transfer?: Transferable[]): void;
  };
  let run: ReturnType<typeof makeClusterCompress> | undefined;
  /**
   * Output buffers given back by the calling thread, to compress into: at
   * most a few (one comes with each job; a job that does not send its
   * buffer back leaves one over), or they pile up here.
   */
  const free: ArrayBuffer[] = [];
  scope.onmessage = async (event) => {
    const { id, type, input, settings, maxOutput, give } = event.data;
    if (give) free.push(...give);
    if (free.length > 4) free.length = 4;
    try {
      run ??= make(
        (await import(["node", "zlib"].join(":"))) as Parameters<
          typeof compressWith
        >[0],
        settings,
        compress,
      );
      let spare = free.pop();
      while (spare && spare.byteLength < maxOutput + 1) spare = free.pop();
      const into = new Uint8Array(spare ?? new ArrayBuffer(maxOutput + 1));
      const out = run(type, input, maxOutput, into);
      if (out === undefined) {
        // Not smaller: the buffer goes back unused, as the calling thread
        // gave one for this job (kept here, it would be one too many).
        scope.postMessage({ id, out: null, back: into.buffer }, [
          into.buffer,
        ]);
        return;
      }
      if (out.buffer === into.buffer) {
        // A view of `into`: its buffer goes, and comes back when written.
        scope.postMessage({ id, out }, [into.buffer]);
        return;
      }
      free.push(into.buffer);
      // Its own buffer, to transfer (a node:zlib result may be a view of
      // a larger one).
      const copy = out.byteOffset === 0 &&
          out.byteLength === out.buffer.byteLength
        ? out
        : new Uint8Array(out);
      scope.postMessage({ id, out: copy }, [copy.buffer as ArrayBuffer]);
    } catch (e) {
      scope.postMessage({ id, error: String((e as Error)?.message ?? e) });
    }
  };
}

let script: string | undefined;

/**
 * Compressors that run on a pool of workers (Deno; the workers use
 * `node:zlib`). Each request goes to the worker with the fewest pending.
 *
 * @param options Pool size and compression levels.
 * @returns The compressors, with `close()`.
 * @throws {Qcow2Error} `UNSUPPORTED_COMPRESSION` (from a request) if a
 * worker cannot compress (no zstd in its `node:zlib`).
 */
export function workerCompressors(
  options: WorkerCompressorsOptions = {},
): WorkerCompressors {
  const count = Math.max(
    0,
    Math.min(
      8,
      options.workers ??
        Math.max(1, (navigator.hardwareConcurrency ?? 2) - 1),
    ),
  );
  const settings = options.settings ?? {};
  const local = makeNodeCompressors(settings);
  if (count === 0) return { ...local, close() {} };
  /**
   * Output buffers written and given back (`release`): the calling
   * thread's compressions and the workers' fill them again, instead of
   * leaving one new buffer a cluster to the garbage collector.
   */
  const spare: ArrayBuffer[] = [];
  let localRun: ReturnType<typeof makeClusterCompress> | undefined;
  const compressHere = async (
    type: "zlib" | "zstd",
    input: Uint8Array,
    maxOutput: number,
  ): Promise<Uint8Array | undefined> => {
    if (!localRun) {
      const zlib = await importNode<ZlibCompressModule>("zlib");
      // Without zstd, the one-shot path says so in its words (it keeps no
      // compression state: one costs megabytes).
      if (type === "zstd" && typeof zlib.zstdCompressSync !== "function") {
        return await local.zstd!(input, maxOutput);
      }
      localRun ??= makeClusterCompress(zlib, settings, compressWith);
    }
    let buffer = spare.pop();
    while (buffer && buffer.byteLength < maxOutput + 1) buffer = spare.pop();
    const into = new Uint8Array(buffer ?? new ArrayBuffer(maxOutput + 1));
    const out = localRun(type, input, maxOutput, into);
    if (out?.buffer !== into.buffer) spare.push(into.buffer);
    return out;
  };
  const share = options.shareCallingThread ?? true;
  let turn = 0;
  let slots: Slot[] = [];
  let nextId = 1;
  const start = (): Slot[] => {
    script ??= URL.createObjectURL(
      new Blob([
        `const compressWith = ${compressWith.toString()};\nconst makeClusterCompress = ${makeClusterCompress.toString()};\n(${workerMain.toString()})(compressWith, makeClusterCompress);\n`,
      ], { type: "text/javascript" }),
    );
    return Array.from({ length: count }, () => {
      const worker = new Worker(script!, { type: "module" });
      const slot: Slot = { worker, busy: new Map() };
      worker.onmessage = (event) => {
        const { id, out, error, back } = event.data;
        if (back && spare.length < 256) spare.push(back);
        const job = slot.busy.get(id);
        if (!job) return;
        slot.busy.delete(id);
        if (error !== undefined) {
          job.reject(
            new Qcow2Error(
              "UNSUPPORTED_COMPRESSION",
              `Cannot write ${job.type} clusters: ${error}`,
            ),
          );
        } else {
          job.resolve(
            out !== null && out.length <= job.maxOutput ? out : undefined,
          );
        }
      };
      worker.onerror = (event) => {
        event.preventDefault();
        for (const job of slot.busy.values()) {
          job.reject(event.error ?? new Error(event.message));
        }
        slot.busy.clear();
      };
      return slot;
    });
  };
  const run = (type: "zlib" | "zstd"): Compressor => (input, maxOutput) => {
    if (share && turn++ % (count + 1) === count) {
      return compressHere(type, input, maxOutput);
    }
    if (slots.length === 0) slots = start();
    let slot = slots[0];
    for (const s of slots) if (s.busy.size < slot.busy.size) slot = s;
    return new Promise<Uint8Array | undefined>((resolve, reject) => {
      const id = nextId++;
      slot.busy.set(id, { type, input, maxOutput, resolve, reject });
      // One buffer for the one this job's result takes away.
      const give = spare.splice(0, 1);
      slot.worker.postMessage(
        { id, type, input, settings, maxOutput, give },
        give,
      );
    });
  };
  return {
    zlib: run("zlib"),
    zstd: run("zstd"),
    release(bytes: Uint8Array) {
      const buffer = bytes.buffer;
      if (
        buffer instanceof ArrayBuffer && buffer.byteLength > 0 &&
        spare.length < 256
      ) spare.push(buffer);
    },
    close() {
      for (const slot of slots) {
        slot.worker.terminate();
        for (const job of slot.busy.values()) {
          job.reject(new Error("the compressor pool was closed"));
        }
      }
      slots = [];
    },
  };
}
