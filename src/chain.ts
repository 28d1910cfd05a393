/**
 * The backing chain, walked in one place: each layer's backing file is
 * resolved against the naming layer's path (as QEMU's `path_combine`),
 * checked against the loop and the depth limit, opened through the caller's
 * `openFile` hook and handed to the opener of its format; the files opened
 * on the way (backing files, data files, unlocked keys) are closed together
 * with the top image.
 *
 * Source: QEMU `bdrv_open_backing_file` (block.c), `bdrv_get_full_backing_filename`.
 *
 * @module
 */

import type { DiskImage } from "./disk.ts";
import type { ImageEncryption } from "./crypto/encryption.ts";
import { webCrypto } from "./crypto/provider.ts";
import { inBackingFile, Qcow2Error } from "./errors.ts";
import type { ByteSource } from "./io/source.ts";
import { CRYPT_METHOD } from "./qcow2/layout.ts";
import type { Qcow2Header } from "./qcow2/header.ts";
import type { OpenedFile, OpenOptions, OpenRequest } from "./open.ts";
import { type ImageFormat, probeSource } from "./probe.ts";

/** The deepest backing chain followed when `maxChainDepth` is not given. */
export const DEFAULT_MAX_CHAIN_DEPTH = 64;

/**
 * One layer of a backing chain being opened: what a format's opener reads.
 * The top image is at depth 0.
 */
export interface Layer {
  /** The layer's file. */
  readonly source: ByteSource;
  /** Where the layer lives (names it stores resolve against it), if known. */
  readonly path?: string;
  /** 0 for the top image, 1 for its backing file, and so on. */
  readonly depth: number;
  /** The chain it belongs to: the options, and how to open what it names. */
  readonly chain: BackingChain;
}

/** Opens one layer in its format (`src/qcow2/open.ts`, `src/qcow/open.ts`, …). */
export type LayerOpener = (layer: Layer) => Promise<DiskImage>;

/**
 * Joins a relative name to the directory of `from`, as QEMU's path_combine.
 *
 * @param from Where the naming image lives, if known.
 * @param name The name the image stores.
 * @returns The name to open.
 *
 * @example Relative names follow the image, absolute ones do not
 * ```ts
 * import { resolveName } from "./chain.ts";
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

/**
 * A path with `.`, `..` and repeated slashes folded, to tell the files of a
 * backing chain apart (the key of the loop checks of the opener and of
 * `readInfo`).
 *
 * @param path A path or URL.
 * @returns The key.
 *
 * @example Two names of one file
 * ```ts
 * import { normalizePath } from "./chain.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(normalizePath("vm/./a//../base.qcow2"), normalizePath("vm/base.qcow2"));
 * ```
 */
export function normalizePath(path: string): string {
  const absolute = path.startsWith("/");
  const parts: string[] = [];
  for (const part of path.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === ".." && parts.length > 0 && parts.at(-1) !== "..") parts.pop();
    else parts.push(part);
  }
  return (absolute ? "/" : "") + parts.join("/");
}

/**
 * The files met on one walk down a backing chain, for its two checks: the
 * loop check (files told apart by {@linkcode normalizePath}) and the depth
 * limit. The opener ({@linkcode BackingChain}) and `readInfo` walk with one;
 * each says in its own words why it stops.
 *
 * Source: qemu-img's `collect_image_info_list` (qemu-img.c: a file named
 * twice in a chain is a loop); the depth limit is this library's.
 *
 * @example A chain that names its top file again
 * ```ts
 * import { ChainFiles } from "./chain.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const files = new ChainFiles(64);
 * assertEquals(files.refusal("vm/top.qcow2", 0), undefined);
 * files.add("vm/top.qcow2");
 * assertEquals(files.refusal("vm/./top.qcow2", 1), "loop");
 * assertEquals(files.refusal("vm/base.qcow2", 65), "depth");
 * ```
 */
export class ChainFiles {
  readonly #seen = new Set<string>();

  /** @param maxDepth The deepest layer allowed (the top image is at 0). */
  constructor(readonly maxDepth: number = DEFAULT_MAX_CHAIN_DEPTH) {}

  /**
   * Why the file at `path` cannot be the layer at `depth`.
   *
   * @param path The layer's path.
   * @param depth The layer's depth (0 for the top image).
   * @returns `"depth"` past the limit, `"loop"` for a file already met,
   * undefined when it may be followed.
   */
  refusal(path: string, depth: number): "depth" | "loop" | undefined {
    if (depth > this.maxDepth) return "depth";
    if (this.#seen.has(normalizePath(path))) return "loop";
    return undefined;
  }

  /**
   * Counts the file at `path` as met.
   *
   * @param path The layer's path.
   */
  add(path: string): void {
    this.#seen.add(normalizePath(path));
  }
}

/**
 * The state of one `openImage` call down its backing chain: the options,
 * the files in the chain so far (the loop check), and what to close.
 */
export class BackingChain {
  /** The caller's options (the top image's). */
  readonly options: OpenOptions;
  readonly #openers: Record<ImageFormat, LayerOpener>;
  readonly #files: ChainFiles;
  readonly #closers: (() => void)[] = [];

  /**
   * @param options The caller's options.
   * @param openers The opener of each format, for the backing files.
   */
  constructor(
    options: OpenOptions,
    openers: Record<ImageFormat, LayerOpener>,
  ) {
    this.options = options;
    this.#openers = openers;
    this.#files = new ChainFiles(
      options.maxChainDepth ?? DEFAULT_MAX_CHAIN_DEPTH,
    );
    if (options.path !== undefined) this.#files.add(options.path);
  }

  /**
   * The top layer of the chain.
   *
   * @param source The image file.
   * @returns The layer at depth 0.
   */
  top(source: ByteSource): Layer {
    return { source, path: this.options.path, depth: 0, chain: this };
  }

  /**
   * Whether `layer` follows its backing file: every layer does, except the
   * top one with `ignoreBackingFile`.
   *
   * @param layer A layer of this chain.
   * @returns Whether to open its backing file.
   */
  followsBacking(layer: Layer): boolean {
    return !(this.options.ignoreBackingFile && layer.depth === 0);
  }

  /**
   * The snapshot `layer` reads instead of its active state: the one the
   * options name, for the top layer only.
   *
   * @param layer A layer of this chain.
   * @returns The snapshot's ID or name, or undefined.
   */
  snapshotOf(layer: Layer): string | undefined {
    return layer.depth === 0 ? this.options.snapshot : undefined;
  }

  /**
   * What closes the files of the whole chain: given to the top layer's
   * image only (the layers below are closed with it).
   *
   * @param layer A layer of this chain.
   * @returns The closer for the top layer, undefined below.
   */
  closerOf(layer: Layer): (() => void) | undefined {
    return layer.depth === 0 ? () => this.closeAll() : undefined;
  }

  /** Closes every file opened for the chain so far (the top image's own file excepted). */
  closeAll(): void {
    for (const close of this.#closers.splice(0)) {
      try {
        close();
      } catch {
        // Already closed.
      }
    }
  }

  /**
   * Opens the backing file `name` of `layer`, one layer down, in `format`
   * (a qcow2 backing format extension) or the format its first bytes show.
   *
   * @param layer The layer that names it.
   * @param name The name the layer stores.
   * @param format The backing format the layer names, if any.
   * @returns The backing image.
   * @throws {Qcow2Error} `BACKING_FILE` if the chain loops, is deeper than
   * `maxChainDepth` (default {@linkcode DEFAULT_MAX_CHAIN_DEPTH}), the file
   * cannot be opened or its format is unsupported; the layer's own errors
   * otherwise, naming the file.
   */
  async openBacking(
    layer: Layer,
    name: string,
    format?: string,
  ): Promise<DiskImage> {
    const path = resolveName(layer.path, name);
    const refusal = this.#files.refusal(path, layer.depth + 1);
    if (refusal) {
      throw new Qcow2Error(
        "BACKING_FILE",
        `Cannot open backing file '${path}': ${
          refusal === "depth"
            ? `the backing chain is deeper than ${this.#files.maxDepth} layers`
            : "the backing chain loops (it is already in the chain)"
        }`,
        { file: path },
      );
    }
    const file = await this.#openNamed(layer, "backing", name);
    const kind = format ?? await probeSource(file);
    this.#files.add(path);
    const below: Layer = {
      source: file,
      path,
      depth: layer.depth + 1,
      chain: this,
    };
    try {
      const open = Object.hasOwn(this.#openers, kind)
        ? this.#openers[kind as ImageFormat]
        : undefined;
      if (!open) {
        throw new Qcow2Error(
          "BACKING_FILE",
          `Cannot open backing file '${path}': its format '${kind}' is not supported (qcow2, qcow and raw are)`,
          { file: path },
        );
      }
      return await open(below);
    } catch (e) {
      // An error of this layer that does not yet say so names the layer.
      throw inBackingFile(e, path);
    }
  }

  /**
   * Opens the external data file `name` of `layer` (writable when the
   * image is opened read-write).
   *
   * @param layer The layer that names it.
   * @param name The name the layer stores.
   * @returns The file.
   * @throws {Qcow2Error} `EXTERNAL_DATA_FILE` if it cannot be opened.
   */
  openDataFile(layer: Layer, name: string): Promise<OpenedFile> {
    return this.#openNamed(layer, "data-file", name);
  }

  /**
   * Unlocks `layer`'s encryption with the `password` option; the key is
   * forgotten when the chain is closed. The ciphers are loaded only for an
   * encrypted image (start-up time).
   *
   * @param layer The encrypted layer.
   * @param header Its `crypt_method` and, for qcow2, its header extensions.
   * @param format The layer's format, for messages.
   * @returns The unlocked encryption, or undefined for a plain image.
   * @throws {Qcow2Error} `ENCRYPTED` without a password or with a wrong one.
   */
  async openEncryption(
    layer: Layer,
    header: { cryptMethod: number; extensions?: Qcow2Header["extensions"] },
    format: "qcow2" | "qcow",
  ): Promise<ImageEncryption | undefined> {
    if (header.cryptMethod === CRYPT_METHOD.none) return undefined;
    const { openEncryption } = await import("./crypto/encryption.ts");
    const encryption = await openEncryption(
      this.options.crypto ?? webCrypto,
      layer.source,
      {
        cryptMethod: header.cryptMethod,
        encryptionArea: header.extensions?.encryption,
      },
      this.options.password,
      format,
    );
    if (encryption) this.#closers.push(() => encryption.close());
    return encryption;
  }

  /** Opens a file a layer names through the caller's hook. */
  async #openNamed(
    layer: Layer,
    kind: "backing" | "data-file",
    name: string,
  ): Promise<OpenedFile> {
    const code = kind === "backing" ? "BACKING_FILE" : "EXTERNAL_DATA_FILE";
    const what = kind === "backing" ? "backing file" : "external data file";
    const from = layer.path;
    const path = resolveName(from, name);
    const openFile = this.options.openFile;
    if (!openFile) {
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
      const request: OpenRequest = { kind, name, from };
      if (this.options.writable && kind === "data-file") {
        request.writable = true;
      }
      file = await openFile(path, request);
    } catch (e) {
      if (e instanceof Qcow2Error) throw e;
      throw new Qcow2Error(
        code,
        `Cannot open ${what} '${path}'${
          from !== undefined ? ` (named by '${from}')` : ""
        }`,
        // The problem is the naming image's: it names a file that won't open.
        { cause: e, quoteCause: true, file: from },
      );
    }
    if (file.close) this.#closers.push(() => file.close!());
    return file;
  }
}
