/**
 * `compare`: whether two disks hold the same bytes, as `qemu-img compare`
 * decides it (QEMU 7.2 qemu-img.c `img_compare`, `compare_buffers`,
 * `check_empty_sectors`): both disks are walked by block status, runs that
 * read as zeros in both are skipped unread, runs allocated in both are read
 * and compared, and a run allocated in one only must read as zeros there.
 *
 * @module
 */

import type { DiskImage } from "../disk.ts";
import type { ByteSource } from "../io/source.ts";
import {
  type HostAllocation,
  type MapEntry,
  mapImage,
  mapSize,
} from "./map.ts";

/** Fast byte tests, for a runtime that has them (e.g. `Buffer.equals`). */
export interface ByteTests {
  /** Whether `a` and `b` (of one length) hold the same bytes. */
  equal(a: Uint8Array, b: Uint8Array): boolean;
  /** Whether every byte of `a` is zero. */
  isZero(a: Uint8Array): boolean;
}

/**
 * How to compare.
 *
 * @example A strict comparison
 * ```ts
 * import type { CompareOptions } from "@qcow2/qcow2";
 *
 * const options: CompareOptions = { strict: true };
 * ```
 */
export interface CompareOptions {
  /**
   * qemu-img's `-s`: disks of different sizes differ, and so do runs whose
   * block status (allocated, data, zero, offset known) differs.
   */
  strict?: boolean;
  /** What the file system tells about each file (see `mapImage`). */
  allocation?: (file: ByteSource) => HostAllocation | undefined;
  /** Faster byte tests than the portable ones (same answers). */
  bytes?: ByteTests;
  /** Bytes read from each disk at a time (default 2 MiB, as qemu-img). */
  chunkSize?: number;
  /** Told the bytes walked so far and the larger disk's size. */
  onProgress?: (done: number, total: number) => void;
  /** Stops the comparison. */
  signal?: AbortSignal;
}

/**
 * The answer of {@linkcode compareImages}, as `qemu-img compare` prints it:
 * `identical` ("Images are identical.", exit 0); `content` ("Content
 * mismatch at offset N!", exit 1); and in strict mode `size` ("Strict mode:
 * Image size mismatch!") and `status` ("Strict mode: Offset N block status
 * mismatch!"). `sizeMismatch` says that qemu-img printed "Warning: Image
 * size mismatch!" first (sizes differ and the common part is identical).
 *
 * @example Reading a result
 * ```ts
 * import type { CompareResult } from "@qcow2/qcow2";
 *
 * const result: CompareResult = { kind: "content", offset: 4096, sizeMismatch: false };
 * ```
 */
export type CompareResult =
  | { kind: "identical"; sizeMismatch: boolean }
  | { kind: "content"; offset: number; sizeMismatch: boolean }
  | { kind: "size" }
  | { kind: "status"; offset: number };

const SECTOR = 512;

/** First sector (index into `a`) where `a` and `b` differ, or -1. */
function firstDifferentSector(a: Uint8Array, b: Uint8Array): number {
  const words = a.length >>> 2;
  if (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) {
    const u = new Int32Array(a.buffer, a.byteOffset, words);
    const v = new Int32Array(b.buffer, b.byteOffset, words);
    for (let s = 0; s < words; s += SECTOR / 4) {
      const end = Math.min(words, s + SECTOR / 4);
      let diff = 0;
      for (let i = s; i < end; i++) diff |= u[i] ^ v[i];
      if (diff !== 0) return s * 4;
    }
  }
  for (
    let i = (a.byteOffset % 4 === 0 && b.byteOffset % 4 === 0) ? words * 4 : 0;
    i < a.length;
    i++
  ) {
    if (a[i] !== b[i]) return i - (i % SECTOR);
  }
  return -1;
}

/** First sector (index into `a`) holding a non-zero byte, or -1. */
function firstNonZeroSector(a: Uint8Array): number {
  const words = a.length >>> 2;
  if (a.byteOffset % 4 === 0) {
    const u = new Int32Array(a.buffer, a.byteOffset, words);
    for (let s = 0; s < words; s += SECTOR / 4) {
      const end = Math.min(words, s + SECTOR / 4);
      let any = 0;
      for (let i = s; i < end; i++) any |= u[i];
      if (any !== 0) return s * 4;
    }
  }
  for (let i = a.byteOffset % 4 === 0 ? words * 4 : 0; i < a.length; i++) {
    if (a[i] !== 0) return i - (i % SECTOR);
  }
  return -1;
}

/** The portable byte tests: 32-bit words, a sector at a time. */
export const portableByteTests: ByteTests = {
  equal: (a, b) => firstDifferentSector(a, b) < 0,
  isZero: (a) => firstNonZeroSector(a) < 0,
};

/** Block status flags as QEMU compares them in strict mode. */
function status(e: MapEntry, size: number): string {
  return [
    e.present,
    e.data,
    e.zero,
    e.offset !== undefined,
    e.start + e.length === size,
  ].join();
}

/** Reads `[position, position + buffer.length)`, zeros past the disk's end. */
async function readPadded(
  image: DiskImage,
  position: number,
  buffer: Uint8Array,
): Promise<void> {
  const inside = Math.max(0, Math.min(buffer.length, image.size - position));
  if (inside > 0) await image.read(position, buffer.subarray(0, inside));
  buffer.fill(0, inside);
}

/** Walks a disk's block status: the entry at any offset, in order. */
class StatusWalk {
  #entries: AsyncGenerator<MapEntry>;
  #current?: MapEntry;
  constructor(image: DiskImage, options: CompareOptions, end: number) {
    this.#entries = mapImage(image, {
      length: end,
      allocation: options.allocation,
    });
  }
  /** The entry that holds `offset` (offsets must not go backwards). */
  async at(offset: number): Promise<MapEntry> {
    while (
      !this.#current ||
      this.#current.start + this.#current.length <= offset
    ) {
      const next = await this.#entries.next();
      if (next.done) throw new RangeError(`no block status at ${offset}`);
      this.#current = next.value;
    }
    return this.#current;
  }
  async close(): Promise<void> {
    await this.#entries.return(undefined);
  }
}

/**
 * Compares two disks as `qemu-img compare` does: the same answer, the same
 * mismatch offset (the first 512-byte sector that differs), and no reads of
 * what block status says is zero in both.
 *
 * @param a The first disk (IMG1).
 * @param b The second disk (IMG2).
 * @param options Strict mode, host file allocation, fast byte tests.
 * @returns What qemu-img would say.
 * @throws {Qcow2Error} If either image is invalid where it is read.
 *
 * @example Two images with the same contents
 * ```ts
 * import { compareImages, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../../tests/fixtures/", import.meta.url);
 * const zlib = await openImage(await Deno.readFile(new URL("zlib.qcow2", dir)));
 * const zstd = await openImage(await Deno.readFile(new URL("zstd.qcow2", dir)));
 * assertEquals(await compareImages(zlib, zstd), { kind: "identical", sizeMismatch: false });
 * ```
 */
export async function compareImages(
  a: DiskImage,
  b: DiskImage,
  options: CompareOptions = {},
): Promise<CompareResult> {
  const size1 = mapSize(a);
  const size2 = mapSize(b);
  if (options.strict && size1 !== size2) return { kind: "size" };
  const tests = options.bytes ?? portableByteTests;
  const chunkSize = options.chunkSize ?? 2 * 1024 * 1024;
  const common = Math.min(size1, size2);
  const total = Math.max(size1, size2);
  const buf1 = new Uint8Array(chunkSize);
  const buf2 = new Uint8Array(chunkSize);

  /** Checks that `[from, to)` of `image` reads as zeros. */
  const checkEmpty = async (image: DiskImage, from: number, to: number) => {
    for (let at = from; at < to; at += chunkSize) {
      options.signal?.throwIfAborted();
      const part = buf1.subarray(0, Math.min(chunkSize, to - at));
      await readPadded(image, at, part);
      if (!tests.isZero(part)) return at + firstNonZeroSector(part);
    }
    return -1;
  };

  const walk1 = new StatusWalk(a, options, size1);
  const walk2 = new StatusWalk(b, options, size2);
  try {
    let offset = 0;
    while (offset < common) {
      options.signal?.throwIfAborted();
      const e1 = await walk1.at(offset);
      const e2 = await walk2.at(offset);
      const end = Math.min(e1.start + e1.length, e2.start + e2.length, common);
      if (options.strict && status(e1, size1) !== status(e2, size2)) {
        return { kind: "status", offset };
      }
      if (e1.zero && e2.zero) {
        // Zeros in both: nothing to read.
      } else if (e1.present === e2.present) {
        if (e1.present) {
          for (let at = offset; at < end; at += chunkSize) {
            options.signal?.throwIfAborted();
            const n = Math.min(chunkSize, end - at);
            const p1 = buf1.subarray(0, n);
            const p2 = buf2.subarray(0, n);
            await readPadded(a, at, p1);
            await readPadded(b, at, p2);
            if (!tests.equal(p1, p2)) {
              return {
                kind: "content",
                offset: at + firstDifferentSector(p1, p2),
                sizeMismatch: false,
              };
            }
            options.onProgress?.(at + n, total);
          }
        }
      } else {
        const bad = await checkEmpty(e1.present ? a : b, offset, end);
        if (bad >= 0) {
          return { kind: "content", offset: bad, sizeMismatch: false };
        }
      }
      offset = end;
      options.onProgress?.(offset, total);
    }
    if (size1 === size2) return { kind: "identical", sizeMismatch: false };
    // The larger disk's tail must read as zeros.
    const [over, walk] = size1 > size2 ? [a, walk1] : [b, walk2];
    while (offset < total) {
      options.signal?.throwIfAborted();
      const e = await walk.at(offset);
      const end = Math.min(e.start + e.length, total);
      if (e.present && !e.zero) {
        const bad = await checkEmpty(over, offset, end);
        if (bad >= 0) {
          return { kind: "content", offset: bad, sizeMismatch: true };
        }
      }
      offset = end;
      options.onProgress?.(offset, total);
    }
    return { kind: "identical", sizeMismatch: true };
  } finally {
    await walk1.close();
    await walk2.close();
  }
}
