/**
 * The data a `Qcow2Writer` writes to its target: bytes copied
 * into batches of contiguous bytes, or, with a target that has `allocate`,
 * bytes in the target's own memory written where they lie, as runs; with
 * such a target, writes are left running while the next ones are made
 * ready (the target lands writes that overlap in the order given).
 *
 * @module
 */

import type { ImageTarget } from "./writer.ts";

/** A buffer from the target's `allocate`, and the last write started from it. */
interface Allocated {
  view: Uint8Array;
  last?: WriteBehind;
}

/** A write left running by the writer (with a target that has `allocate`). */
interface WriteBehind {
  /** The batch buffer written, to fill again once done. */
  batch?: Uint8Array;
  /** Settles when written; never rejects (see `failure`). */
  written: Promise<void>;
  done: boolean;
  failure?: unknown;
}

/** Bytes gathered before one write to the target. */
const WRITE_BATCH = 1024 * 1024;

/** Batch writes left running at once, with a target that has `allocate`. */
const BATCHES_BEHIND = 4;

/**
 * The writes of one image's data (see the module's text). Internal to the
 * writer.
 */
export class DataWrites {
  #target: ImageTarget;
  #batch: Uint8Array = new Uint8Array(0);
  #batchStart = 0;
  #batchLength = 0;
  /** Writes left running, oldest first (only with `allocate`). */
  #behind: WriteBehind[] = [];
  /** Batch buffers written, to fill again. */
  #spareBatches: Uint8Array[] = [];
  /**
   * Buffers from `allocate()` (their bytes are written where they lie), and
   * the last write started from each. A target may cut them from one
   * memory, so a view is matched by its memory and its place in it. Kept
   * by memory, weakly: a buffer the caller gives up is not held here.
   */
  #allocated = new WeakMap<ArrayBufferLike, Allocated[]>();
  /** Contiguous bytes of one such buffer, gathered for one write. */
  #run:
    | {
      position: number;
      bytes: Uint8Array;
      from: Allocated;
    }
    | undefined;

  /**
   * @param target Where the bytes go.
   */
  constructor(target: ImageTarget) {
    this.#target = target;
  }

  /**
   * A buffer for bytes that `write` writes where they lie, without a
   * copy: the target's own memory where it has `allocate`, else a plain
   * buffer (whose bytes `write` copies). Before filling it again, call
   * {@linkcode DataWrites.release}.
   *
   * @param size Its length in bytes.
   * @returns The buffer.
   */
  allocate(size: number): Uint8Array {
    const { allocate } = this.#target;
    if (!allocate) return new Uint8Array(size);
    const bytes = allocate.call(this.#target, size);
    // A view over the place of an earlier one: the target reused it.
    const end = bytes.byteOffset + bytes.length;
    const views = (this.#allocated.get(bytes.buffer) ?? []).filter((a) =>
      a.view.byteOffset >= end ||
      a.view.byteOffset + a.view.length <= bytes.byteOffset
    );
    views.push({ view: bytes });
    this.#allocated.set(bytes.buffer, views);
    return bytes;
  }

  /**
   * Waits until every byte of `buffer` (from {@linkcode allocate}) given to
   * `write` is written, so that it may be filled again.
   *
   * @param buffer A buffer from `allocate`.
   * @throws What a write failed with.
   */
  async release(buffer: Uint8Array): Promise<void> {
    const from = this.#allocatedOf(buffer);
    if (this.#run && this.#run.from === from) this.#startRun();
    const last = from?.last;
    if (!last) return;
    await last.written;
    if (last.failure !== undefined) throw last.failure;
  }

  /**
   * Starts the writes of the bytes still gathered (a batch, a run in the
   * target's memory), then waits for every write left running and fails
   * with the first failure.
   */
  async settle(): Promise<void> {
    await this.#flushBatch();
    this.#startRun();
    const behind = this.#behind;
    this.#behind = [];
    await Promise.all(behind.map((b) => b.written));
    const failed = behind.find((b) => b.failure !== undefined);
    if (failed) throw failed.failure;
    for (const b of behind) if (b.batch) this.#spareBatches.push(b.batch);
  }

  /**
   * Starts writing `bytes` (in the target's memory) at `position`, left
   * running: `#behind` keeps it until it is done.
   */
  #startWrite(
    position: number,
    bytes: Uint8Array,
    batch?: Uint8Array,
    from = this.#allocatedOf(bytes),
  ): WriteBehind {
    // Those done already leave the list (a failure is kept for `settle`).
    while (this.#behind.length > 1 && this.#behind[0].done) {
      const done = this.#behind[0];
      if (done.failure !== undefined) break;
      this.#behind.shift();
      if (done.batch) this.#spareBatches.push(done.batch);
    }
    const write: WriteBehind = {
      batch,
      written: Promise.resolve(),
      done: false,
    };
    write.written = this.#target.writeAt(position, bytes).then(
      () => {
        write.done = true;
      },
      (e) => {
        write.done = true;
        write.failure = e;
      },
    );
    this.#behind.push(write);
    if (from) from.last = write;
    return write;
  }

  /** The buffer from `allocate()` that holds `bytes`, if one does. */
  #allocatedOf(
    bytes: Uint8Array,
  ): Allocated | undefined {
    for (const a of this.#allocated.get(bytes.buffer) ?? []) {
      if (
        bytes.byteOffset >= a.view.byteOffset &&
        bytes.byteOffset + bytes.length <= a.view.byteOffset + a.view.length
      ) return a;
    }
    return undefined;
  }

  /** Starts writing the run of bytes gathered in the target's memory. */
  #startRun(): void {
    const run = this.#run;
    if (!run) return;
    this.#run = undefined;
    this.#startWrite(run.position, run.bytes, undefined, run.from);
  }

  /**
   * An empty batch buffer: one written already, a new one while fewer than
   * `BATCHES_BEHIND` batches are being written, else the oldest one's once
   * it is done.
   */
  async #nextBatch(): Promise<Uint8Array> {
    const spare = this.#spareBatches.pop();
    if (spare) return spare;
    const { allocate } = this.#target;
    if (!allocate) return new Uint8Array(WRITE_BATCH);
    const batches = this.#behind.filter((b) => b.batch);
    if (batches.length < BATCHES_BEHIND) {
      return allocate.call(this.#target, WRITE_BATCH);
    }
    const oldest = batches[0];
    await oldest.written;
    if (oldest.failure !== undefined) throw oldest.failure;
    this.#behind.splice(this.#behind.indexOf(oldest), 1);
    return oldest.batch!;
  }

  /**
   * Queues data for the target: bytes in the target's memory as runs
   * written where they lie, others copied into batches of contiguous bytes.
   */
  async write(position: number, bytes: Uint8Array): Promise<void> {
    const from = this.#allocatedOf(bytes);
    if (from) {
      const run = this.#run;
      if (
        run && run.from === from &&
        run.bytes.byteOffset + run.bytes.length === bytes.byteOffset &&
        run.position + run.bytes.length === position
      ) {
        run.bytes = new Uint8Array(
          bytes.buffer,
          run.bytes.byteOffset,
          run.bytes.length + bytes.length,
        );
        return;
      }
      this.#startRun();
      this.#run = { position, bytes, from };
      return;
    }
    if (
      this.#batchLength > 0 &&
      (position !== this.#batchStart + this.#batchLength ||
        this.#batchLength + bytes.length > this.#batch.length)
    ) {
      await this.#flushBatch();
    }
    if (bytes.length >= WRITE_BATCH) {
      await this.#target.writeAt(position, bytes);
      return;
    }
    if (this.#batch.length === 0) this.#batch = await this.#nextBatch();
    if (this.#batchLength === 0) this.#batchStart = position;
    this.#batch.set(bytes, this.#batchLength);
    this.#batchLength += bytes.length;
  }

  /**
   * Writes the batch. A target with `allocate` is left writing it while
   * the next batch fills in another buffer; any other is awaited, and its
   * buffer filled again.
   */
  async #flushBatch(): Promise<void> {
    if (this.#batchLength === 0) return;
    const n = this.#batchLength;
    this.#batchLength = 0;
    const bytes = this.#batch.subarray(0, n);
    if (!this.#target.allocate) {
      await this.#target.writeAt(this.#batchStart, bytes);
      return;
    }
    this.#startWrite(this.#batchStart, bytes, this.#batch);
    this.#batch = new Uint8Array(0); // the next one is taken when needed
  }
}
