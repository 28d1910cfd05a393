/**
 * A tiny static file server for the page in this directory, on localhost
 * only. Build the bundle first (`deno task web:build`), or run both with
 * `deno task web`:
 *
 * ```sh
 * deno run --allow-read=web --allow-net=127.0.0.1 web/serve.ts [--port 8000]
 * ```
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";

const TYPES: Record<string, string> = {
  html: "text/html; charset=utf-8",
  js: "text/javascript; charset=utf-8",
  css: "text/css; charset=utf-8",
  map: "application/json",
};

/** Options for {@linkcode serveWeb}. */
export interface ServeWebOptions {
  /** The port to listen on; 0 (the default) picks a free one. */
  port?: number;
  /** Stops the server. */
  signal?: AbortSignal;
  /** Called once the server listens, with its address. */
  onListen?: (address: Deno.NetAddr) => void;
}

/**
 * Serves the files of `root` (not its subdirectories' parents) on
 * 127.0.0.1: `GET /` is `index.html`; other files by name, with a content
 * type for `.html`, `.js`, `.css` and `.map`; anything else is 404.
 *
 * @param root The directory to serve (a `file:` URL ending in `/`).
 * @param options Port, stop signal, and a callback once listening.
 * @returns The running server; await `finished` after aborting the signal.
 *
 * @example Serving the page on a free port
 * ```ts ignore
 * import { serveWeb } from "./serve.ts";
 *
 * const stop = new AbortController();
 * const server = serveWeb(new URL("./", import.meta.url), { signal: stop.signal });
 * console.log(`http://127.0.0.1:${server.addr.port}/`);
 * stop.abort();
 * await server.finished;
 * ```
 */
export function serveWeb(
  root: URL,
  options: ServeWebOptions = {},
): Deno.HttpServer<Deno.NetAddr> {
  return Deno.serve({
    hostname: "127.0.0.1",
    port: options.port ?? 0,
    signal: options.signal,
    onListen: options.onListen ?? (() => {}),
  }, async (request) => {
    if (request.method !== "GET" && request.method !== "HEAD") {
      return new Response("Method not allowed", { status: 405 });
    }
    const name = decodeURIComponent(new URL(request.url).pathname.slice(1)) ||
      "index.html";
    const type = TYPES[name.split(".").pop()!];
    if (!type || !/^[\w.-]+$/.test(name) || name.startsWith(".")) {
      return new Response("Not found", { status: 404 });
    }
    try {
      const body = await Deno.readFile(new URL(name, root));
      return new Response(request.method === "HEAD" ? null : body, {
        headers: { "content-type": type, "cache-control": "no-store" },
      });
    } catch (e) {
      if (e instanceof Deno.errors.NotFound) {
        return new Response(
          name === "qcow2.js"
            ? "qcow2.js is not built: run 'deno task web:build'"
            : "Not found",
          { status: 404 },
        );
      }
      throw e;
    }
  });
}

if (import.meta.main) {
  const args = parseArgs(Deno.args, {
    string: ["port"],
    default: { port: "8000" },
  });
  const port = Number(args.port);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    console.error(`Invalid port '${args.port}'`);
    Deno.exit(2);
  }
  serveWeb(new URL("./", import.meta.url), {
    port,
    onListen: ({ port }) =>
      console.error(`qcow2 page: http://127.0.0.1:${port}/ (Ctrl-C stops)`),
  });
}
