/**
 * httpSource against a local server started here on 127.0.0.1
 * (tests/_http_server.ts): conversions over HTTP equal qemu-img's, only the
 * blocks asked for are fetched, reads in flight and merged, the cache, and
 * each failure (404, 503, Range ignored, the file changed midway, no
 * server) as one line with its code.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import {
  convert,
  httpSource,
  type HttpSourceOptions,
  openImage,
  Qcow2Error,
} from "../mod.ts";
import { startServer } from "./_http_server.ts";
import { expected, fixture, hasQemu, hex, run, tempDir } from "./_reference.ts";

const read = (name: string) => Deno.readFile(fixture(name));

async function rawSha256(
  url: string,
  options: HttpSourceOptions = {},
  open: Parameters<typeof openImage>[1] = {},
) {
  const source = await httpSource(url, options);
  const hash: Uint8Array[] = [];
  try {
    await convert(
      await openImage(source, open),
      new WritableStream<Uint8Array>({
        write: (c) => void hash.push(c.slice()),
      }),
    );
  } finally {
    source.close();
  }
  const bytes = await new Blob(hash as Uint8Array<ArrayBuffer>[]).arrayBuffer();
  return { sha256: hex(await crypto.subtle.digest("SHA-256", bytes)), source };
}

Deno.test("http: images convert over HTTP as qemu-img converts them", async () => {
  const names = ["zlib.qcow2", "zstd.qcow2", "sample.qcow2", "v2_64k.qcow2"];
  const files = Object.fromEntries(
    await Promise.all(names.map(async (n) => [n, await read(n)] as const)),
  );
  const server = startServer(files);
  try {
    for (const name of names) {
      const { sha256, source } = await rawSha256(server.url(name));
      assertEquals(sha256, expected[name].sha256, name);
      // Each byte of the file crossed the network at most once.
      assert(source.stats.bytes <= files[name].length, name);
      assertEquals(source.stats.retries, 0);
    }
  } finally {
    await server.close();
  }
});

Deno.test("http: a backing chain resolves against the image's URL", async () => {
  const dir = "layouts/";
  const names = ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"];
  const files: Record<string, Uint8Array> = {};
  for (const n of names) files[`images/${n}`] = await read(dir + n);
  const server = startServer(files);
  const want = JSON.parse(
    await Deno.readTextFile(fixture("layouts/expected.json")),
  )["chain_top.qcow2"].sha256;
  try {
    const top = server.url("images/chain_top.qcow2");
    const opened: string[] = [];
    const { sha256 } = await rawSha256(top, {}, {
      path: top,
      openFile: (url) => {
        opened.push(url);
        return httpSource(url);
      },
    });
    assertEquals(sha256, want);
    assertEquals(opened, [
      server.url("images/chain_mid.qcow2"),
      server.url("images/chain_base.qcow2"),
    ]);
  } finally {
    await server.close();
  }
});

Deno.test({
  name:
    "http: only metadata and allocated clusters are fetched, never freed ones",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      const path = `${dir}/holes.qcow2`;
      await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "64M"]);
      await run("qemu-io", [
        "-c",
        "write -P 7 0 8M",
        "-c",
        "write -P 9 40M 1M",
        path,
      ]);
      // Where guest 1M..7M lives in the file, before it is discarded.
      const map = JSON.parse(
        await run("qemu-img", ["map", "--output=json", path]),
      ) as { start: number; length: number; offset?: number }[];
      const first = map.find((e) => e.start === 0 && e.offset !== undefined)!;
      const freedFrom = first.offset! + (1 << 20);
      const freedTo = first.offset! + (7 << 20);
      await run("qemu-io", ["-c", "discard 1M 6M", path]);
      const bytes = await Deno.readFile(path);
      assert(bytes.length >= freedTo, "the freed clusters stay in the file");
      const server = startServer({ "holes.qcow2": bytes });
      try {
        const { source } = await rawSha256(server.url("holes.qcow2"), {
          blockSize: 64 * 1024,
          readAheadBytes: 0,
        });
        for (const r of server.ranges) {
          assert(
            r.to < freedFrom || r.from >= freedTo,
            `fetched ${r.from}-${r.to}, within the freed ${freedFrom}-${freedTo}`,
          );
        }
        assert(source.stats.bytes < bytes.length - (6 << 20));
        // With read-ahead (opt-in), at most its window more.
        server.ranges.length = 0;
        const ahead = await rawSha256(server.url("holes.qcow2"), {
          readAheadBytes: 4 << 20,
        });
        assert(ahead.source.stats.bytes <= bytes.length);
      } finally {
        await server.close();
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("http: several requests in flight, adjacent ones merged", async () => {
  const file = new Uint8Array(1 << 20).map((_, i) => i * 7);
  const server = startServer({ f: file }, {});
  try {
    // Reads of scattered blocks in flight together.
    server.mode.delayMs = 30;
    const source = await httpSource(server.url("f"), {
      blockSize: 4096,
      readAheadBytes: 0,
      concurrency: 3,
    });
    const offsets = [100_000, 300_000, 500_000, 700_000, 900_000];
    const bufs = offsets.map(() => new Uint8Array(100));
    await Promise.all(offsets.map((o, i) => source.readAt(o, bufs[i])));
    offsets.forEach((o, i) => assertEquals(bufs[i], file.subarray(o, o + 100)));
    assertEquals(server.maxInFlight, 3);
    source.close();

    // Queued reads of adjacent blocks go in one request.
    server.ranges.length = 0;
    const one = await httpSource(server.url("f"), {
      blockSize: 4096,
      readAheadBytes: 0,
      concurrency: 1,
    });
    server.ranges.length = 0;
    const a = new Uint8Array(4096), b = new Uint8Array(4096);
    const c = new Uint8Array(4096);
    await Promise.all([
      one.readAt(40960, a), // takes the one slot
      one.readAt(81920, b), // queued
      one.readAt(81920 + 4096, c), // queued, adjacent: merged with b
    ]);
    assertEquals(server.ranges.map((r) => [r.from, r.to]), [
      [40960, 45055],
      [81920, 90111],
    ]);
    assertEquals(c, file.subarray(86016, 90112));
    one.close();
  } finally {
    await server.close();
  }
});

Deno.test("http: the cache is bounded and serves repeated reads", async () => {
  const file = new Uint8Array(1 << 20).map((_, i) => i * 13);
  const server = startServer({ f: file });
  try {
    const source = await httpSource(server.url("f"), {
      blockSize: 4096,
      cacheBytes: 4 * 4096,
      readAheadBytes: 0,
    });
    const buf = new Uint8Array(10);
    const before = source.stats.requests;
    await source.readAt(200_000, buf);
    await source.readAt(200_010, buf);
    assertEquals(source.stats.requests, before + 1);
    for (let i = 0; i < 8; i++) await source.readAt(400_000 + i * 8192, buf);
    await source.readAt(200_000, buf); // evicted: fetched again
    assertEquals(source.stats.requests, before + 10);
    assertEquals(buf, file.subarray(200_000, 200_010));
    source.close();
  } finally {
    await server.close();
  }
});

Deno.test("http: sequential reads are fetched ahead in growing requests", async () => {
  const file = new Uint8Array(8 << 20).map((_, i) => i * 3);
  const server = startServer({ f: file });
  try {
    const source = await httpSource(server.url("f"), {
      blockSize: 65536,
      readAheadBytes: 4 << 20,
    });
    const buf = new Uint8Array(65536);
    for (let at = 0; at < file.length; at += buf.length) {
      await source.readAt(at, buf);
      assertEquals(buf[1], file[at + 1]);
    }
    // 128 reads of 64 KiB, in far fewer requests.
    assert(source.stats.requests < 20, `${source.stats.requests} requests`);
    assertEquals(source.stats.bytes, file.length);
    source.close();
  } finally {
    await server.close();
  }
});

/** Asserts `fn` rejects with a Qcow2Error of `code` in one line naming the URL. */
async function assertFails(
  fn: () => Promise<unknown>,
  code: string,
  url: string,
  includes: string,
) {
  const e = await assertRejects(fn, Qcow2Error);
  assertEquals(e.code, code, e.message);
  assert(e.message.includes(url), e.message);
  assert(e.message.includes(includes), e.message);
  assert(!e.message.includes("\n"), e.message);
}

Deno.test("http: errors are one line with a code, the status and the URL", async () => {
  const file = await read("zlib.qcow2");
  const server = startServer({ "zlib.qcow2": file });
  const url = server.url("zlib.qcow2");
  const fast = { retryDelayMs: 1 };
  try {
    await assertFails(
      () => httpSource(server.url("missing.qcow2"), fast),
      "HTTP_ERROR",
      server.url("missing.qcow2"),
      "404 Not Found",
    );
    assertEquals(server.requests, 1, "a 404 is not retried");

    // 503 twice, then fine: retried.
    server.mode.failCount = 2;
    const { sha256, source } = await rawSha256(url, fast);
    assertEquals(sha256, expected["zlib.qcow2"].sha256);
    assertEquals(source.stats.retries, 2);

    // 503 every time: given up after 3 retries.
    server.requests = 0;
    server.mode.failCount = Infinity;
    await assertFails(() => httpSource(url, fast), "HTTP_ERROR", url, "503");
    assertEquals(server.requests, 4);
    server.mode.failCount = 0;

    // Range ignored.
    server.mode.ignoreRange = true;
    await assertFails(() => httpSource(url), "HTTP_NO_RANGE", url, "200");
    server.mode.ignoreRange = false;

    // The file replaced midway: another length.
    server.requests = 0;
    server.mode.changeAfter = 2;
    server.mode.changedTo = file.subarray(0, file.length - 512);
    await assertFails(
      () => rawSha256(url, { blockSize: 4096, readAheadBytes: 0 }),
      "HTTP_CHANGED",
      url,
      "changed",
    );
    // The same length, another ETag: If-Match makes the server refuse.
    server.requests = 0;
    server.mode.changedTo = file.slice().fill(1, 100_000, 100_100);
    await assertFails(
      () => rawSha256(url, { blockSize: 4096, readAheadBytes: 0 }),
      "HTTP_CHANGED",
      url,
      "changed",
    );
  } finally {
    await server.close();
  }
  // No server at all.
  await assertFails(
    () => httpSource(url, fast),
    "HTTP_ERROR",
    url,
    "the request failed",
  );
});

Deno.test("http: an added delay per request is hidden by requests in flight", async () => {
  const file = await read("zlib.qcow2");
  const server = startServer({ "zlib.qcow2": file }, { delayMs: 20 });
  try {
    const { sha256, source } = await rawSha256(server.url("zlib.qcow2"));
    assertEquals(sha256, expected["zlib.qcow2"].sha256);
    assert(source.stats.requests <= 6, `${source.stats.requests} requests`);
  } finally {
    await server.close();
  }
});

Deno.test("http: not an http(s) URL is a TypeError", async () => {
  await assertRejects(() => httpSource("file:///etc/passwd"), TypeError);
  await assertRejects(() => httpSource("not a url"), TypeError);
});

Deno.test("http: openImage and convert take a URL as they take a path", async () => {
  const files: Record<string, Uint8Array> = {};
  for (const n of ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"]) {
    files[`vm/${n}`] = await read(`layouts/${n}`);
  }
  const server = startServer(files);
  const want = JSON.parse(
    await Deno.readTextFile(fixture("layouts/expected.json")),
  )["chain_top.qcow2"];
  try {
    const url = server.url("vm/chain_top.qcow2");
    const image = await openImage(url);
    assertEquals(image.size, want.virtualSize);
    image.close();
    const chunks: Uint8Array[] = [];
    await convert(
      url,
      new WritableStream<Uint8Array>({
        write: (c) => void chunks.push(c.slice()),
      }),
    );
    const bytes = await new Blob(chunks as Uint8Array<ArrayBuffer>[])
      .arrayBuffer();
    assertEquals(
      hex(await crypto.subtle.digest("SHA-256", bytes)),
      want.sha256,
    );
    assert(server.ranges.some((r) => r.name === "vm/chain_base.qcow2"));
  } finally {
    await server.close();
  }
});
