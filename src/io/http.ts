/**
 * Images over HTTP(S): a {@linkcode ByteSource} that reads through `fetch`
 * with `Range` requests, so that only what a reader asks for (the header,
 * the tables, the allocated clusters) crosses the network, never a hole.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";
import type { OpenedFile } from "../open.ts";

/**
 * Options for {@linkcode httpSource}. Sizes are in bytes.
 *
 * @example Fewer requests in flight, and a header for the server
 * ```ts
 * import type { HttpSourceOptions } from "@qcow2/qcow2";
 *
 * const options: HttpSourceOptions = {
 *   concurrency: 2,
 *   headers: { authorization: "Bearer 0123" },
 * };
 * ```
 */
export interface HttpSourceOptions {
  /** The `fetch` to use (default: the global one). */
  fetch?: typeof fetch;
  /** Extra request headers, such as `authorization`. */
  headers?: HeadersInit;
  /** Most requests in flight at once (default 4). */
  concurrency?: number;
  /**
   * The unit of requests and of the cache (default 256 KiB): a read fetches
   * the blocks it touches, adjacent missing blocks in one request.
   */
  blockSize?: number;
  /** Largest request, merged from adjacent blocks (default 4 MiB). */
  maxRequestBytes?: number;
  /**
   * Bytes of answers kept for later reads (default 16 MiB), least recently
   * used first out: the image's tables are fetched once.
   */
  cacheBytes?: number;
  /**
   * Most bytes fetched ahead of a run of sequential reads (default 0: only
   * the blocks read are fetched, so a conversion never fetches a freed
   * cluster). The window starts at one block and doubles with each read
   * that continues the run; 4 MiB suits a reader that reads one piece at a
   * time. (For `convert`, pass `parallel: 16` instead: its reads then queue
   * and adjacent ones merge.)
   */
  readAheadBytes?: number;
  /** Tries after the first for a failed range (default 3). */
  retries?: number;
  /** Wait before the first retry in ms, doubled for each next (default 200). */
  retryDelayMs?: number;
  /** Aborts every request, pending and future. */
  signal?: AbortSignal;
}

/**
 * What {@linkcode httpSource} resolves to: a {@linkcode ByteSource} over the
 * remote file, with what it learned about it and what it cost.
 *
 * @example Counting requests
 * ```ts
 * import { httpSource, type HttpSource } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/v3_64k.qcow2", import.meta.url));
 * const fetch = (_url: string | URL | Request, init?: RequestInit) => {
 *   const [from, to] = new Headers(init?.headers).get("range")!.slice(6).split("-").map(Number);
 *   const end = Math.min(to, bytes.length - 1);
 *   return Promise.resolve(new Response(bytes.slice(from, end + 1), {
 *     status: 206,
 *     headers: { "content-range": `bytes ${from}-${end}/${bytes.length}` },
 *   }));
 * };
 * const source: HttpSource = await httpSource("https://example.com/v3.qcow2", { fetch });
 * assertEquals(source.size, bytes.length);
 * assertEquals(source.stats.requests, 1); // the first block, for the size
 * ```
 */
export interface HttpSource extends OpenedFile {
  /** The URL, as given. */
  readonly url: string;
  /** The file's length, from the first answer's `Content-Range`. */
  readonly size: number;
  /** The file's `ETag`, if the server sends one. */
  readonly etag?: string;
  /** Requests made, bytes received and retries, so far. */
  readonly stats: { requests: number; bytes: number; retries: number };
  /** Stops pending requests and drops the cache. */
  close(): void;
}

const KiB = 1024;
const MiB = 1024 * KiB;

/** One block being fetched: its readers wait on `promise`. */
interface Pending {
  promise: Promise<Uint8Array>;
  resolve(block: Uint8Array): void;
  reject(e: unknown): void;
}

/** One answer in the cache: blocks `first`.. in one body. */
interface Answer {
  first: number;
  body: Uint8Array;
}

/** A sequential run of reads, for read-ahead. */
interface Stream {
  /** Where the last read of the run ended. */
  end: number;
  /** Bytes to fetch ahead of it. */
  window: number;
}

/**
 * Opens the file at `url` for reading through HTTP `Range` requests. The
 * first request (the first block) learns the size; after it, reads fetch
 * the blocks they touch: adjacent missing blocks in one request, up to
 * `concurrency` requests in flight, sequential reads fetched ahead, and the
 * blocks kept in a bounded cache. A failed range (a network error, 5xx or
 * 429) is tried again `retries` times, waiting longer each time.
 *
 * Every answer must be `206 Partial Content` for the same file: the same
 * length in `Content-Range` and the same `ETag` (requests carry `If-Match`
 * when the ETag is strong).
 *
 * Runs wherever `fetch` does: Deno (with `--allow-net=HOST`), Node 18+,
 * Bun, browsers (a page may read other origins only under CORS, which must
 * expose `Content-Range`).
 *
 * @param url An `http:` or `https:` URL.
 * @param options See {@linkcode HttpSourceOptions}.
 * @returns The source, its size known.
 * @throws {Qcow2Error} `HTTP_ERROR` (an error status or a failed connection,
 *   after the retries; the message has the status and the URL),
 *   `HTTP_NO_RANGE` (the server answered 200 instead of 206: it ignores
 *   `Range`), `HTTP_CHANGED` (the length or ETag changed between requests),
 *   `ABORTED` (by `signal`); the same codes from later reads.
 * @throws {TypeError} When `url` is not an http(s) URL.
 *
 * @example Reading an image from a server
 * ```ts
 * import { httpSource, openImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/zlib.qcow2", import.meta.url));
 * const server = Deno.serve({ hostname: "127.0.0.1", port: 0, onListen() {} }, (request) => {
 *   const [from, to] = request.headers.get("range")!.slice(6).split("-").map(Number);
 *   const end = Math.min(to, bytes.length - 1);
 *   return new Response(bytes.slice(from, end + 1), {
 *     status: 206,
 *     headers: { "content-range": `bytes ${from}-${end}/${bytes.length}` },
 *   });
 * });
 * const source = await httpSource(`http://127.0.0.1:${server.addr.port}/zlib.qcow2`);
 * const image = await openImage(source);
 * const cluster = new Uint8Array(65536);
 * await image.read(0, cluster);
 * image.close();
 * await server.shutdown();
 * assertEquals(new TextDecoder().decode(cluster.subarray(0, 8)), "varied-0");
 * ```
 */
export async function httpSource(
  url: string | URL,
  options: HttpSourceOptions = {},
): Promise<HttpSource> {
  const href = String(url);
  let parsed: URL;
  try {
    parsed = new URL(href);
  } catch {
    throw new TypeError(`Not a URL: '${href}'`);
  }
  if (parsed.protocol !== "http:" && parsed.protocol !== "https:") {
    throw new TypeError(`Not an http(s) URL: '${href}'`);
  }
  const doFetch = options.fetch ?? globalThis.fetch;
  const B = positive(options.blockSize, 256 * KiB, "blockSize");
  const concurrency = positive(options.concurrency, 4, "concurrency");
  const maxBlocks = Math.max(
    1,
    Math.floor(
      positive(options.maxRequestBytes, 4 * MiB, "maxRequestBytes") / B,
    ),
  );
  const cacheBytes = positive(options.cacheBytes, 16 * MiB, "cacheBytes");
  const readAheadMax = options.readAheadBytes ?? 0;
  const retries = options.retries ?? 3;
  const retryDelay = options.retryDelayMs ?? 200;
  const signal = options.signal;
  const stop = new AbortController();
  const onAbort = () => stop.abort(signal?.reason);
  signal?.addEventListener("abort", onAbort, { once: true });

  const stats = { requests: 0, bytes: 0, retries: 0 };
  let size = -1;
  let etag: string | undefined;
  let closed = false;

  /**
   * The cache: answers (each a run of blocks) least recently used first,
   * counted by their whole size, and which answer holds each block.
   */
  const answers = new Set<Answer>();
  const owner = new Map<number, Answer>();
  let cachedBytes = 0;
  /** Blocks being fetched, or queued to be. */
  const pending = new Map<number, Pending>();
  /** Runs of blocks waiting for a request slot: demanded ones first. */
  const demandQueue: [number, number][] = [];
  const aheadQueue: [number, number][] = [];
  let inFlight = 0;
  const streams: Stream[] = [];

  const fail = (code: Qcow2Error["code"], why: string, cause?: unknown) =>
    new Qcow2Error(code, `Cannot read '${href}': ${why}`, {
      cause,
      file: href,
    });

  const headersFor = (from: number, to: number): Headers => {
    const h = new Headers(options.headers);
    h.set("range", `bytes=${from}-${to}`);
    // A strong ETag makes the server refuse (412) a file that changed.
    if (etag !== undefined && !etag.startsWith("W/")) h.set("if-match", etag);
    return h;
  };

  /** Fetches bytes `from`..`to` (inclusive), checked and retried. */
  const fetchRange = async (from: number, to: number): Promise<Uint8Array> => {
    let lastError: Qcow2Error | undefined;
    for (let attempt = 0; attempt <= retries; attempt++) {
      if (attempt > 0) {
        stats.retries++;
        await sleep(retryDelay * 2 ** (attempt - 1), stop.signal);
      }
      if (stop.signal.aborted) throw aborted();
      let response: Response;
      try {
        stats.requests++;
        response = await doFetch(href, {
          headers: headersFor(from, to),
          signal: stop.signal,
        });
      } catch (e) {
        if (stop.signal.aborted) throw aborted();
        lastError = fail("HTTP_ERROR", `the request failed (${why(e)})`, e);
        // Network errors are TypeErrors; others (no permission) stay.
        if (e instanceof TypeError) continue;
        throw lastError;
      }
      const status = response.status;
      if (status === 206) {
        const length = checkSame(response, from, to);
        let body: Uint8Array;
        try {
          body = await readBody(response, length);
        } catch (e) {
          if (stop.signal.aborted) throw aborted();
          lastError = fail(
            "HTTP_ERROR",
            `the answer was cut off (${(e as Error)?.message ?? e})`,
            e,
          );
          continue;
        }
        stats.bytes += body.length;
        if (body.length === length) return body;
        giveBack(body);
        lastError = fail(
          "HTTP_ERROR",
          `the answer was cut off (${body.length} of ${length} bytes)`,
        );
        continue;
      }
      await response.body?.cancel().catch(() => {});
      if (status === 200) {
        throw fail(
          "HTTP_NO_RANGE",
          "the server ignores Range requests (200 OK instead of 206 Partial Content); it must serve byte ranges",
        );
      }
      if (status === 412 || (status === 416 && size >= 0)) {
        throw fail(
          "HTTP_CHANGED",
          `the file changed on the server while it was read (${status} ${response.statusText})`,
        );
      }
      lastError = fail(
        "HTTP_ERROR",
        `the server answered ${status}${
          response.statusText ? ` ${response.statusText}` : ""
        }`,
      );
      if (!(status >= 500 || status === 429 || status === 408)) break;
    }
    throw lastError!;
  };

  /**
   * Checks a 206 answer is of the same file and the range asked for;
   * returns the body's length.
   */
  const checkSame = (response: Response, from: number, to: number) => {
    const range = /^bytes (\d+)-(\d+)\/(\d+)$/.exec(
      response.headers.get("content-range") ?? "",
    );
    if (!range) {
      throw fail(
        "HTTP_ERROR",
        `the server's 206 answer has no usable Content-Range ('${
          response.headers.get("content-range")
        }')`,
      );
    }
    const [start, end, total] = range.slice(1).map(Number);
    const tag = response.headers.get("etag") ?? undefined;
    if (size < 0) {
      size = total;
      etag = tag;
    } else if (total !== size) {
      throw fail(
        "HTTP_CHANGED",
        `the file changed on the server while it was read (its length was ${size} bytes, now ${total})`,
      );
    } else if (etag !== undefined && tag !== undefined && tag !== etag) {
      throw fail(
        "HTTP_CHANGED",
        `the file changed on the server while it was read (ETag ${etag}, now ${tag})`,
      );
    }
    const want = Math.min(to, size - 1);
    if (start !== from || end !== want) {
      throw fail(
        "HTTP_ERROR",
        `the server answered bytes ${start}-${end} for bytes ${from}-${want}`,
      );
    }
    return end - start + 1;
  };

  /**
   * Spare buffers by byte length, to read bodies into: a conversion moves
   * hundreds of MiB, and fresh buffers for each answer cost page faults and
   * garbage (RSS grew past 250 MiB without them).
   */
  const spare = new Map<number, ArrayBuffer[]>();
  const spareMax = 2 * maxBlocks * B;
  let spareBytes = 0;
  const take = (length: number): ArrayBuffer => {
    const capacity = Math.ceil(length / B) * B;
    const buffer = spare.get(capacity)?.pop();
    if (!buffer) return new ArrayBuffer(capacity);
    spareBytes -= capacity;
    return buffer;
  };
  const giveBack = (body: Uint8Array) => {
    const capacity = body.buffer.byteLength;
    if (spareBytes + capacity > spareMax) return;
    const list = spare.get(capacity) ?? [];
    list.push(body.buffer as ArrayBuffer);
    spare.set(capacity, list);
    spareBytes += capacity;
  };

  /** Reads `length` bytes of body (fewer if it ends early) into a spare buffer. */
  const readBody = async (
    response: Response,
    length: number,
  ): Promise<Uint8Array> => {
    const stream = response.body;
    if (!stream) return new Uint8Array(0);
    let reader: ReadableStreamBYOBReader;
    try {
      reader = stream.getReader({ mode: "byob" });
    } catch {
      // No byte stream here: the whole body at once.
      const whole = new Uint8Array(await response.arrayBuffer());
      return whole.subarray(0, length);
    }
    let buffer = take(length);
    let at = 0;
    try {
      while (at < length) {
        const { done, value } = await reader.read(
          new Uint8Array(buffer, at, length - at),
        );
        if (!value) break;
        buffer = value.buffer as ArrayBuffer;
        at += value.length;
        if (done) break;
      }
    } finally {
      if (at >= length) reader.cancel().catch(() => {});
      else reader.releaseLock();
    }
    return new Uint8Array(buffer, 0, at);
  };

  const aborted = () =>
    new Qcow2Error(
      "ABORTED",
      `Cannot read '${href}': ${closed ? "the source was closed" : "aborted"}`,
      { cause: stop.signal.reason, file: href },
    );

  const blockCount = () => Math.ceil(size / B);

  /** Keeps an answer of blocks `first`.. in the cache, evicting the oldest. */
  const remember = (first: number, body: Uint8Array) => {
    const answer: Answer = { first, body };
    const count = Math.ceil(body.length / B);
    for (let i = first; i < first + count; i++) owner.set(i, answer);
    answers.add(answer);
    cachedBytes += body.buffer.byteLength;
    for (const old of answers) {
      if (cachedBytes <= cacheBytes || old === answer) break;
      answers.delete(old);
      cachedBytes -= old.body.buffer.byteLength;
      // Its readers have copied their blocks: they do so as soon as the
      // answer arrives, before any later answer can be read into it.
      giveBack(old.body);
      const n = Math.ceil(old.body.length / B);
      for (let i = old.first; i < old.first + n; i++) {
        if (owner.get(i) === old) owner.delete(i);
      }
    }
  };

  /** A cached block, marking its answer as recently used. */
  const cached = (i: number): Uint8Array | undefined => {
    const answer = owner.get(i);
    if (!answer) return undefined;
    answers.delete(answer);
    answers.add(answer);
    const at = (i - answer.first) * B;
    return answer.body.subarray(at, at + B);
  };

  /** Marks blocks `a`..`b` as pending and queues them. */
  const enqueue = (a: number, b: number, ahead: boolean) => {
    for (let i = a; i <= b; i++) {
      let resolve!: (block: Uint8Array) => void;
      let reject!: (e: unknown) => void;
      const promise = new Promise<Uint8Array>((res, rej) => {
        resolve = res;
        reject = rej;
      });
      // Read-ahead blocks may fail with no reader waiting on them.
      promise.catch(() => {});
      pending.set(i, { promise, resolve, reject });
    }
    (ahead ? aheadQueue : demandQueue).push([a, b]);
  };

  /** Starts queued requests while slots are free, merging adjacent runs. */
  const pump = () => {
    while (inFlight < concurrency) {
      const queue = demandQueue.length > 0 ? demandQueue : aheadQueue;
      const run = queue.shift();
      if (!run) return;
      let [a, b] = run;
      // Merge queued runs that touch this one (either queue).
      for (let merged = true; merged;) {
        merged = false;
        for (const q of [demandQueue, aheadQueue]) {
          for (let k = 0; k < q.length; k++) {
            const [c, d] = q[k];
            if (c === b + 1 && d - a + 1 <= maxBlocks) b = d;
            else if (d === a - 1 && b - c + 1 <= maxBlocks) a = c;
            else continue;
            q.splice(k, 1);
            merged = true;
            break;
          }
        }
      }
      inFlight++;
      const from = a * B;
      const to = Math.min((b + 1) * B, size) - 1;
      fetchRange(from, to).then((body) => {
        if (!closed) remember(a, body);
        for (let i = a; i <= b; i++) {
          const block = body.subarray((i - a) * B, (i - a + 1) * B);
          const p = pending.get(i);
          pending.delete(i);
          p?.resolve(block);
        }
      }, (e) => {
        for (let i = a; i <= b; i++) {
          const p = pending.get(i);
          pending.delete(i);
          p?.reject(e);
        }
      }).finally(() => {
        inFlight--;
        pump();
      });
    }
  };

  /** Queues the blocks in `a`..`b` that are neither cached nor pending. */
  const request = (a: number, b: number, ahead: boolean) => {
    const missing = (i: number) => !owner.has(i) && !pending.has(i);
    if (!ahead) {
      // Read-ahead runs this read needs, not started yet, go first now.
      for (let k = aheadQueue.length - 1; k >= 0; k--) {
        const [c, d] = aheadQueue[k];
        if (c <= b && d >= a) demandQueue.push(...aheadQueue.splice(k, 1));
      }
    }
    for (let i = a; i <= b; i++) {
      if (!missing(i)) continue;
      let j = i;
      while (j < b && j - i + 1 < maxBlocks && missing(j + 1)) j++;
      enqueue(i, j, ahead);
      i = j;
    }
  };

  /** The read-ahead window for a read of `from`..`end`, updating the runs. */
  const readAheadFor = (from: number, end: number): number => {
    if (readAheadMax <= 0) return 0;
    const k = streams.findIndex((s) => from >= s.end - B && from <= s.end + B);
    if (k < 0) {
      streams.push({ end, window: 0 });
      if (streams.length > 8) streams.shift();
      return 0;
    }
    const s = streams[k];
    s.end = Math.max(s.end, end);
    s.window = Math.min(readAheadMax, s.window === 0 ? B : s.window * 2);
    streams.splice(k, 1);
    streams.push(s);
    return s.window;
  };

  const readAt = async (position: number, buffer: Uint8Array) => {
    if (closed || stop.signal.aborted) throw aborted();
    const n = Math.max(0, Math.min(buffer.length, size - position));
    if (n === 0) return 0;
    const first = Math.floor(position / B);
    const last = Math.floor((position + n - 1) / B);
    request(first, last, false);
    const ahead = readAheadFor(position, position + n);
    if (ahead > 0) {
      const to = Math.min(
        blockCount() - 1,
        Math.floor((position + n - 1 + ahead) / B),
      );
      if (to > last) request(last + 1, to, true);
    }
    pump();
    for (let i = first; i <= last; i++) {
      let block = cached(i);
      if (!block) {
        const p = pending.get(i);
        if (!p) {
          // Evicted between its arrival and this read: fetch it again.
          request(i, i, false);
          pump();
          block = await pending.get(i)!.promise;
        } else block = await p.promise;
      }
      const blockStart = i * B;
      const a = Math.max(position, blockStart);
      const b = Math.min(position + n, blockStart + block.length);
      buffer.set(
        block.subarray(a - blockStart, b - blockStart),
        a - position,
      );
    }
    return n;
  };

  // The first block: the header, and the size.
  try {
    remember(0, await fetchRange(0, B - 1));
  } catch (e) {
    signal?.removeEventListener("abort", onAbort);
    throw e;
  }

  return {
    url: href,
    get size() {
      return size;
    },
    get etag() {
      return etag;
    },
    stats,
    readAt,
    close() {
      if (closed) return;
      closed = true;
      answers.clear();
      owner.clear();
      signal?.removeEventListener("abort", onAbort);
      stop.abort(new Error("closed"));
    },
  };
}

/**
 * An error's message with its cause's, on one line (`fetch` rejects with
 * "fetch failed" and says why in the cause, in Deno and Node.js alike).
 */
function why(e: unknown): string {
  const message = (e as Error)?.message ?? String(e);
  const cause = (e as Error)?.cause;
  const more = cause instanceof Error && cause.message
    ? `: ${cause.message}`
    : "";
  return (message + more).replace(/\s*\n\s*/g, " ");
}

function positive(
  value: number | undefined,
  fallback: number,
  name: string,
): number {
  if (value === undefined) return fallback;
  if (!Number.isSafeInteger(value) || value < 1) {
    throw new RangeError(`httpSource: ${name} must be a positive integer`);
  }
  return value;
}

function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal.removeEventListener("abort", done);
      resolve();
    }
    signal.addEventListener("abort", done, { once: true });
  });
}
