/**
 * Opening a qcow2 image for writing: what QEMU refuses to write (qcow v1,
 * the corrupt bit, encryption), what it does first on a read-write open
 * (clear unknown autoclear bits, repair the refcounts of a dirty image), and
 * the stores writes go to.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import { openDisk, type OpenOptions } from "../open.ts";
import { probeSource } from "../probe.ts";
import {
  type ByteStore,
  fileHandleStore,
  type FsFileLike,
  fsFileStore,
  isByteStore,
  memoryStore,
  type ReadWriteFileHandleLike,
} from "../io/store.ts";
import { readHeader } from "./header.ts";
import { AUTOCLEAR, CRYPT_METHOD, HEADER, INCOMPATIBLE } from "./layout.ts";
import { WritableQcow2Image } from "./writable.ts";
import { repairRefcounts } from "./repair.ts";

/**
 * Anything an image can be opened for writing from: a {@linkcode ByteStore}
 * (`memoryStore`, `opfsStore`, your own), a `Deno.FsFile` or Node
 * `FileHandle` open for reading and writing, or bytes (copied into a
 * `memoryStore`; pass one of your own to get the bytes back).
 *
 * @example The forms a writable image takes
 * ```ts
 * import { memoryStore, openImage, type WritableInput } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/empty.qcow2", import.meta.url));
 * const inputs: WritableInput[] = [memoryStore(bytes), bytes];
 * for (const input of inputs) {
 *   const image = await openImage(input, { writable: true });
 *   assertEquals(image.writable, true);
 *   await image.close();
 * }
 * ```
 */
export type WritableInput =
  | ByteStore
  | FsFileLike
  | ReadWriteFileHandleLike
  | Uint8Array;

/**
 * Turns a {@linkcode WritableInput} into a {@linkcode ByteStore}.
 *
 * @param input The file.
 * @returns The store (not owning `input`: closing it leaves `input` open).
 * @throws {TypeError} For anything else.
 */
export async function toByteStore(input: WritableInput): Promise<ByteStore> {
  if (input instanceof Uint8Array) return memoryStore(input);
  if (isByteStore(input)) return input;
  if ("writeSync" in input && "seekSync" in input) return fsFileStore(input);
  if ("datasync" in input && "write" in input) {
    return await fileHandleStore(input);
  }
  throw new TypeError(
    "Cannot open qcow2 image for writing: give a ByteStore, a Deno FsFile, a Node FileHandle or bytes",
  );
}

/** Incompatible feature bits as masks. */
const DIRTY = 1n << BigInt(INCOMPATIBLE.dirty.bit);
const CORRUPT = 1n << BigInt(INCOMPATIBLE.corrupt.bit);
/**
 * Autoclear bits kept on a read-write open: only raw external data. QEMU
 * clears the bits it does not know; it keeps `bitmaps` because it updates
 * the bitmaps as it writes, which this library does not, so it clears that
 * bit too and QEMU then treats the bitmaps as inconsistent, as the spec
 * says a writer unaware of them must make it.
 */
const KEPT_AUTOCLEAR = 1n << BigInt(AUTOCLEAR.rawExternalData.bit);

function refuse(why: string): Qcow2Error {
  return new Qcow2Error(
    "NOT_WRITABLE",
    `Cannot open qcow2 image for writing: ${why}`,
  );
}

/**
 * Opens a qcow2 image read-write (what `openImage(input, { writable: true })`
 * does once it has a store).
 *
 * @param store The image file.
 * @param options As for reading; `openFile` is asked for a writable file
 * (`request.writable`) for the external data file.
 * @param closeStore Whether closing the image closes `store`.
 * @returns The image.
 * @throws {Qcow2Error} `NOT_WRITABLE` for qcow v1, a corrupt or encrypted
 * image, or a data file opened read-only; what reading it throws otherwise.
 */
export async function openWritable(
  store: ByteStore,
  options: OpenOptions = {},
  closeStore = false,
): Promise<WritableQcow2Image> {
  if (await probeSource(store) === "qcow") {
    throw refuse(
      "it is a qcow version 1 image, which QEMU writes only read-only (convert it to qcow2 first)",
    );
  }
  let header = await readHeader(store);
  if (header.incompatibleFeatures & CORRUPT) {
    throw refuse(
      "its corrupt bit is set (repair it with 'qemu-img check -r all' first)",
    );
  }
  if (header.cryptMethod === CRYPT_METHOD.aes) {
    throw refuse(
      "it is encrypted with legacy AES, which QEMU discourages and this library does not write (convert it to LUKS: convert -O qcow2 -o encrypt.format=luks)",
    );
  }
  let dataStore: ByteStore | undefined;
  const openFile = options.openFile;
  const disk = await openDisk(store, {
    ...options,
    snapshot: undefined,
    writable: true,
    openFile: openFile &&
      (async (path, request) => {
        const file = await openFile(path, request);
        if (request.kind === "data-file") {
          if (!isByteStore(file)) {
            file.close?.();
            throw refuse(
              `its external data file '${path}' was opened read-only`,
            );
          }
          dataStore = file;
        }
        return file;
      }),
  }, "qcow2");
  try {
    const v3 = header.version >= 3;
    const autoclear = header.autoclearFeatures & KEPT_AUTOCLEAR;
    if (v3 && autoclear !== header.autoclearFeatures) {
      await writeField(store, HEADER.autoclearFeatures.offset, autoclear);
      header = await readHeader(store);
    }
    if (v3 && (header.incompatibleFeatures & DIRTY)) {
      await repairRefcounts(
        store,
        header,
        disk.snapshots,
        dataStore !== undefined,
      );
      await writeField(
        store,
        HEADER.incompatibleFeatures.offset,
        header.incompatibleFeatures & ~DIRTY,
      );
      await store.flush?.();
      header = await readHeader(store);
    }
    return await WritableQcow2Image.open({
      header,
      store,
      dataStore,
      snapshots: disk.snapshots,
      backing: disk.backing,
      encryption: disk.encryption,
      codecs: options.codecs,
      l2CacheBytes: options.l2CacheBytes,
      close: async () => {
        disk.close();
        if (closeStore) await store.close?.();
      },
    });
  } catch (e) {
    disk.close();
    throw e;
  }
}

async function writeField(
  store: ByteStore,
  offset: number,
  value: bigint,
): Promise<void> {
  const bytes = new Uint8Array(8);
  new DataView(bytes.buffer).setBigUint64(0, value);
  await store.writeAt(offset, bytes);
  await store.flush?.();
}
