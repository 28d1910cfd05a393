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

import type {
  ClusterDecompressor,
  clusterDecompressor,
} from "./zlib_handle.ts";

/** The shared memory of one batch slot. */
export interface Arena {
  /** Compressed clusters, one after another. */
  input: SharedArrayBuffer;
  /** Decompressed clusters, `clusterSize` bytes apart (plus one byte). */
  output: SharedArrayBuffer;
}

/**
 * A message to the worker: its arenas, shared buffers that batches may
 * name as targets, or a batch to decompress.
 */
export type WorkerRequest =
  | { arenas: Arena[] }
  | { shared: [number, SharedArrayBuffer][] }
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
    /**
     * Per item: a target buffer's id and a byte offset there, to copy a
     * good cluster to (then the main thread need not copy it), or -1 for
     * the output arena only. Two numbers per item.
     */
    targets?: number[];
  };

/** The reply: for each item, the bytes it decompressed to, or why it failed. */
export interface WorkerReply {
  /** The request's id. */
  id: number;
  /** Bytes each item decompressed to (`clusterSize` when good), or an error. */
  results: (number | string)[];
}

/**
 * The worker's whole program, given {@linkcode clusterDecompressor} (as
 * source text, like itself). It must not refer to anything outside.
 */
export function workerMain(makeDecompressor: typeof clusterDecompressor): void {
  let decompress: ClusterDecompressor;
  let arenas: { input: Uint8Array; output: Uint8Array }[] = [];
  const targets = new Map<number, Uint8Array>();

  const scope = globalThis as unknown as {
    onmessage: ((event: MessageEvent<WorkerRequest>) => void) | null;
    postMessage(message: WorkerReply): void;
  };
  let loaded: Promise<void> | undefined;
  const load = async () => {
    // Built at run time: a node: specifier in the module graph would start
    // Node compatibility in the main thread too (see node_builtin.ts).
    const name = "zlib";
    decompress = makeDecompressor(await import(`node:${name}`));
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
    if ("shared" in data) {
      for (const [key, buffer] of data.shared) {
        targets.set(key, new Uint8Array(buffer));
      }
      return;
    }
    const { id, type, clusterSize, bounds } = data;
    const { input, output } = arenas[data.arena];
    const results: (number | string)[] = [];
    for (let i = 0; i + 1 < bounds.length; i++) {
      try {
        const out = output.subarray(
          i * clusterSize,
          (i + 1) * clusterSize + 1,
        );
        const n = decompress(
          type,
          input.subarray(bounds[i], bounds[i + 1]),
          out,
          clusterSize,
        );
        const target = data.targets ? data.targets[2 * i] : -1;
        if (n === clusterSize && target >= 0) {
          // Copied here, while the cluster is still in this core's cache.
          targets.get(target)!.set(
            out.subarray(0, clusterSize),
            data.targets![2 * i + 1],
          );
        }
        results.push(n);
      } catch (e) {
        results.push(e instanceof Error ? e.message : String(e));
      }
    }
    scope.postMessage({ id, results });
  };
}
