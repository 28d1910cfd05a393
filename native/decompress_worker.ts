/**
 * The worker side of `worker_codecs.ts`: decompresses batches of compressed
 * clusters with `node:zlib`, reading them from and writing the clusters to
 * memory shared with the main thread, so no batch allocates.
 *
 * The worker runs {@linkcode workerMain}'s source text from a `blob:` URL,
 * so starting it needs no read permission for this file (the CLI runs with
 * read access to its images alone). Hence `workerMain` refers to nothing
 * outside itself.
 *
 * @module
 */

/** The shared memory of one batch slot. */
export interface Arena {
  /** Compressed clusters, one after another. */
  input: SharedArrayBuffer;
  /** Decompressed clusters, `clusterSize` bytes apart (plus one byte). */
  output: SharedArrayBuffer;
}

/** A message to the worker: its arenas, or a batch to decompress. */
export type WorkerRequest =
  | { arenas: Arena[] }
  | {
    /** Matches the reply to the request. */
    id: number;
    /** The arena holding the batch. */
    arena: number;
    /** The compression type (zstd input is cut to its frame already). */
    type: "zlib" | "zstd";
    /** Bytes in a cluster: each item must decompress to exactly this. */
    clusterSize: number;
    /** Where each item starts in the input arena, and where the last ends. */
    bounds: number[];
  };

/** The reply: for each item, the bytes it decompressed to, or why it failed. */
export interface WorkerReply {
  /** The request's id. */
  id: number;
  /** Bytes each item decompressed to (`clusterSize` when good), or an error. */
  results: (number | string)[];
}

/** The worker's whole program. It must not refer to anything outside. */
export function workerMain(): void {
  type Zlib = {
    inflateRawSync(input: Uint8Array, options: object): Uint8Array;
    zstdDecompressSync?(input: Uint8Array, options: object): Uint8Array;
    createInflateRaw(): unknown;
    createZstdDecompress?(): unknown;
    constants: { Z_FINISH: number; ZSTD_e_end: number };
  };
  type Handle = {
    writeSync(
      flush: number,
      input: Uint8Array,
      inOffset: number,
      inLength: number,
      output: Uint8Array,
      outOffset: number,
      outLength: number,
    ): void;
    reset(): void;
    onerror: (message: string) => void;
  };
  type Stream = { _handle?: Handle; _writeState?: Uint32Array };

  /**
   * A reusable decompression handle: `node:zlib`'s binding under its stream
   * classes, driven as its synchronous one-shot functions drive it. Making
   * a stream per cluster costs more than a reused handle (measured: 12% of
   * a 64 KiB cluster's time). Where the binding is missing or misbehaves,
   * the one-shot functions take over.
   */
  class Reusable {
    #handle?: Handle;
    #state?: Uint32Array;
    #error?: string;
    constructor(readonly make: () => Stream, readonly finish: number) {}

    /** Decompresses into `out` (`length` + 1 bytes); the count, if known. */
    run(input: Uint8Array, out: Uint8Array, length: number) {
      try {
        if (!this.#handle) {
          const stream = this.make();
          if (!stream._handle || !stream._writeState) return undefined;
          this.#handle = stream._handle;
          this.#state = stream._writeState;
          this.#handle.onerror = (message) => this.#error = message;
        }
        this.#error = undefined;
        this.#handle.writeSync(
          this.finish,
          input,
          0,
          input.length,
          out,
          0,
          length + 1,
        );
        const produced = length + 1 - this.#state![0];
        if (this.#error !== undefined) {
          this.#handle = undefined;
          return undefined;
        }
        this.#handle.reset();
        return produced;
      } catch {
        this.#handle = undefined;
        return undefined;
      }
    }
  }

  let zlib: Zlib;
  let inflater: Reusable;
  let zstd: Reusable | undefined;
  let arenas: { input: Uint8Array; output: Uint8Array }[] = [];

  /** Decompresses one cluster into `out`; returns the count produced. */
  const decompress = (
    type: "zlib" | "zstd",
    input: Uint8Array,
    out: Uint8Array,
    clusterSize: number,
  ): number => {
    if (type === "zstd" && !zstd) {
      throw new Error("this runtime's node:zlib has no zstd");
    }
    const fast = (type === "zlib" ? inflater : zstd!).run(
      input,
      out,
      clusterSize,
    );
    if (fast !== undefined) return fast;
    // The one-shot functions: slower, and their errors say what is wrong.
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

  const scope = globalThis as unknown as {
    onmessage: ((event: MessageEvent<WorkerRequest>) => void) | null;
    postMessage(message: WorkerReply): void;
  };
  let loaded: Promise<void> | undefined;
  const load = async () => {
    // Built at run time: a node: specifier in the module graph would start
    // Node compatibility in the main thread too (see node_builtin.ts).
    const name = "zlib";
    zlib = await import(`node:${name}`);
    inflater = new Reusable(
      () => zlib.createInflateRaw() as Stream,
      zlib.constants.Z_FINISH,
    );
    if (typeof zlib.createZstdDecompress === "function") {
      zstd = new Reusable(
        () => zlib.createZstdDecompress!() as Stream,
        zlib.constants.ZSTD_e_end,
      );
    }
  };

  scope.onmessage = async ({ data }) => {
    await (loaded ??= load());
    if ("arenas" in data) {
      arenas = data.arenas.map((a) => ({
        input: new Uint8Array(a.input),
        output: new Uint8Array(a.output),
      }));
      return;
    }
    const { id, type, clusterSize, bounds } = data;
    const { input, output } = arenas[data.arena];
    const results: (number | string)[] = [];
    for (let i = 0; i + 1 < bounds.length; i++) {
      try {
        results.push(decompress(
          type,
          input.subarray(bounds[i], bounds[i + 1]),
          output.subarray(i * clusterSize, (i + 1) * clusterSize + 1),
          clusterSize,
        ));
      } catch (e) {
        results.push(e instanceof Error ? e.message : String(e));
      }
    }
    scope.postMessage({ id, results });
  };
}
