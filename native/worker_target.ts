/**
 * A new image's file written by a worker thread: the calling thread reads
 * the source and fills the next buffer while the worker writes the last one
 * (`qemu-img convert` overlaps its reads and writes on a thread pool the
 * same way). The bytes lie in memory shared with the worker, so none is
 * copied on the way. Deno only; kept out of `src/`.
 *
 * Requests travel as messages. A ring in shared memory with `Atomics`
 * measured slower here (raw → qcow2 of the bench image: 0.50 s against
 * 0.39 s): the calling thread lost more time than the messages cost. With
 * FFI on Linux, the shared memory is backed by huge pages and each write's
 * blocks are reserved with `fallocate` first: both cut system time (figures
 * in bench/README.md, "Writing qcow2").
 *
 * The worker runs {@linkcode writerMain}'s source text from a `blob:` URL,
 * so starting it needs no read permission for this file; hence
 * `writerMain` refers to nothing outside itself. It opens the file by path
 * for writing, with the program's permissions.
 *
 * @module
 */

import type { ImageTarget } from "../src/qcow2/writer.ts";
import { libcLoader } from "./libc.ts";

/** Shared memory laid out at a time: the writer's read buffers and batches. */
const POOL_BYTES = 8 * 1024 * 1024;
/** A transparent huge page (x86-64). */
const HUGE_PAGE = 2 * 1024 * 1024;
const MADV_HUGEPAGE = 14;

const loadLibc = libcLoader({
  madvise: { parameters: ["pointer", "usize", "i32"], result: "i32" },
});

/**
 * Asks Linux to back `length` bytes of `memory`, from the returned offset
 * on, with huge pages (`madvise(MADV_HUGEPAGE)`; `memory` holds a huge page
 * more than `length`, for the alignment): copies into and out of it miss
 * the TLB far less. Without FFI, or if refused, the offset is 0.
 */
function hugePages(memory: SharedArrayBuffer, length: number): number {
  const libc = loadLibc();
  const pointer = libc && Deno.UnsafePointer.of(new Uint8Array(memory));
  if (!libc || !pointer) return 0;
  const address = BigInt(Deno.UnsafePointer.value(pointer));
  const huge = BigInt(HUGE_PAGE);
  const aligned = (address + huge - 1n) & ~(huge - 1n);
  const done = libc.symbols.madvise(
    Deno.UnsafePointer.create(aligned),
    BigInt(length),
    MADV_HUGEPAGE,
  );
  return done === 0 ? Number(aligned - address) : 0;
}

/** A message to the writing worker. */
type WriterRequest =
  | { open: string }
  | { buffer: number; shared: SharedArrayBuffer }
  | { close: number }
  | {
    id: number;
    position: number;
    /** A shared buffer's number, with the bytes' offset and length there. */
    buffer: number;
    offset: number;
    length: number;
  };

/** The worker's reply: the request done, or why it failed. */
interface WriterReply {
  id: number;
  error?: { name: string; message: string };
}

/**
 * The worker's whole program: opens the file named by the first message,
 * then writes each request's bytes (from a shared buffer) at its position,
 * in order, and answers. It must not refer to anything outside itself.
 */
export function writerMain(): void {
  const scope = globalThis as unknown as {
    onmessage: ((event: MessageEvent<WriterRequest>) => void) | null;
    postMessage(message: WriterReply): void;
  };
  let file: Deno.FsFile | undefined;
  let opening: unknown;
  const buffers = new Map<number, Uint8Array>();
  /**
   * Linux's `fallocate`, where FFI is allowed: the blocks of a write
   * reserved in one call before it, rather than page by page by ext4's
   * delayed allocation (less system time).
   */
  let reserve = (_position: number, _length: number) => {};
  let release = () => {};
  const withFallocate = (path: string) => {
    if (
      Deno.build.os !== "linux" ||
      Deno.permissions.querySync({ name: "ffi" }).state !== "granted"
    ) return;
    const libc = Deno.dlopen("libc.so.6", {
      open: { parameters: ["buffer", "i32"], result: "i32" },
      close: { parameters: ["i32"], result: "i32" },
      fallocate: { parameters: ["i32", "i32", "i64", "i64"], result: "i32" },
    });
    const fd = libc.symbols.open(
      new TextEncoder().encode(path + "\0"),
      1, // O_WRONLY
    );
    if (fd < 0) return libc.close();
    // A failure (a file system without it) leaves the work to the write.
    reserve = (position, length) =>
      void libc.symbols.fallocate(fd, 0, BigInt(position), BigInt(length));
    release = () => {
      libc.symbols.close(fd);
      libc.close();
    };
  };
  scope.onmessage = ({ data }) => {
    if ("open" in data) {
      try {
        file = Deno.openSync(data.open, { write: true });
      } catch (e) {
        opening = e;
        return;
      }
      try {
        withFallocate(data.open);
      } catch {
        // No FFI: the writes allocate.
      }
      return;
    }
    if ("shared" in data) {
      buffers.set(data.buffer, new Uint8Array(data.shared));
      return;
    }
    if ("close" in data) {
      // After every write asked before: nothing of this thread stays open.
      try {
        file?.close();
      } finally {
        release();
        scope.postMessage({ id: data.close });
      }
      return;
    }
    try {
      if (!file) throw opening;
      const bytes = buffers.get(data.buffer)!.subarray(
        data.offset,
        data.offset + data.length,
      );
      reserve(data.position, data.length);
      file.seekSync(data.position, Deno.SeekMode.Start);
      let done = 0;
      while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
      scope.postMessage({ id: data.id });
    } catch (e) {
      const error = e as Error | undefined;
      scope.postMessage({
        id: data.id,
        error: {
          name: error?.name ?? "Error",
          message: error?.message ?? String(e),
        },
      });
    }
  };
}

/** An {@linkcode ImageTarget} over a worker, and a way to stop it. */
export interface WorkerTarget extends ImageTarget {
  /**
   * Stops the worker once the writes asked for are done (it closes what it
   * opened first); later writes reject.
   */
  close(): Promise<void>;
}

/** The error a worker sent, as the runtime's class where it has one. */
function rebuilt(error: { name: string; message: string }): Error {
  const errors = Deno.errors as unknown as Record<
    string,
    new (message: string) => Error
  >;
  const Class = Object.hasOwn(errors, error.name) ? errors[error.name] : Error;
  return new Class(error.message);
}

/**
 * Writes `file` (open at `path`, emptied first if it has bytes) with a
 * worker thread. Bytes in buffers from `allocate` are written by the
 * worker, in the order given, without a copy; other bytes (metadata) are
 * written by the calling thread once the worker's writes are done.
 * `finish` waits for them all, then sets the length.
 *
 * @param file The destination, open for writing (it stays open; the caller
 *   closes it).
 * @param path Its path, which the worker opens for writing too.
 * @returns The target; `close()` it in every case.
 * @throws The runtime's error if `file` cannot be measured or emptied;
 * writes reject with the runtime's error (`Deno.errors.*` by name).
 */
export async function workerTarget(
  file: Deno.FsFile,
  path: string,
): Promise<WorkerTarget> {
  // (A seek, not a stat: stat needs read access, which DST may not give.)
  if (await file.seek(0, Deno.SeekMode.End) !== 0) await file.truncate(0);
  const script = URL.createObjectURL(
    new Blob([`(${writerMain})();`], { type: "text/javascript" }),
  );
  const worker = new Worker(script, { type: "module" });
  URL.revokeObjectURL(script);
  const pending = new Map<
    number,
    { resolve(): void; reject(e: unknown): void }
  >();
  let nextId = 0;
  let stopped: Error | undefined;
  const stop = (e: Error) => {
    stopped ??= e;
    for (const job of pending.values()) job.reject(stopped);
    pending.clear();
  };
  worker.onmessage = ({ data }: MessageEvent<WriterReply>) => {
    const job = pending.get(data.id);
    if (!job) return;
    pending.delete(data.id);
    if (data.error) job.reject(rebuilt(data.error));
    else job.resolve();
  };
  worker.onerror = (event) => {
    event.preventDefault();
    stop(new Error(`the writing thread stopped: ${event.message}`));
  };
  worker.postMessage({ open: path } satisfies WriterRequest);
  /** Shared memory given to the worker, by its number. */
  const shared = new Map<ArrayBufferLike, number>();
  /** The memory buffers are cut from, and what is left of it. */
  let pool: SharedArrayBuffer | undefined;
  let used = 0;
  let end = 0;
  /** The last write sent: the worker answers in order. */
  let last: Promise<void> = Promise.resolve();
  return {
    allocate(size: number): Uint8Array {
      if (!pool || used + size > end) {
        const length = Math.max(POOL_BYTES, size);
        pool = new SharedArrayBuffer(length + HUGE_PAGE);
        used = hugePages(pool, length);
        end = used + length;
        const buffer = shared.size;
        shared.set(pool, buffer);
        worker.postMessage({ buffer, shared: pool } satisfies WriterRequest);
      }
      used += size;
      return new Uint8Array(pool, used - size, size);
    },
    async writeAt(position: number, bytes: Uint8Array): Promise<void> {
      const buffer = shared.get(bytes.buffer);
      if (buffer === undefined) {
        // Metadata: written here once the worker is done, as asked.
        await last.catch(() => {});
        if (stopped) throw stopped;
        file.seekSync(position, Deno.SeekMode.Start);
        let done = 0;
        while (done < bytes.length) {
          done += file.writeSync(bytes.subarray(done));
        }
        return;
      }
      if (stopped) throw stopped;
      const id = nextId++;
      last = new Promise<void>((resolve, reject) => {
        pending.set(id, { resolve, reject });
      });
      worker.postMessage(
        {
          id,
          position,
          buffer,
          offset: bytes.byteOffset,
          length: bytes.length,
        } satisfies WriterRequest,
      );
      return await last;
    },
    async finish(size: number): Promise<void> {
      await last;
      if (stopped) throw stopped;
      await file.truncate(size);
    },
    async close() {
      if (!stopped) {
        stop(new Error("the writing thread was stopped"));
        // The worker closes its file after the writes sent before; a worker
        // that fails meanwhile settles this too (through onerror).
        const id = nextId++;
        const closed = new Promise<void>((resolve) => {
          pending.set(id, { resolve, reject: () => resolve() });
        });
        worker.postMessage({ close: id } satisfies WriterRequest);
        await closed;
      }
      worker.terminate();
    },
  };
}
