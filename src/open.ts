/**
 * Opening images: probing the format, following the backing chain, finding
 * the external data file, and choosing a snapshot.
 *
 * @module
 */

import { checkOpenable } from "./qcow2/names.ts";
import type { Codecs } from "./codecs/codecs.ts";
import type { ImageEncryption } from "./crypto/encryption.ts";
import { CRYPT_METHOD } from "./qcow2/layout.ts";
import { type CryptoProvider, webCrypto } from "./crypto/provider.ts";
import type { DiskImage } from "./disk.ts";
import { hex, Qcow2Error } from "./errors.ts";
import {
  checkKnownFeatures,
  QCOW2_MAGIC,
  type Qcow2Header,
  readHeader,
} from "./qcow2/header.ts";
import { Qcow2Image } from "./qcow2/image.ts";
import { type ByteSource, readExact } from "./io/source.ts";
import { openQcowImage, type QcowImage } from "./qcow/image.ts";
import { RawImage } from "./raw.ts";
import {
  checkSnapshotL1,
  findSnapshot,
  readSnapshots,
  type Snapshot,
} from "./qcow2/snapshots.ts";

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

/**
 * The disk image formats this library reads.
 *
 * @example Probing the format of three files
 * ```ts
 * import type { ImageFormat } from "@qcow2/qcow2";
 * import { probeFormat } from "@qcow2/qcow2/info";
 * import { assertEquals } from "@std/assert";
 *
 * const formats: ImageFormat[] = [];
 * for (const name of ["v1.qcow", "over_raw.qcow2", "rawbase.raw"]) {
 *   const bytes = await Deno.readFile(new URL(`../tests/fixtures/layouts/${name}`, import.meta.url));
 *   formats.push(probeFormat(bytes.subarray(0, 8)));
 * }
 * assertEquals(formats, ["qcow", "qcow2", "raw"]);
 * ```
 */
export type ImageFormat = "qcow2" | "qcow" | "raw";

const DEFAULT_MAX_DEPTH = 64;

/**
 * Probes a file's format from its first bytes, as QEMU does: the qcow magic
 * with version 1 is qcow, with another version qcow2; anything else is raw.
 *
 * @param start At least the first 8 bytes of the file.
 * @returns The format.
 *
 * @example Telling qcow2 from raw
 * ```ts
 * import { probeFormat } from "@qcow2/qcow2/info";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(probeFormat(new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3])), "qcow2");
 * assertEquals(probeFormat(new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1])), "qcow");
 * assertEquals(probeFormat(new Uint8Array(512)), "raw");
 * ```
 */
export function probeFormat(start: Uint8Array): ImageFormat {
  if (start.length < 8) return "raw";
  const v = new DataView(start.buffer, start.byteOffset, start.byteLength);
  if (v.getUint32(0) !== QCOW2_MAGIC) return "raw";
  return v.getUint32(4) === 1 ? "qcow" : "qcow2";
}

/**
 * Joins a relative name to the directory of `from`, as QEMU's path_combine.
 *
 * @param from Where the naming image lives, if known.
 * @param name The name the image stores.
 * @returns The name to open.
 *
 * @example Relative names follow the image, absolute ones do not
 * ```ts
 * import { resolveName } from "./open.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(resolveName("vm/top.qcow2", "base.qcow2"), "vm/base.qcow2");
 * assertEquals(resolveName("vm/top.qcow2", "/images/base.qcow2"), "/images/base.qcow2");
 * assertEquals(resolveName(undefined, "base.qcow2"), "base.qcow2");
 * assertEquals(resolveName("https://h/vm/top.qcow2", "../base.qcow2"), "https://h/base.qcow2");
 * ```
 */
export function resolveName(from: string | undefined, name: string): string {
  if (from !== undefined && /^https?:\/\//i.test(from)) {
    // A remote image's names resolve against its URL, as links do.
    return new URL(name, from).href;
  }
  if (
    from === undefined || name.startsWith("/") ||
    /^[A-Za-z][\w+.-]*:/.test(name)
  ) {
    return name;
  }
  const slash = from.lastIndexOf("/");
  return slash < 0 ? name : from.slice(0, slash + 1) + name;
}

/** A path with `.`, `..` and repeated slashes folded, to tell files apart. */
function normalize(path: string): string {
  const absolute = path.startsWith("/");
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === ".." && parts.length > 0 && parts.at(-1) !== "..") parts.pop();
    else parts.push(part);
  }
  return (absolute ? "/" : "") + parts.join("/");
}

/** The state carried down a backing chain. */
interface Chain {
  depth: number;
  seen: Set<string>;
  closers: (() => void)[];
}

/**
 * Opens a qcow2 or qcow image and everything it needs: its backing chain and
 * data file through `options.openFile`, and the chosen snapshot.
 *
 * @param source The image file.
 * @param options How to open it and the files it names.
 * @returns The image.
 * @throws {Qcow2Error} If the image or a file it needs is invalid, missing or
 * unsupported.
 */
export async function openDisk(
  source: ByteSource,
  options: OpenOptions = {},
): Promise<Qcow2Image | QcowImage> {
  const chain: Chain = {
    depth: 0,
    seen: new Set(options.path !== undefined ? [normalize(options.path)] : []),
    closers: [],
  };
  const start = new Uint8Array(Math.min(8, source.size));
  await source.readAt(0, start);
  const format = probeFormat(start);
  try {
    if (format === "qcow") return await openQcow(source, options, chain);
    // Anything not qcow is read as qcow2, so a raw file fails on its magic.
    return await openQcow2Layer(source, options, chain);
  } catch (e) {
    closeAll(chain.closers);
    throw e;
  }
}

async function openQcow2Layer(
  source: ByteSource,
  options: OpenOptions,
  chain: Chain,
): Promise<Qcow2Image> {
  const header = await readHeader(source);
  checkSupported(header);
  const closers = chain.closers;
  const encryption = await openLayerEncryption(source, header, options, chain);
  const snapshots = header.nbSnapshots > 0
    ? await readSnapshots(source, header)
    : [];
  let snapshot: Snapshot | undefined;
  let l1Offset = header.l1TableOffset;
  let l1Size = header.l1Size;
  let size = Math.floor(header.size / 512) * 512;
  if (options.snapshot !== undefined && chain.depth === 0) {
    snapshot = findSnapshot(snapshots, options.snapshot);
    checkSnapshotL1(snapshot, header);
    l1Offset = snapshot.l1TableOffset;
    l1Size = snapshot.l1Size;
    size = Math.floor(snapshot.diskSize / 512) * 512;
  }
  const entryBytes = header.features.extendedL2 ? 16 : 8;
  const l1Span = header.clusterSize * (header.clusterSize / entryBytes);
  const entries = Math.min(l1Size, Math.ceil(size / l1Span));
  let l1: Uint8Array = new Uint8Array(0);
  if (entries > 0) {
    if (l1Offset + entries * 8 > source.size) {
      throw new Qcow2Error(
        "TRUNCATED",
        `Cannot read qcow2 image: the ${
          snapshot ? `L1 table of snapshot '${snapshot.name}'` : "L1 table"
        } at ${
          hex(l1Offset)
        } (${entries} entries) runs past the end of the file (${source.size} bytes)`,
        { offset: l1Offset },
      );
    }
    l1 = await readExact(source, l1Offset, entries * 8, "L1 table");
  }

  let dataFile: ByteSource | undefined;
  if (header.features.externalDataFile) {
    const name = header.extensions.externalDataFile;
    if (name === undefined) {
      throw new Qcow2Error(
        "EXTERNAL_DATA_FILE",
        "Cannot read qcow2 image: it keeps its data in an external data file but does not name one",
      );
    }
    checkOpenable(
      "data-file",
      name,
      header.extensions.externalDataFileUtf8,
      options.path,
    );
    dataFile = await openNamed("data-file", name, options, closers);
  }

  let backing: DiskImage | undefined;
  if (
    header.backingFile !== undefined &&
    !(options.ignoreBackingFile && chain.depth === 0)
  ) {
    checkOpenable(
      "backing",
      header.backingFile,
      header.backingFileUtf8,
      options.path,
    );
    backing = await openBacking(
      header.backingFile,
      header.extensions.backingFormat,
      options,
      chain,
    );
  }
  const close = chain.depth === 0 ? () => closeAll(closers) : undefined;
  return new Qcow2Image({
    header,
    source,
    l1,
    size,
    snapshots,
    snapshot,
    backing,
    dataFile,
    codecs: options.codecs,
    l2CacheBytes: options.l2CacheBytes,
    close,
    encryption,
  });
}

/**
 * Opens a layer's encryption with `options.password`; its key is
 * forgotten when the image is closed.
 */
async function openLayerEncryption(
  source: ByteSource,
  header: { cryptMethod: number; extensions?: Qcow2Header["extensions"] },
  options: OpenOptions,
  chain: Chain,
  format = "qcow2",
): Promise<ImageEncryption | undefined> {
  // The ciphers are loaded only for an encrypted image (start-up time).
  if (header.cryptMethod === CRYPT_METHOD.none) return undefined;
  const { openEncryption } = await import("./crypto/encryption.ts");
  const encryption = await openEncryption(
    options.crypto ?? webCrypto,
    source,
    {
      cryptMethod: header.cryptMethod,
      encryptionArea: header.extensions?.encryption,
    },
    options.password,
    format,
  );
  if (encryption) chain.closers.push(() => encryption.close());
  return encryption;
}

async function openQcow(
  source: ByteSource,
  options: OpenOptions,
  chain: Chain,
): Promise<QcowImage> {
  return await openQcowImage(source, {
    codecs: options.codecs,
    openEncryption: (header) =>
      openLayerEncryption(source, header, options, chain, "qcow"),
    close: chain.depth === 0 ? () => closeAll(chain.closers) : undefined,
    openBacking: options.ignoreBackingFile && chain.depth === 0
      ? undefined
      : (name: string) => openBacking(name, undefined, options, chain),
  });
}

/** Opens the backing file `name` one layer down, in the format it has. */
async function openBacking(
  name: string,
  format: string | undefined,
  options: OpenOptions,
  chain: Chain,
): Promise<DiskImage> {
  const from = options.path;
  const path = resolveName(from, name);
  const max = options.maxChainDepth ?? DEFAULT_MAX_DEPTH;
  if (chain.depth >= max) {
    throw new Qcow2Error(
      "BACKING_FILE",
      `Cannot open backing file '${path}': the backing chain is deeper than ${max} layers`,
      { file: path },
    );
  }
  const key = normalize(path);
  if (chain.seen.has(key)) {
    throw new Qcow2Error(
      "BACKING_FILE",
      `Cannot open backing file '${path}': the backing chain loops (it is already in the chain)`,
      { file: path },
    );
  }
  const file = await openNamed("backing", name, options, chain.closers);
  const start = new Uint8Array(Math.min(8, file.size));
  await file.readAt(0, start);
  const kind = format ?? probeFormat(start);
  const below: Chain = {
    depth: chain.depth + 1,
    seen: new Set([...chain.seen, key]),
    closers: chain.closers,
  };
  const layerOptions = { ...options, path };
  try {
    switch (kind) {
      case "raw":
        return new RawImage(file);
      case "qcow2":
        return await openQcow2Layer(file, layerOptions, below);
      case "qcow":
        return await openQcow(file, layerOptions, below);
      default:
        throw new Qcow2Error(
          "BACKING_FILE",
          `Cannot open backing file '${path}': its format '${kind}' is not supported (qcow2, qcow and raw are)`,
          { file: path },
        );
    }
  } catch (e) {
    // An error of this layer that does not yet say so names the layer.
    if (e instanceof Qcow2Error && e.file !== path) {
      throw new Qcow2Error(e.code, `${e.message} (in backing file '${path}')`, {
        cause: e,
        offset: e.offset,
        file: path,
        field: e.field,
        value: e.value,
      });
    }
    throw e;
  }
}

/** Opens a file an image names through the caller's hook. */
async function openNamed(
  kind: "backing" | "data-file",
  name: string,
  options: OpenOptions,
  closers: (() => void)[],
): Promise<OpenedFile> {
  const code = kind === "backing" ? "BACKING_FILE" : "EXTERNAL_DATA_FILE";
  const what = kind === "backing" ? "backing file" : "external data file";
  const path = resolveName(options.path, name);
  if (!options.openFile) {
    throw new Qcow2Error(
      code,
      `Cannot read qcow2 image: it needs its ${what} '${name}', and no 'openFile' option says how to open it${
        kind === "backing"
          ? " (or pass 'ignoreBackingFile' to read the top layer alone)"
          : ""
      }`,
    );
  }
  let file: OpenedFile;
  try {
    const request: OpenRequest = { kind, name, from: options.path };
    if (options.writable && kind === "data-file") request.writable = true;
    file = await options.openFile(path, request);
  } catch (e) {
    if (e instanceof Qcow2Error) throw e;
    throw new Qcow2Error(
      code,
      `Cannot open ${what} '${path}'${
        options.path !== undefined ? ` (named by '${options.path}')` : ""
      }: ${e instanceof Error ? e.message.split("\n")[0] : e}`,
      // The problem is the naming image's: it names a file that won't open.
      { cause: e, file: options.path },
    );
  }
  if (file.close) closers.push(() => file.close!());
  return file;
}

/**
 * Throws if the image uses a feature this reader cannot honour.
 *
 * @param header A parsed header.
 */
export function checkSupported(header: Qcow2Header): void {
  checkKnownFeatures(header);
}

function closeAll(closers: (() => void)[]): void {
  for (const close of closers.splice(0)) {
    try {
      close();
    } catch {
      // Already closed.
    }
  }
}
