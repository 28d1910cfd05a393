/**
 * Opening an image: probe the file once, then hand it to its format's
 * opener, which reads the layer straight down and opens what it names
 * through the backing chain:
 *
 * - `src/probe.ts`: the format, from the first 8 bytes;
 * - `src/qcow2/open.ts`, `src/qcow/open.ts`, `src/raw.ts`: one opener per
 *   format (header → encryption → snapshot table → L1 table → data file →
 *   backing file → image);
 * - `src/chain.ts`: the backing chain (name resolution, loop check, depth
 *   limit, the caller's `openFile` hook, closing).
 *
 * @module
 */

import type { Codecs } from "./codecs/codecs.ts";
import type { CryptoProvider } from "./crypto/provider.ts";
import type { ByteSource } from "./io/source.ts";
import { BackingChain, type LayerOpener } from "./chain.ts";
import { type ImageFormat, probeSource } from "./probe.ts";
import { openQcow2 } from "./qcow2/open.ts";
import type { Qcow2Image } from "./qcow2/image.ts";
import { openQcow } from "./qcow/open.ts";
import type { QcowImage } from "./qcow/image.ts";
import { openRaw } from "./raw.ts";

/**
 * A file opened by an {@linkcode OpenFile} hook.
 *
 * @example Files opened for a backing chain are closed with the image
 * ```ts
 * import { bytesSource, openImage, type OpenedFile } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../tests/fixtures/layouts/", import.meta.url);
 * let open = 0;
 * const openFile = async (path: string): Promise<OpenedFile> => {
 *   const bytes = await Deno.readFile(new URL(path, dir));
 *   open++;
 *   return { ...bytesSource(bytes), close: () => open-- };
 * };
 * const image = await openImage(await Deno.readFile(new URL("chain_top.qcow2", dir)), { openFile });
 * assertEquals(open, 2); // chain_mid.qcow2 and chain_base.qcow2
 * image.close();
 * assertEquals(open, 0);
 * ```
 */
export interface OpenedFile extends ByteSource {
  /** Releases the file; called when the image that opened it is closed. */
  close?(): void;
}

/**
 * What an image asks an {@linkcode OpenFile} hook to open.
 *
 * @example The request for an external data file
 * ```ts
 * import { bytesSource, openImage, type OpenRequest } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../tests/fixtures/layouts/", import.meta.url);
 * const requests: OpenRequest[] = [];
 * const image = await openImage(await Deno.readFile(new URL("ext_data.qcow2", dir)), {
 *   path: "ext_data.qcow2",
 *   openFile: async (path, request) => {
 *     requests.push(request);
 *     return bytesSource(await Deno.readFile(new URL(path, dir)));
 *   },
 * });
 * assertEquals(requests, [{ kind: "data-file", name: "ext_data.data", from: "ext_data.qcow2" }]);
 * image.close();
 * ```
 */
export interface OpenRequest {
  /** Why: a backing file, or an external data file. */
  kind: "backing" | "data-file";
  /** The name as the image stores it. */
  name: string;
  /** The location of the image that names it, if known. */
  from?: string;
  /**
   * Set when the file must be opened for writing (the external data file
   * of an image opened with `writable`): return a `ByteStore`.
   */
  writable?: boolean;
}

/**
 * Opens a file that an image names, given its path resolved against the
 * naming image's directory. Throw to refuse: a program that must not follow
 * backing files can confine or forbid them here.
 *
 * @example Serving a backing chain from memory
 * ```ts
 * import { bytesSource, openImage, type OpenFile } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const files = new Map<string, Uint8Array>();
 * for (const name of ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"]) {
 *   files.set(name, await Deno.readFile(new URL(`../tests/fixtures/layouts/${name}`, import.meta.url)));
 * }
 * const openFile: OpenFile = (path) => {
 *   const bytes = files.get(path);
 *   if (!bytes) throw new Error(`${path} is not in memory`);
 *   return Promise.resolve(bytesSource(bytes));
 * };
 * const image = await openImage(files.get("chain_top.qcow2")!, { openFile });
 * const depths = new Set<number>();
 * for await (const extent of image.extents()) depths.add(extent.depth);
 * assertEquals([...depths].sort(), [0, 1, 2]); // data from every layer
 * ```
 */
export type OpenFile = (
  path: string,
  request: OpenRequest,
) => Promise<OpenedFile>;

/**
 * Options for opening an image.
 *
 * @example Reading a snapshot, and a top layer alone
 * ```ts
 * import { openImage, type OpenOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../tests/fixtures/layouts/", import.meta.url);
 * const byte = async (name: string, at: number, options: OpenOptions) => {
 *   const image = await openImage(await Deno.readFile(new URL(name, dir)), options);
 *   const buffer = new Uint8Array(1);
 *   await image.read(at, buffer);
 *   return buffer[0];
 * };
 * assertEquals(await byte("snap.qcow2", 0, {}), 0xa5); // the active state
 * assertEquals(await byte("snap.qcow2", 0, { snapshot: "first" }), 0xa1);
 * // The backing file holds 0x11 here; the top layer alone reads zeros.
 * assertEquals(await byte("chain_top.qcow2", 200 * 1024, { ignoreBackingFile: true }), 0);
 * ```
 */
export interface OpenOptions {
  /** Decompressors to use; `mod.ts` defaults to `node:zlib`'s. */
  codecs?: Codecs;
  /** Bytes of L2 tables to keep cached per layer (default 4 MiB). */
  l2CacheBytes?: number;
  /**
   * Where the image lives (a path or URL); relative backing and data file
   * names are resolved against its directory, as QEMU resolves them.
   */
  path?: string;
  /**
   * Opens the backing and data files an image names. Without it, an image
   * that names one cannot be opened (except with `ignoreBackingFile`).
   */
  openFile?: OpenFile;
  /**
   * Read the image's top layer alone: what it does not allocate reads as
   * zeros, and no backing file is opened.
   */
  ignoreBackingFile?: boolean;
  /**
   * Read this internal snapshot instead of the active state: an ID or a name,
   * or qemu-img's `snapshot.id=ID`, `snapshot.name=NAME` or both
   * (`snapshot.id=ID,snapshot.name=NAME`), see {@linkcode findSnapshot}.
   * The image then has the snapshot's own virtual size (its `disk_size`
   * extra data), as `qemu-img snapshot -a` restores it, even if the image
   * was resized since; `qemu-img convert -l` uses the current size instead.
   */
  snapshot?: string;
  /** The deepest backing chain followed (default 64 layers below the image). */
  maxChainDepth?: number;
  /**
   * Open the image read-write (qcow2 only): the image gets `write`,
   * `writeZeroes`, `discard` and `flush`, and `close` returns a promise.
   */
  writable?: boolean;
  /**
   * The password of an encrypted image (LUKS or legacy AES), as text or as
   * bytes (a secret file's contents, used as they are). It is tried on
   * every encrypted layer of the backing chain.
   */
  password?: string | Uint8Array;
  /** Ciphers, PBKDF2 and digests; `mod.ts` defaults to `node:crypto`'s. */
  crypto?: CryptoProvider;
}

/** The opener of each format: what a backing file of that format is opened with. */
export const OPENERS: Readonly<Record<ImageFormat, LayerOpener>> = {
  qcow2: openQcow2,
  qcow: openQcow,
  raw: openRaw,
};

/**
 * Opens a qcow2 or qcow image and everything it needs: its backing chain and
 * data file through `options.openFile`, and the chosen snapshot.
 *
 * @param source The image file.
 * @param options How to open it and the files it names.
 * @param format The format, when the caller has probed it already
 * (default: probed here, once).
 * @returns The image.
 * @throws {Qcow2Error} If the image or a file it needs is invalid, missing or
 * unsupported.
 *
 * @example Opening a qcow image through its backing chain
 * ```ts
 * import { openDisk } from "./open.ts";
 * import type { QcowImage } from "./qcow/image.ts";
 * import { bytesSource } from "./io/source.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../tests/fixtures/layouts/", import.meta.url);
 * const openFile = async (path: string) => bytesSource(await Deno.readFile(new URL(path, dir)));
 * const image = await openDisk(await openFile("v1_over.qcow"), { openFile });
 * assertEquals(image.format, "qcow");
 * assertEquals((image.backing as QcowImage).header.version, 1);
 * image.close();
 * ```
 */
export function openDisk(
  source: ByteSource,
  options: OpenOptions,
  format: "qcow2",
): Promise<Qcow2Image>;
export function openDisk(
  source: ByteSource,
  options?: OpenOptions,
  format?: ImageFormat,
): Promise<Qcow2Image | QcowImage>;
export async function openDisk(
  source: ByteSource,
  options: OpenOptions = {},
  format?: ImageFormat,
): Promise<Qcow2Image | QcowImage> {
  const chain = new BackingChain(options, OPENERS);
  const probed = format ?? await probeSource(source);
  try {
    const top = chain.top(source);
    // Anything not qcow is read as qcow2, so a raw file fails on its magic.
    return probed === "qcow" ? await openQcow(top) : await openQcow2(top);
  } catch (e) {
    chain.closeAll();
    throw e;
  }
}
