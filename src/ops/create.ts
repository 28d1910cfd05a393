/**
 * Creating a new, empty qcow2 image, as `qemu-img create -f qcow2` does.
 *
 * @module
 */

import { nextTask, YIELD_EVERY } from "./convert.ts";
import {
  type CreateOptions,
  resolveCreateOptions,
  type ResolvedCreateOptions,
} from "../qcow2/create_options.ts";
import { type ImageTarget, Qcow2Writer } from "../qcow2/writer.ts";
import { fileSink } from "../io/sink.ts";
import type { NewLuks } from "../crypto/luks_create.ts";
import type { SeekableWriter } from "../io/source.ts";

/**
 * What {@linkcode createImage} made.
 *
 * @example
 * ```ts
 * import { type CreatedImage, createImage, memoryTarget } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const target = memoryTarget();
 * const created: CreatedImage = await createImage(target, { size: 1 << 30 });
 * assertEquals(created.fileSize, 0x30010); // as qemu-img create's 1 GiB image
 * assertEquals(created.options.clusterSize, 65536);
 * ```
 */
export interface CreatedImage {
  /** The options the image was made with, defaults filled in. */
  options: ResolvedCreateOptions;
  /** The file's length in bytes. */
  fileSize: number;
}

/**
 * Writes a new qcow2 image: the header, refcount table and block and L1
 * table that `qemu-img create` writes (byte for byte), and with
 * `preallocation` the L2 tables (`metadata`, refcount blocks placed as
 * `preallocate_co` allocates them) and zeroed data clusters (`falloc` and
 * `full` both write the zeros: there is no portable `fallocate`; laid out as
 * `qcow2_co_truncate` lays them out). Source: QEMU `qcow2_co_create`,
 * `preallocate_co`, `qcow2_co_truncate`, `qcow2_refcount_area`.
 *
 * @param target Where the image goes: an {@linkcode ImageTarget}, or a
 * seekable file such as a `Deno.FsFile` open for writing (emptied first).
 * @param options The size and the `-o` options; `luks` (from `createLuks`)
 * makes a LUKS-encrypted image, its LUKS area after the L1 table as
 * `qemu-img create -o encrypt.format=luks` places it.
 * @param run `signal` stops the preallocation of data clusters; the
 * promise then rejects with the signal's reason.
 * @returns The options used and the file's length.
 * @throws {RangeError} For options qemu-img refuses (see
 * {@linkcode resolveCreateOptions}).
 * @throws {Qcow2Error} The target's errors; the signal's reason once aborted.
 *
 * @example A 1 GiB image in memory, read back
 * ```ts
 * import { createImage, memoryTarget, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const target = memoryTarget();
 * await createImage(target, { size: 1 << 30, clusterSize: 4096 });
 * const image = await openImage(target.bytes());
 * assertEquals(image.size, 1 << 30);
 * ```
 */
export async function createImage(
  target: ImageTarget | SeekableWriter,
  options: CreateOptions & { luks?: NewLuks },
  run: { signal?: AbortSignal } = {},
): Promise<CreatedImage> {
  if (!("writeAt" in target)) target = await fileSink(target);
  const resolved = resolveCreateOptions(options);
  const cs = resolved.clusterSize;
  const clusters = resolved.preallocation === "off"
    ? 0
    : Math.ceil(resolved.size / cs);
  const l2Entries = cs / (resolved.extendedL2 ? 16 : 8);
  const writer = new Qcow2Writer(
    target,
    resolved,
    clusters + Math.ceil(clusters / l2Entries),
    options.luks,
  );
  const zeros = resolved.preallocation === "falloc" ||
      resolved.preallocation === "full"
    ? new Uint8Array(cs)
    : undefined;
  // Writes may be synchronous: give the event loop a turn now and then,
  // so that an abort (Ctrl-C) is seen.
  const every = Math.max(1, Math.floor(YIELD_EVERY / cs));
  for (let c = 0; c < clusters; c++) {
    if (c % every === every - 1) {
      await nextTask();
      run.signal?.throwIfAborted();
    }
    await writer.add(c, "preallocated", zeros);
  }
  run.signal?.throwIfAborted();
  return {
    options: resolved,
    fileSize: await finishPreallocated(writer, target, resolved),
  };
}

/**
 * Finishes a preallocated image's writer. With `metadata`, the file ends
 * with the disk's last subcluster, and the bytes from the end of the guest
 * data to there are written as zeros, as QEMU's `preallocate_co` extends
 * the file to the guest bytes and qcow2 then fills up to the subcluster
 * (so that host block is allocated, as `qemu-img map` sees it). With
 * `falloc` and `full` it ends with the last cluster, whole; without
 * preallocation, with the last cluster placed.
 *
 * @returns The file's length.
 */
export async function finishPreallocated(
  writer: Qcow2Writer,
  target: ImageTarget,
  options: ResolvedCreateOptions,
): Promise<number> {
  const cs = options.clusterSize;
  const clusters = Math.ceil(options.size / cs);
  if (options.preallocation === "off" || clusters === 0) {
    return await writer.finish();
  }
  // Every cluster was placed: the last one's host offset.
  const lastHost = writer.lastHostOffset;
  if (lastHost === undefined) return await writer.finish();
  if (options.preallocation !== "metadata") {
    // falloc/full: the last cluster whole, even if data allocates only its
    // first subclusters (QEMU preallocates the file before writing data),
    // or the L2 tables after the data.
    return await writer.finish(writer.endPlacement());
  }
  const subcluster = options.extendedL2 ? cs / 32 : cs;
  const last = (clusters - 1) * cs;
  const guestEnd = lastHost + (options.size - last);
  const end = lastHost +
    Math.ceil((options.size - last) / subcluster) * subcluster;
  if (end > guestEnd) {
    await target.writeAt(guestEnd, new Uint8Array(end - guestEnd));
  }
  // Refcount blocks QEMU allocated after the last data (it writes them:
  // the file reaches their end).
  const placed = writer.endPlacement();
  return await writer.finish(placed > lastHost + cs ? placed : end);
}

/** An {@linkcode ImageTarget} that keeps the image in memory. */
export interface MemoryTarget extends ImageTarget {
  /** The image's bytes so far (after `finish`: the whole file). */
  bytes(): Uint8Array;
}

/**
 * A target that builds the image in memory: for tests, browsers, or
 * images sent elsewhere once made.
 *
 * @returns The target; `bytes()` gives the file.
 *
 * @example
 * ```ts
 * import { createImage, memoryTarget, readHeader } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const target = memoryTarget();
 * await createImage(target, { size: 1 << 20, compat: "0.10" });
 * assertEquals((await readHeader(target.bytes())).version, 2);
 * ```
 */
export function memoryTarget(): MemoryTarget {
  let file = new Uint8Array(0);
  let length = 0;
  const reserve = (size: number) => {
    if (size <= file.length) return;
    const grown = new Uint8Array(Math.max(size, file.length * 2));
    grown.set(file.subarray(0, length));
    file = grown;
  };
  return {
    writeAt(position, bytes) {
      reserve(position + bytes.length);
      file.set(bytes, position);
      length = Math.max(length, position + bytes.length);
      return Promise.resolve();
    },
    finish(size) {
      reserve(size);
      file.fill(0, size, length);
      length = size;
      return Promise.resolve();
    },
    bytes: () => file.subarray(0, length),
  };
}
