/**
 * Sector decryption on every core: a pool of workers, each running the
 * {@linkcode SectorCipher} over `node:crypto`'s AES (`nodeAes`), behind the
 * `encryption` hook of {@linkcode CryptoProvider}. Deno's `node:crypto` has
 * no AES-XTS, so XTS runs as tweak arithmetic in JavaScript over native
 * AES-ECB: about 1.4 ms per MiB on this project's machine, which the pool
 * spreads over the cores while the calling thread reads and writes.
 *
 * Each request's bytes are copied into a shared buffer (a
 * `SharedArrayBuffer`, reused: posting it shares it, and memory used before
 * takes no page faults, where a new buffer per request took one per 4 KiB),
 * sent to the worker with the fewest pending (at most two each: one being
 * done, one waiting), decrypted there in place and copied back. Requests
 * beyond that wait in a queue, and the calling thread takes the oldest
 * whenever it has a turn free (a timer runs only then), so it shares the work
 * rather than idle. Requests under 64 KiB are decrypted on the calling
 * thread: a trip to a worker costs more. The workers start on the first
 * request big enough for them, so a small read never pays for them. They run
 * from a `blob:` URL made of the cipher's source text, so starting one needs
 * no read permission; they stop when the image's encryption is closed.
 *
 * @module
 */

import { hex } from "../src/errors.ts";
import type { ImageEncryption } from "../src/crypto/encryption.ts";
import type { CryptoProvider } from "../src/crypto/provider.ts";
import {
  type CipherSpec,
  SECTOR_SIZE,
  SectorCipher,
  sectorCipherKeys,
} from "../src/crypto/sector_cipher.ts";
import { nodeAes, nodeCrypto, type NodeCryptoModule } from "./crypto.ts";
import { importNode } from "./node_builtin.ts";

/**
 * Options for {@linkcode workerCrypto}.
 *
 * @example Two workers
 * ```ts
 * import { workerCrypto, type WorkerCryptoOptions } from "@qcow2/qcow2";
 *
 * const options: WorkerCryptoOptions = { workers: 2 };
 * const provider = workerCrypto(options);
 * ```
 */
export interface WorkerCryptoOptions {
  /** Workers per encrypted image (default: the logical cores, at most 8). */
  workers?: number;
  /** Requests smaller than this many bytes stay on the calling thread (default 64 KiB). */
  minWorkerBytes?: number;
}

/** The worker's program: a sector cipher over `node:crypto`, in place. */
function workerMain(
  Cipher: typeof SectorCipher,
  aes: typeof nodeAes,
): void {
  const scope = globalThis as unknown as {
    onmessage: ((event: MessageEvent) => void) | null;
    postMessage(message: unknown, transfer?: Transferable[]): void;
  };
  let cipher: SectorCipher | undefined;
  scope.onmessage = async (event) => {
    const m = event.data;
    try {
      if (m.keys) {
        const c = await import(["node", "crypto"].join(":"));
        cipher = new Cipher(
          m.spec,
          aes(c, m.keys.data),
          m.keys.tweak && aes(c, m.keys.tweak),
          m.keys.essiv && aes(c, m.keys.essiv),
        );
        for (const k of Object.values(m.keys)) (k as Uint8Array)?.fill(0);
        return;
      }
      const data = new Uint8Array(m.buffer, 0, m.length);
      if (m.encrypt) cipher!.encrypt(m.sector, data);
      else cipher!.decrypt(m.sector, data);
      scope.postMessage({ id: m.id });
    } catch (e) {
      scope.postMessage({
        id: m.id,
        error: String((e as Error)?.message ?? e),
      });
    }
  };
}

let script: string | undefined;

/** Requests in flight per worker: one being done, one waiting. */
const DEPTH = 2;

interface Slot {
  worker: Worker;
  busy: Map<number, Job>;
}

interface Job {
  sector: number;
  data: Uint8Array;
  encrypt: boolean;
  lane?: Uint8Array;
  resolve(): void;
  reject(e: unknown): void;
}

/**
 * `node:crypto`'s primitives, with sector encryption spread over a pool of
 * workers for each encrypted image opened with it (started when the image
 * is unlocked, stopped by its `close()`).
 *
 * @param options Workers per image, and the smallest request sent to one.
 * @returns The provider.
 *
 * @example Reading a LUKS image with sectors decrypted on workers
 * ```ts
 * import { openImage, workerCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const gz = await Deno.open(new URL("../tests/fixtures/crypto/luks_default.qcow2.gz", import.meta.url));
 * const bytes = new Uint8Array(await new Response(gz.readable.pipeThrough(new DecompressionStream("gzip"))).arrayBuffer());
 * const image = await openImage(bytes, {
 *   password: "fixture-password",
 *   crypto: workerCrypto({ workers: 1, minWorkerBytes: 0 }),
 * });
 * try {
 *   const sector = new Uint8Array(512);
 *   await image.read(0, sector);
 *   assertEquals(sector[0], 0x11);
 * } finally {
 *   image.close(); // stops the workers
 * }
 * ```
 */
export function workerCrypto(
  options: WorkerCryptoOptions = {},
): CryptoProvider {
  const count = Math.max(
    1,
    Math.min(8, options.workers ?? navigator.hardwareConcurrency ?? 2),
  );
  const minBytes = options.minWorkerBytes ?? 64 * 1024;
  return {
    ...nodeCrypto,
    async encryption(
      format: "luks" | "aes",
      spec: CipherSpec,
      key: Uint8Array,
    ): Promise<ImageEncryption> {
      const c = await importNode<NodeCryptoModule>("crypto");
      const keys = await sectorCipherKeys(nodeCrypto, spec, key);
      const local = new SectorCipher(
        spec,
        nodeAes(c, keys.data),
        keys.tweak && nodeAes(c, keys.tweak),
        keys.essiv && nodeAes(c, keys.essiv),
      );
      let nextId = 1;
      // Shared buffers that carry requests to a worker and back: posting
      // one shares it, and reusing them touches no fresh memory.
      const lanes: Uint8Array[] = [];
      let slots: Slot[] | undefined;
      // The workers start on the first request big enough for one, so that
      // a small read never pays for them; until then the keys are kept.
      let pending: typeof keys | undefined = keys;
      const start = (): Slot[] => {
        script ??= URL.createObjectURL(
          new Blob([
            `const SectorCipher = (${SectorCipher.toString()});\n` +
            `const nodeAes = (${nodeAes.toString()});\n` +
            `(${workerMain.toString()})(SectorCipher, nodeAes);\n`,
          ], { type: "text/javascript" }),
        );
        const made = Array.from({ length: count }, () => {
          const worker = new Worker(script!, { type: "module" });
          const busy = new Map<number, Job>();
          worker.onmessage = (event) => {
            const { id, error } = event.data;
            const job = busy.get(id);
            if (!job) return;
            busy.delete(id);
            if (error !== undefined) job.reject(new Error(error));
            else {
              job.data.set(job.lane!.subarray(0, job.data.length));
              lanes.push(job.lane!);
              job.resolve();
            }
            dispatch();
          };
          worker.onerror = (event) => {
            event.preventDefault();
            for (const job of busy.values()) {
              job.reject(event.error ?? new Error(event.message));
            }
            busy.clear();
          };
          // Each worker gets its own copy of the keys.
          worker.postMessage({
            spec,
            keys: {
              data: keys.data.slice(),
              tweak: keys.tweak?.slice(),
              essiv: keys.essiv?.slice(),
            },
          });
          return { worker, busy };
        });
        wipe();
        return made;
      };
      const wipe = () => {
        for (const k of Object.values(pending ?? {})) k?.fill(0);
        pending = undefined;
      };
      let closed = false;
      // Requests wait here until a worker has fewer than DEPTH; the
      // calling thread takes the oldest one whenever it has a turn free
      // (a timer runs only when it does), so it shares the work rather than
      // idle while it waits.
      const queue: Job[] = [];
      let help: ReturnType<typeof setTimeout> | undefined;
      const here = (job: Job) => {
        try {
          if (job.encrypt) local.encrypt(job.sector, job.data);
          else local.decrypt(job.sector, job.data);
          job.resolve();
        } catch (e) {
          job.reject(e);
        }
      };
      const dispatch = () => {
        while (queue.length > 0 && !closed) {
          slots ??= start();
          let slot = slots[0];
          for (const s of slots) if (s.busy.size < slot.busy.size) slot = s;
          if (slot.busy.size >= DEPTH) break;
          const job = queue.shift()!;
          const id = nextId++;
          let lane = lanes.pop();
          if (!lane || lane.length < job.data.length) {
            lane = new Uint8Array(
              new SharedArrayBuffer(
                Math.max(job.data.length, lane?.length ?? 0),
              ),
            );
          }
          lane.set(job.data);
          job.lane = lane;
          slot.busy.set(id, job);
          slot.worker.postMessage({
            id,
            sector: job.sector,
            buffer: lane.buffer,
            length: job.data.length,
            encrypt: job.encrypt,
          });
        }
        if (queue.length > 0 && help === undefined) {
          help = setTimeout(() => {
            help = undefined;
            const job = queue.shift();
            if (job) here(job);
            dispatch();
          }, 0);
        }
      };
      const run = (offset: number, data: Uint8Array, encrypt: boolean) => {
        if (offset % SECTOR_SIZE !== 0) {
          throw new RangeError(
            `Cannot encrypt at ${hex(offset)}: not a sector boundary`,
          );
        }
        const sector = offset / SECTOR_SIZE;
        if (data.length < minBytes || closed) {
          if (encrypt) local.encrypt(sector, data);
          else local.decrypt(sector, data);
          return Promise.resolve();
        }
        return new Promise<void>((resolve, reject) => {
          queue.push({ sector, data, encrypt, resolve, reject });
          dispatch();
        });
      };
      return {
        format,
        spec,
        physical: format === "luks",
        decrypt: (offset, data) => run(offset, data, false),
        encrypt: (offset, data) => run(offset, data, true),
        close() {
          closed = true;
          wipe();
          clearTimeout(help);
          for (const job of queue.splice(0)) {
            job.reject(new Error("the image's encryption was closed"));
          }
          for (const { worker, busy } of slots ?? []) {
            worker.terminate();
            for (const job of busy.values()) {
              job.reject(new Error("the image's encryption was closed"));
            }
          }
        },
      };
    },
  };
}
