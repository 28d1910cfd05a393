/**
 * A reverse proxy for bench/http.ts that adds a fixed delay to every
 * request: `deno run --allow-net=127.0.0.1 bench/_delay_proxy.ts PORT
 * UPSTREAM_ORIGIN DELAY_MS`. Headers and the body pass through (the body
 * streamed); it prints "ready" once listening.
 *
 * @module
 */

const [port, upstream, delay] = Deno.args;
const ms = Number(delay);
Deno.serve({
  hostname: "127.0.0.1",
  port: Number(port),
  onListen() {
    console.log("ready");
  },
}, async (request) => {
  await new Promise((r) => setTimeout(r, ms));
  const url = new URL(request.url);
  const headers = new Headers(request.headers);
  headers.delete("host");
  const answer = await fetch(upstream + url.pathname + url.search, {
    method: request.method,
    headers,
  });
  return new Response(answer.body, {
    status: answer.status,
    headers: answer.headers,
  });
});
