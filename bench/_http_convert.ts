/**
 * One conversion of a remote image to a raw file through the library, for
 * bench/http.ts: `deno run --allow-net --allow-write bench/_http_convert.ts
 * URL OUT [concurrency] [parallel] [readAheadBytes]`. Prints the
 * httpSource's stats as JSON.
 *
 * @module
 */

import { convert, httpSource, openImage } from "../mod.ts";

const [url, out, concurrency, parallel, readAhead] = Deno.args;
const source = await httpSource(url, {
  concurrency: concurrency ? Number(concurrency) : undefined,
  readAheadBytes: readAhead ? Number(readAhead) : undefined,
});
const file = await Deno.open(out, {
  write: true,
  create: true,
  truncate: true,
});
try {
  const image = await openImage(source, { l2CacheBytes: 1 << 20 });
  await convert(image, file, {
    parallel: parallel ? Number(parallel) : undefined,
  });
  image.close();
} finally {
  file.close();
  source.close();
}
console.log(JSON.stringify({ ...source.stats, memory: Deno.memoryUsage() }));
