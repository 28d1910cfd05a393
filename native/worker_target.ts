/**
 * A new image's file written by a worker thread: the calling thread reads
 * the source and fills the next buffer while the worker writes the last one
 * (`qemu-img convert` overlaps its reads and writes on a thread pool the
 * same way). The bytes lie in memory shared with the worker, so none is
 * copied on the way. Deno only; kept out of `src/`.
 *
 * Write requests travel through a ring in shared memory, each side waking
 * the other with `Atomics.waitAsync`/`notify`: the calling thread spends
 * about a third of a message's cost per request, and nothing per answer
 * (a message each way cost it about 50 ms of CPU per GiB written; an
 * earlier ring, in bench/README.md, measured slower than messages).
 * With FFI on Linux, the shared memory is backed by huge pages and each
 * write's blocks are reserved with `fallocate` first: both cut system time
 * (figures in bench/README.md, "Writing qcow2").
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

/**
 * Where the calling thread and the worker meet, in shared memory: two
 * counters (`Int32Array`) and a ring of write requests (`Float64Array`,
 * {@linkcode SLOT} numbers each). The calling thread fills the next slot
 * and raises `POSTED`; the worker writes, in order, and raises `WRITTEN`.
 * Each side sleeps in `Atomics.waitAsync` on the other's counter. Cheaper
 * for the calling thread than a message per write (no copy of the request,
 * no event per answer).
 */
const POSTED = 0;
const WRITTEN = 1;
/** Numbers per request: position, buffer, offset, length. */
const SLOT = 4;
/** Requests the ring holds: far more than the writer keeps running. */
const RING_SLOTS = 1024;
/**
 * The counters' first value: 256 requests short of where they wrap (2^31),
 * so that every conversion and test of more than 256 requests goes through
 * the wrap.
 */
const FIRST_REQUEST = 0x7fffff00;

/** The ring's layout, told to the worker (its program stands alone). */
interface RingLayout {
  posted: number;
  written: number;
  first: number;
  slot: number;
  slots: number;
}

/** A message to the writing worker (the writes come through the ring). */
type WriterRequest =
  | { open: string; ring: SharedArrayBuffer; layout: RingLayout }
  | { buffer: number; shared: SharedArrayBuffer }
  | { close: true };

/** The worker's message: why it stopped writing, or that it closed. */
type WriterReply =
  | { error: { name: string; message: string; code?: string } }
  | { closed: true };

/**
 * The worker's whole program: opens the file named by the first message,
 * then writes each request of the ring (bytes of a shared buffer) at its
 * position, in order, counting them done. It must not refer to anything
 * outside itself.
 */
export function writerMain(): void {
  const scope = globalThis as unknown as {
    onmessage: ((event: MessageEvent<WriterRequest>) => void) | null;
    postMessage(message: WriterReply): void;
  };
  let file: Deno.FsFile | undefined;
  let opening: unknown;
  let counters: Int32Array | undefined;
  let requests: Float64Array | undefined;
  let ring: RingLayout | undefined;
  let closing = false;
  let onClose = () => {};
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
  /** Writes one request's bytes. */
  const write = (slot: number, bytes: Uint8Array) => {
    if (!file) throw opening;
    const position = requests![slot];
    reserve(position, bytes.length);
    file.seekSync(position, Deno.SeekMode.Start);
    let done = 0;
    while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
  };
  /** Writes the requests as they come, until closed or failed. */
  const run = async () => {
    const counters_ = counters!;
    const { posted: POSTED, written: WRITTEN, slot: SLOT, slots } = ring!;
    let written = ring!.first;
    try {
      for (;;) {
        const posted = Atomics.load(counters_, POSTED);
        // (The counters wrap at 2^31: their difference, at most the ring's
        // size, does not.)
        while (((posted - written) | 0) > 0) {
          const slot = ((written >>> 0) % slots) * SLOT;
          const bytes = buffers.get(requests![slot + 1]);
          if (!bytes) {
            // Its buffer's message is still on its way: let it in.
            await new Promise((resolve) => setTimeout(resolve, 0));
            continue;
          }
          const offset = requests![slot + 2];
          write(slot, bytes.subarray(offset, offset + requests![slot + 3]));
          written = (written + 1) | 0;
          Atomics.store(counters_, WRITTEN, written);
          Atomics.notify(counters_, WRITTEN);
        }
        if (closing) break;
        const wait = Atomics.waitAsync(counters_, POSTED, posted);
        if (wait.async) await wait.value;
      }
    } catch (e) {
      const error = e as Error | undefined;
      scope.postMessage({
        error: {
          name: error?.name ?? "Error",
          message: error?.message ?? String(e),
          // The system's code (ENOSPC...), which says what went wrong.
          ...(typeof (error as { code?: unknown })?.code === "string"
            ? { code: (error as { code?: string }).code }
            : {}),
        },
      });
      // Nothing more is written: waits for close.
      if (!closing) await new Promise<void>((resolve) => onClose = resolve);
    }
    // After every write asked before close: nothing of this thread stays open.
    try {
      file?.close();
    } finally {
      release();
      scope.postMessage({ closed: true });
    }
  };
  scope.onmessage = ({ data }) => {
    if ("open" in data) {
      ring = data.layout;
      counters = new Int32Array(data.ring, 0, 2);
      requests = new Float64Array(data.ring, 8, ring.slots * ring.slot);
      try {
        file = Deno.openSync(data.open, { write: true });
        try {
          withFallocate(data.open);
        } catch {
          // No FFI: the writes allocate.
        }
      } catch (e) {
        opening = e;
      }
      void run();
      return;
    }
    if ("shared" in data) {
      buffers.set(data.buffer, new Uint8Array(data.shared));
      return;
    }
    closing = true;
    // Wakes the writing loop, which closes once the ring is written.
    if (counters) Atomics.notify(counters, ring!.posted);
    onClose();
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

/**
 * The error a worker sent, as the runtime's class where it has one, with the
 * system's code.
 */
function rebuilt(
  error: { name: string; message: string; code?: string },
): Error {
  const errors = Deno.errors as unknown as Record<
    string,
    new (message: string) => Error
  >;
  const Class = Object.hasOwn(errors, error.name) ? errors[error.name] : Error;
  const made = new Class(error.message);
  if (error.code !== undefined) {
    Object.assign(made, { code: error.code });
  }
  return made;
}

/**
 * Writes `file` (open at `path`, emptied first if it has bytes) with a
 * worker thread. Bytes in buffers from `allocate` are written by the
 * worker, in the order given, without a copy; other bytes (metadata) are
 * written by the calling thread at once, or, where a write still running
 * covers some of them, after it (an L2 table written mid-way does not stop
 * the reads for the worker's backlog). `finish` waits for them all, then
 * sets the length.
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
  const ring = new SharedArrayBuffer(8 + RING_SLOTS * SLOT * 8);
  const counters = new Int32Array(ring, 0, 2);
  const requests = new Float64Array(ring, 8, RING_SLOTS * SLOT);
  /** Writes asked for and not yet done, oldest first: each request's number. */
  const pending: {
    id: number;
    /** The bytes of the file it writes, [start, end). */
    start: number;
    end: number;
    resolve(): void;
    reject(e: unknown): void;
  }[] = [];
  let posted = FIRST_REQUEST;
  Atomics.store(counters, POSTED, posted);
  Atomics.store(counters, WRITTEN, posted);
  let stopped: Error | undefined;
  const stop = (e: Error) => {
    stopped ??= e;
    for (const job of pending.splice(0)) job.reject(stopped);
    // Wakes this thread's waits for a slot: they see `stopped`.
    Atomics.notify(counters, WRITTEN);
  };
  /** Settles the writes done; waits (one wait at a time) for the others. */
  let watching = false;
  const watch = () => {
    if (watching) return;
    const written = Atomics.load(counters, WRITTEN);
    let n = 0;
    while (n < pending.length && ((pending[n].id - written) | 0) < 0) n++;
    for (const job of pending.splice(0, n)) job.resolve();
    if (pending.length === 0 || stopped) return;
    watching = true;
    const wait = Atomics.waitAsync(counters, WRITTEN, written);
    const again = () => {
      watching = false;
      watch();
    };
    if (wait.async) wait.value.then(again);
    else again();
  };
  let closed: () => void = () => {};
  worker.onmessage = ({ data }: MessageEvent<WriterReply>) => {
    if ("error" in data) stop(rebuilt(data.error));
    else closed();
  };
  let dead = false;
  let closing = false;
  worker.onerror = (event) => {
    event.preventDefault();
    dead = true;
    stop(new Error(`the writing thread stopped: ${event.message}`));
    closed();
  };
  worker.postMessage(
    {
      open: path,
      ring,
      layout: {
        posted: POSTED,
        written: WRITTEN,
        first: FIRST_REQUEST,
        slot: SLOT,
        slots: RING_SLOTS,
      },
    } satisfies WriterRequest,
  );
  /** Shared memory given to the worker, by its number. */
  const shared = new Map<ArrayBufferLike, number>();
  /** The memory buffers are cut from, and what is left of it. */
  let pool: SharedArrayBuffer | undefined;
  let used = 0;
  let end = 0;
  /** A metadata write waiting for the worker: later writes wait for it. */
  let gate: Promise<void> | undefined;
  /** Writes `bytes` at `position` on this thread. */
  const writeHere = (position: number, bytes: Uint8Array) => {
    file.seekSync(position, Deno.SeekMode.Start);
    let done = 0;
    while (done < bytes.length) done += file.writeSync(bytes.subarray(done));
  };
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
      // After a metadata write that waits (below), in the order asked.
      while (gate) await gate.catch(() => {});
      const buffer = shared.get(bytes.buffer);
      if (buffer === undefined) {
        // Metadata (an L2 table filled, the tables at the end): written
        // here at once, unless a write still running covers some of its
        // bytes: then after it, and the writes asked later after this one.
        const end = position + bytes.length;
        if (!pending.some((job) => job.start < end && position < job.end)) {
          if (stopped) throw stopped;
          writeHere(position, bytes);
          return;
        }
        const written = last.catch(() => {}).then(() => {
          if (stopped) throw stopped;
          writeHere(position, bytes);
        });
        gate = written;
        try {
          return await written;
        } finally {
          if (gate === written) gate = undefined;
        }
      }
      if (stopped) throw stopped;
      // A full ring (never, with the writer's few buffers): wait for a slot.
      for (;;) {
        const written = Atomics.load(counters, WRITTEN);
        if (((posted - written) | 0) < RING_SLOTS) break;
        const wait = Atomics.waitAsync(counters, WRITTEN, written);
        if (wait.async) await wait.value;
        if (stopped) throw stopped;
      }
      const id = posted;
      const slot = ((id >>> 0) % RING_SLOTS) * SLOT;
      requests[slot] = position;
      requests[slot + 1] = buffer;
      requests[slot + 2] = bytes.byteOffset;
      requests[slot + 3] = bytes.length;
      last = new Promise<void>((resolve, reject) => {
        pending.push({
          id,
          start: position,
          end: position + bytes.length,
          resolve,
          reject,
        });
      });
      // (Wraps at 2^31, as the worker's count does; the ring's size divides
      // 2^32, so slots follow on.)
      posted = (posted + 1) | 0;
      Atomics.store(counters, POSTED, posted);
      Atomics.notify(counters, POSTED);
      watch();
      return await last;
    },
    async finish(size: number): Promise<void> {
      await last;
      if (stopped) throw stopped;
      await file.truncate(size);
    },
    async close() {
      if (!dead && !closing) {
        closing = true;
        stop(new Error("the writing thread was stopped"));
        // The worker closes its file after the writes posted before; a
        // worker that fails meanwhile settles this too (through onerror).
        const done = new Promise<void>((resolve) => closed = resolve);
        worker.postMessage({ close: true } satisfies WriterRequest);
        await done;
      }
      worker.terminate();
    },
  };
}
