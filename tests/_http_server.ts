/**
 * A small HTTP file server for tests, on 127.0.0.1 and a free port: serves
 * files from memory with `Range` support, and misbehaves on request (added
 * delay, Range ignored, the file changed after some requests, error
 * statuses). It records every request's range.
 */

/** How the server behaves; every field can be changed between requests. */
export interface ServerMode {
  /** Milliseconds added before each answer. */
  delayMs?: number;
  /** Answer 200 with the whole file, as a server without Range support. */
  ignoreRange?: boolean;
  /** After this many requests, serve `changedTo` instead (new ETag). */
  changeAfter?: number;
  /** The file served after `changeAfter` requests. */
  changedTo?: Uint8Array;
  /** Answer this status to the next `failCount` requests (default 503). */
  failStatus?: number;
  /** How many requests get `failStatus` (Infinity: all). */
  failCount?: number;
  /** Send no ETag. */
  noEtag?: boolean;
  /** Allow any origin (CORS), exposing Content-Range and ETag. */
  cors?: boolean;
}

/** A running test server. */
export interface TestServer {
  /** `http://127.0.0.1:PORT` */
  origin: string;
  /** The URL of a served file. */
  url(name: string): string;
  /** The ranges asked for, `[from, to]` inclusive, per file name. */
  ranges: { name: string; from: number; to: number }[];
  /** Requests answered, of any kind. */
  requests: number;
  /** The most requests that were in progress at once. */
  maxInFlight: number;
  mode: ServerMode;
  close(): Promise<void>;
}

/**
 * Serves `files` (name → bytes) until `close()`.
 */
export function startServer(
  files: Record<string, Uint8Array>,
  mode: ServerMode = {},
): TestServer {
  const ac = new AbortController();
  const state: TestServer = {
    origin: "",
    url: (name) => `${state.origin}/${name}`,
    ranges: [],
    requests: 0,
    maxInFlight: 0,
    mode,
    close: async () => {
      ac.abort();
      await server.finished;
    },
  };
  const server = Deno.serve(
    {
      hostname: "127.0.0.1",
      port: 0,
      signal: ac.signal,
      onListen() {},
    },
    async (request) => {
      inFlight++;
      state.maxInFlight = Math.max(state.maxInFlight, inFlight);
      try {
        return await answer(request);
      } finally {
        inFlight--;
      }
    },
  );
  let inFlight = 0;
  async function answer(request: Request): Promise<Response> {
    const m = state.mode;
    if (request.method === "OPTIONS" && m.cors) {
      return new Response(null, {
        status: 204,
        headers: {
          "access-control-allow-origin": "*",
          "access-control-allow-methods": "GET, HEAD",
          "access-control-allow-headers": "range, if-match",
          "access-control-max-age": "600",
        },
      });
    }
    const n = ++state.requests;
    if (m.delayMs) await new Promise((r) => setTimeout(r, m.delayMs));
    const name = decodeURIComponent(new URL(request.url).pathname.slice(1));
    if ((m.failCount ?? 0) > 0) {
      m.failCount!--;
      return new Response("failing on purpose\n", {
        status: m.failStatus ?? 503,
        headers: m.cors ? { "access-control-allow-origin": "*" } : {},
      });
    }
    let bytes = files[name];
    if (!bytes) {
      return new Response("no such file\n", {
        status: 404,
        headers: m.cors ? { "access-control-allow-origin": "*" } : {},
      });
    }
    let version = 1;
    if (m.changeAfter !== undefined && n > m.changeAfter && m.changedTo) {
      bytes = m.changedTo;
      version = 2;
    }
    const etag = `"${name.length}-${bytes.length}-v${version}"`;
    const headers = new Headers({ "accept-ranges": "bytes" });
    if (m.cors) {
      headers.set("access-control-allow-origin", "*");
      headers.set(
        "access-control-expose-headers",
        "content-range, etag, content-length",
      );
    }
    if (!m.noEtag) headers.set("etag", etag);
    const ifMatch = request.headers.get("if-match");
    if (ifMatch && !m.noEtag && ifMatch !== etag) {
      return new Response(null, { status: 412, headers });
    }
    const range = /^bytes=(\d+)-(\d*)$/.exec(
      request.headers.get("range") ?? "",
    );
    if (!range || m.ignoreRange) {
      state.ranges.push({ name, from: 0, to: bytes.length - 1 });
      return new Response(bytes as Uint8Array<ArrayBuffer>, {
        status: 200,
        headers,
      });
    }
    const from = Number(range[1]);
    const to = Math.min(
      range[2] === "" ? bytes.length - 1 : Number(range[2]),
      bytes.length - 1,
    );
    if (from >= bytes.length) {
      headers.set("content-range", `bytes */${bytes.length}`);
      return new Response(null, { status: 416, headers });
    }
    state.ranges.push({ name, from, to });
    headers.set("content-range", `bytes ${from}-${to}/${bytes.length}`);
    return new Response(bytes.slice(from, to + 1), { status: 206, headers });
  }
  state.origin = `http://127.0.0.1:${server.addr.port}`;
  return state;
}
