/**
 * The library's face, written once over a runtime's defaults: `readHeader`,
 * `openImage`, `convert` and `convertToQcow2`. `web.ts` builds it over the
 * portable defaults (pako and WebAssembly codecs, no paths); `mod.ts` over
 * the native ones (`node:zlib`, opening files by path).
 *
 * @module
 */

import {
  CONVERT_L2_CACHE_BYTES,
  convertImage,
  type ConvertOptions,
  type ConvertSummary,
} from "./ops/convert.ts";
import type { DiskImage } from "./disk.ts";
import type { Codecs, Compressors } from "./codecs/codecs.ts";
import type { CryptoProvider } from "./crypto/provider.ts";
import type { Qcow2Image } from "./qcow2/image.ts";
import type { QcowImage } from "./qcow/image.ts";
import {
  type ImageInput,
  type SeekableWriter,
  toByteSource,
} from "./io/source.ts";
import {
  type Qcow2Header,
  readHeader as readHeaderFrom,
} from "./qcow2/header.ts";
import {
  openDisk,
  type OpenedFile,
  type OpenFile,
  type OpenOptions,
} from "./open.ts";
import type { WritableInput } from "./qcow2/open_writable.ts";
import type { WritableQcow2Image } from "./qcow2/writable.ts";
import type { ByteStore } from "./io/store.ts";
import { RawImage } from "./raw.ts";
import { Qcow2Error } from "./errors.ts";
import { type RawSink, toRawSink } from "./io/sink.ts";
import type {
  ConvertToQcow2Options,
  ConvertToQcow2Summary,
  Qcow2Destination,
} from "./ops/convert_qcow2.ts";

/** What a runtime supplies: its codecs and, where it has files, paths. */
export interface RuntimeDefaults {
  /** Decompressors (and compressors) used when the caller gives none. */
  codecs: Codecs;
  /** Compressors for `convertToQcow2`, when not `codecs.compress`. */
  compress?: Compressors;
  /** Ciphers and hashes for encrypted images (absent: `openDisk`'s). */
  crypto?: CryptoProvider;
  /** Opens a file by path for reading (absent: paths are refused). */
  openPath?: (path: string) => Promise<OpenedFile>;
  /** Opens a file by path for reading and writing. */
  openPathWritable?: (path: string) => Promise<ByteStore>;
}

/**
 * `openImage`: opens an image read-only (or read-write with
 * `writable: true`). See `mod.ts` and `web.ts` for each runtime's inputs.
 */
export interface OpenImageFunction {
  /** Opens an image read-write. */
  (
    input: WritableInput | string,
    options: OpenOptions & { writable: true },
  ): Promise<WritableQcow2Image>;
  /** Opens an image for reads of guest bytes, through its backing chain. */
  (
    input: ImageInput | string,
    options?: OpenOptions,
  ): Promise<Qcow2Image | QcowImage>;
}

/** `readHeader`: reads and validates the header of a qcow2 image. */
export type ReadHeaderFunction = (input: ImageInput) => Promise<Qcow2Header>;

/** `convert`: converts an image to a raw disk image. */
export type ConvertFunction = (
  src: ImageInput | string | DiskImage,
  dst: SeekableWriter | WritableStream<Uint8Array> | RawSink,
  options?: ConvertOptions & OpenOptions,
) => Promise<ConvertSummary>;

/** `convertToQcow2`: converts an image to qcow2. */
export type ConvertToQcow2Function = (
  src: ImageInput | string | DiskImage,
  dst: Qcow2Destination,
  options?: ConvertToQcow2Options & OpenOptions,
) => Promise<ConvertToQcow2Summary>;

/** The functions {@linkcode makeFace} builds. */
export interface Face {
  /** See {@linkcode ReadHeaderFunction}. */
  readHeader: ReadHeaderFunction;
  /** See {@linkcode OpenImageFunction}. */
  openImage: OpenImageFunction;
  /** See {@linkcode ConvertFunction}. */
  convert: ConvertFunction;
  /** See {@linkcode ConvertToQcow2Function}. */
  convertToQcow2: ConvertToQcow2Function;
}

/**
 * Builds the library's face over a runtime's defaults.
 *
 * @param defaults The runtime's codecs and file opening.
 * @returns `readHeader`, `openImage`, `convert` and `convertToQcow2`.
 *
 * @example A face over the portable codecs
 * ```ts
 * import { makeFace } from "./face.ts";
 * import { webCodecs } from "./codecs/codecs.ts";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * const { openImage } = makeFace({ codecs: webCodecs });
 * const bytes = await Deno.readFile(new URL("../tests/fixtures/zlib.qcow2", import.meta.url));
 * assertEquals((await openImage(bytes)).format, "qcow2");
 * await assertRejects(() => openImage("disk.qcow2"), TypeError);
 * ```
 */
export function makeFace(defaults: RuntimeDefaults): Face {
  const { openPath, openPathWritable } = defaults;
  const needPath = (path: string): never => {
    throw new TypeError(
      `Cannot open '${path}' by path here: pass its bytes, a Blob or a ByteSource`,
    );
  };

  const readHeader: ReadHeaderFunction = async (input) =>
    readHeaderFrom(await toByteSource(input));

  const openReadWrite = async (
    input: WritableInput | string,
    options: OpenOptions,
  ): Promise<WritableQcow2Image> => {
    // The writer is loaded only when an image is opened for writing.
    const { openWritable, toByteStore } = await import(
      "./qcow2/open_writable.ts"
    );
    if (typeof input !== "string") {
      return openWritable(await toByteStore(input), options);
    }
    if (!openPath || !openPathWritable) return needPath(input);
    const openFile: OpenFile = (path, request) =>
      request.writable ? openPathWritable(path) : openPath(path);
    const store = await openPathWritable(input);
    try {
      return await openWritable(
        store,
        { openFile, path: input, ...options },
        true,
      );
    } catch (e) {
      await store.close?.();
      throw e;
    }
  };

  const openReadOnly = async (
    input: ImageInput | string,
    options: OpenOptions,
  ): Promise<Qcow2Image | QcowImage> => {
    if (typeof input !== "string") {
      return openDisk(await toByteSource(input), options);
    }
    if (!openPath) return needPath(input);
    const file = await openPath(input);
    try {
      const image = await openDisk(file, {
        openFile: openPath,
        path: input,
        ...options,
      });
      const closeLayers = image.close.bind(image);
      image.close = () => {
        closeLayers();
        file.close!();
      };
      return image;
    } catch (e) {
      file.close!();
      throw e;
    }
  };

  const openImage = (async (
    input: ImageInput | WritableInput | string,
    options: OpenOptions = {},
  ): Promise<Qcow2Image | QcowImage | WritableQcow2Image> => {
    const withCodecs = {
      ...options,
      codecs: options.codecs ?? defaults.codecs,
      crypto: options.crypto ?? defaults.crypto,
    };
    return options.writable
      ? await openReadWrite(input as WritableInput | string, withCodecs)
      : await openReadOnly(input as ImageInput | string, withCodecs);
  }) as OpenImageFunction;

  const convert: ConvertFunction = async (src, dst, options = {}) => {
    const opened = typeof src === "string" || !("extents" in src);
    const image = opened
      ? await openImage(src, {
        l2CacheBytes: CONVERT_L2_CACHE_BYTES,
        ...options,
      })
      : src;
    try {
      return await convertImage(
        image,
        await toRawSink(dst, options.signal),
        options,
      );
    } finally {
      if (opened) image.close();
    }
  };

  /** Opens `src` as an image, or as a raw disk if it is no qcow2 or qcow. */
  const openSource = async (
    src: ImageInput | string,
    options: OpenOptions,
  ): Promise<DiskImage> => {
    try {
      return await openImage(src, {
        l2CacheBytes: CONVERT_L2_CACHE_BYTES,
        ...options,
      });
    } catch (e) {
      if (!(e instanceof Qcow2Error) || e.code !== "BAD_MAGIC") throw e;
    }
    if (typeof src !== "string") return new RawImage(await toByteSource(src));
    const file = await (openPath ?? needPath)(src);
    return new RawImage(file, () => file.close!());
  };

  const convertToQcow2: ConvertToQcow2Function = async (
    src,
    dst,
    options = {},
  ) => {
    const { convertToQcow2Destination } = await import(
      "./ops/convert_qcow2.ts"
    );
    const opened = typeof src === "string" || !("extents" in src);
    const image = opened ? await openSource(src, options) : src;
    try {
      return await convertToQcow2Destination(image, dst, {
        ...options,
        codecs: {
          ...defaults.codecs,
          ...options.codecs,
          compress: options.codecs?.compress ?? defaults.compress ??
            defaults.codecs.compress,
        },
      });
    } finally {
      if (opened) image.close();
    }
  };

  return { readHeader, openImage, convert, convertToQcow2 };
}
