/**
 * Decompressing a cluster with `node:zlib` into a buffer the caller owns,
 * through a reused handle: used on the calling thread by `zlib.ts` and in
 * each worker by `decompress_worker.ts` (which runs this function's source
 * text, so it refers to nothing outside itself).
 *
 * @module
 */

/**
 * The native handle behind a `node:zlib` stream (its undocumented
 * `_handle`, in Deno and Node): one synchronous call compresses or
 * decompresses a whole buffer, and `reset` readies it for the next.
 */
export interface ZlibHandle {
  /** Runs the stream over `input` into `output` with `flush`; the room left is in the stream's `_writeState[0]`. */
  writeSync(
    flush: number,
    input: Uint8Array,
    inOffset: number,
    inLength: number,
    output: Uint8Array,
    outOffset: number,
    outLength: number,
  ): void;
  /** Readies the handle for the next buffer. */
  reset(): void;
  /** Frees it. */
  close?(): void;
  /** Called with zlib's message when a call fails. */
  onerror: (message: string) => void;
}

/** A `node:zlib` stream, as far as reusing its handle goes. */
export interface ZlibStream {
  /** The native handle, where the runtime has one. */
  _handle?: ZlibHandle;
  /** `[avail_out, avail_in]` after a `writeSync`. */
  _writeState?: Uint32Array;
}

/** The parts of `node:zlib` that {@linkcode clusterDecompressor} uses. */
export interface ZlibModule {
  /** One-shot raw inflate. */
  inflateRawSync(input: Uint8Array, options: object): Uint8Array;
  /** One-shot zstd decompression (Deno 2.4+, Node 22.15+). */
  zstdDecompressSync?(input: Uint8Array, options: object): Uint8Array;
  /** A raw inflate stream (its `_handle` is reused). */
  createInflateRaw(): unknown;
  /** A zstd decompression stream, where there is zstd. */
  createZstdDecompress?(): unknown;
  /** Flush constants. */
  constants: { Z_FINISH: number; ZSTD_e_end: number };
}

/**
 * Decompresses one cluster of `type` into `out` (at least `clusterSize` + 1
 * bytes) and returns the count of bytes produced, at most `clusterSize` + 1.
 * zstd input must already end at its frame's end.
 */
export type ClusterDecompressor = (
  type: "zlib" | "zstd",
  input: Uint8Array,
  out: Uint8Array,
  clusterSize: number,
) => number;

/**
 * Makes a {@linkcode ClusterDecompressor} over `zlib`. It drives the binding
 * under `node:zlib`'s stream classes as its synchronous one-shot functions
 * do, with one handle reused for every cluster and the output written
 * straight into `out`: no allocation per cluster, and less time per cluster
 * than `inflateRawSync` (bench/README.md). Where that binding
 * is missing or misbehaves, the one-shot functions take over, and their
 * errors say what is wrong.
 *
 * @param zlib The `node:zlib` module.
 * @returns The decompressor.
 */
export function clusterDecompressor(zlib: ZlibModule): ClusterDecompressor {
  /** One reused handle; `run` answers undefined where it cannot say. */
  const reusable = (make: () => ZlibStream, finish: number) => {
    let handle: ZlibHandle | undefined;
    let state: Uint32Array | undefined;
    let error: string | undefined;
    const drop = () => {
      try {
        handle?.close?.();
      } catch {
        // already closed
      }
      handle = undefined;
    };
    return (input: Uint8Array, out: Uint8Array, length: number) => {
      try {
        if (!handle) {
          const stream = make();
          if (!stream._handle || !stream._writeState) return undefined;
          handle = stream._handle;
          state = stream._writeState;
          handle.onerror = (message) => error = message;
        }
        error = undefined;
        handle.writeSync(finish, input, 0, input.length, out, 0, length + 1);
        const produced = length + 1 - state![0];
        if (error !== undefined) {
          drop();
          return undefined;
        }
        handle.reset();
        return produced;
      } catch {
        drop();
        return undefined;
      }
    };
  };

  const inflate = reusable(
    () => zlib.createInflateRaw() as ZlibStream,
    zlib.constants.Z_FINISH,
  );
  const zstd = typeof zlib.createZstdDecompress === "function"
    ? reusable(
      () => zlib.createZstdDecompress!() as ZlibStream,
      zlib.constants.ZSTD_e_end,
    )
    : undefined;

  return (type, input, out, clusterSize) => {
    if (type === "zstd" && (!zstd || !zlib.zstdDecompressSync)) {
      throw new Error("this runtime's node:zlib has no zstd");
    }
    const fast = (type === "zlib" ? inflate : zstd!)(input, out, clusterSize);
    if (fast !== undefined) return fast;
    const options = {
      maxOutputLength: clusterSize,
      chunkSize: Math.max(clusterSize, 64),
    };
    const result = type === "zlib"
      ? zlib.inflateRawSync(input, options)
      : zlib.zstdDecompressSync!(input, options);
    out.set(result.subarray(0, clusterSize + 1));
    return result.length;
  };
}
