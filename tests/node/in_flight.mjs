// Every error path of a conversion with many reads in flight, under Node.js
// or Bun: each error must reach the caller's `catch`, and no promise
// rejection may go unhandled meanwhile (Node.js 20 reports it as uncaught
// and exits before the `catch` runs). Prints one line of JSON: each case's
// error name, code and message. Exits 70 on any unhandled rejection.
//
// Usage: node in_flight.mjs BUNDLE SPREAD_ZSTD SPREAD_ZLIB TABLES
//   (the images tests/_spread.ts makes)
import { open, readFile } from "node:fs/promises";
import { pathToFileURL } from "node:url";

process.on("unhandledRejection", (reason) => {
  console.log(JSON.stringify({ unhandled: String(reason?.stack ?? reason) }));
  process.exit(70);
});

const [bundle, zstdPath, zlibPath, tablesPath] = process.argv.slice(2);
const qcow2 = await import(pathToFileURL(bundle).href);

/** A source over bytes whose reads each take a timer turn. */
function slowSource(bytes, { fail, onRead } = {}) {
  let reads = 0;
  return {
    size: bytes.length,
    async readAt(position, buffer) {
      onRead?.(++reads);
      await new Promise((resolve) => setTimeout(resolve, 1));
      const error = fail?.(position);
      if (error) throw error;
      const got = bytes.subarray(position, position + buffer.length);
      buffer.set(got);
      return got.length;
    },
  };
}

const nowhere = { writeAt: async () => {}, finish: async () => {} };

/** `bytes` with the start of every compressed cluster overwritten. */
async function corrupt(bytes) {
  const copy = bytes.slice();
  const image = await qcow2.openImage(bytes);
  for await (const e of image.extents()) {
    if (e.kind === "compressed") {
      copy.fill(0xff, e.hostOffset, e.hostOffset + 16);
    }
  }
  return copy;
}

const zstd = new Uint8Array(await readFile(zstdPath));
const zlib = new Uint8Array(await readFile(zlibPath));
const tables = new Uint8Array(await readFile(tablesPath));

const cases = {
  // The README's snippet on a zstd image, through FileHandles, with no zstd.
  "no zstd decompressor, FileHandle": async () => {
    const input = await open(zstdPath);
    try {
      await qcow2.convert(await qcow2.fileHandleSource(input), nowhere, {
        codecs: {},
      });
    } finally {
      await input.close();
    }
  },
  "no zlib decompressor": () =>
    qcow2.convert(slowSource(zlib), nowhere, { codecs: {} }),
  "corrupt zstd data": async () =>
    qcow2.convert(slowSource(await corrupt(zstd)), nowhere),
  "corrupt zlib data": async () =>
    qcow2.convert(slowSource(await corrupt(zlib)), nowhere),
  "corrupt zlib data, portable codecs": async () =>
    qcow2.convert(slowSource(await corrupt(zlib)), nowhere, {
      codecs: qcow2.webCodecs,
    }),
  "failing data reads": async () => {
    const image = await qcow2.openImage(tables);
    const data = [];
    for await (const e of image.extents()) {
      if (e.kind === "data") data.push(e.hostOffset);
    }
    const fail = (p) =>
      data.some((h) => p >= h && p < h + 512)
        ? new Error("injected")
        : undefined;
    const opened = await qcow2.openImage(slowSource(tables, { fail }));
    await opened.read(0, new Uint8Array(opened.size));
  },
  "failing sink": () => {
    let writes = 0;
    const sink = {
      writeAt: async () => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        if (++writes === 2) throw new Error("disk full");
      },
      finish: async () => {},
    };
    return qcow2.convert(slowSource(zlib), sink, { chunkSize: 65536 });
  },
  "erroring stream": () => {
    let chunks = 0;
    const stream = new WritableStream({
      write() {
        if (++chunks === 3) throw new Error("stream broke");
      },
    });
    return qcow2.convert(slowSource(zlib), stream, { chunkSize: 65536 });
  },
  "abort": () => {
    const controller = new AbortController();
    const source = slowSource(tables, {
      onRead: (n) => n === 40 && controller.abort(new Error("interrupted")),
    });
    return qcow2.convert(source, nowhere, {
      signal: controller.signal,
      chunkSize: 4096,
    });
  },
};

const results = {};
for (const [name, run] of Object.entries(cases)) {
  try {
    await run();
    results[name] = { ok: true };
  } catch (e) {
    results[name] = { name: e?.name, code: e?.code, message: e?.message };
  }
  // Late rejections surface within a few turns.
  await new Promise((resolve) => setTimeout(resolve, 20));
}
console.log(JSON.stringify(results));
