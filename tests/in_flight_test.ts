/**
 * Every error path with many reads in flight: the error reaches the
 * caller's `catch`, no promise rejection goes unhandled meanwhile (Node.js
 * and Bun would report it, and may exit, before the caller's `catch` runs),
 * and every read has settled by the time the caller sees the error.
 *
 * The images (made by qemu-img at test time, see `_spread.ts`) have
 * compressed clusters far apart in the file, or many L2 tables, and every
 * read of the source takes a timer turn, so reads, decompressions and writes
 * overlap as they do on a slow disk.
 */
import { assert, assertEquals, assertInstanceOf } from "@std/assert";
import {
  type ByteSource,
  type Codecs,
  convert,
  type ConvertOptions,
  convertToQcow2,
  type ImageTarget,
  memoryTarget,
  nodeCodecs,
  openImage,
  Qcow2Error,
  type RawSink,
  webCodecs,
  workerCodecs,
} from "@qcow2/qcow2";
import { hasQemu, tempDir } from "./_reference.ts";
import { SPREAD_COMPRESSED, spreadImage, tablesImage } from "./_spread.ts";

const dir = hasQemu ? await tempDir() : "";
const images = hasQemu
  ? {
    zlib: await Deno.readFile(await spreadImage(dir, "zlib")),
    zstd: await Deno.readFile(await spreadImage(dir, "zstd")),
    tables: await Deno.readFile(await tablesImage(dir)),
  }
  : undefined;
if (hasQemu) await Deno.remove(dir, { recursive: true });

/** A source over `bytes` whose reads each take a timer turn. */
class SlowSource implements ByteSource {
  readonly size: number;
  inFlight = 0;
  mostInFlight = 0;
  reads = 0;
  constructor(
    readonly bytes: Uint8Array,
    readonly fail?: (position: number, length: number) => Error | undefined,
    readonly onRead?: (count: number) => void,
  ) {
    this.size = bytes.length;
  }
  async readAt(position: number, buffer: Uint8Array): Promise<number> {
    this.inFlight++;
    this.mostInFlight = Math.max(this.mostInFlight, this.inFlight);
    this.onRead?.(++this.reads);
    try {
      await new Promise((resolve) => setTimeout(resolve, 1));
      const error = this.fail?.(position, buffer.length);
      if (error) throw error;
      const got = this.bytes.subarray(position, position + buffer.length);
      buffer.set(got);
      return got.length;
    } finally {
      this.inFlight--;
    }
  }
}

/** A sink that keeps nothing. */
const nowhere = (): RawSink => ({
  writeAt: () => Promise.resolve(),
  finish: () => Promise.resolve(),
});

/**
 * Runs `fn`, which must reject; fails if any rejection went unhandled
 * while it ran (or just after), and returns what it rejected with.
 */
async function failsCleanly(fn: () => Promise<unknown>): Promise<unknown> {
  const unhandled: unknown[] = [];
  const listener = (e: PromiseRejectionEvent) => {
    e.preventDefault();
    unhandled.push(e.reason);
  };
  globalThis.addEventListener("unhandledrejection", listener);
  let error: unknown;
  try {
    await fn();
  } catch (e) {
    error = e;
  }
  // Late rejections surface within a few turns.
  await new Promise((resolve) => setTimeout(resolve, 20));
  globalThis.removeEventListener("unhandledrejection", listener);
  assertEquals(unhandled, [], "a promise rejection went unhandled");
  assert(error !== undefined, "it should have failed");
  return error;
}

/**
 * Converts `source` through `options`, expecting a failure. With the
 * default chunk size (1 MiB) one read covers a whole spread image: its
 * compressed clusters are read as four groups, each decompressed while the
 * next is read.
 */
async function convertFails(
  source: SlowSource,
  options: ConvertOptions & { codecs?: Codecs },
  sink: RawSink | WritableStream<Uint8Array> = nowhere(),
): Promise<unknown> {
  const error = await failsCleanly(() =>
    convert(source, sink, { parallel: 8, ...options })
  );
  assertEquals(source.inFlight, 0, "every read settles before the error");
  assert(source.mostInFlight >= 4, `only ${source.mostInFlight} in flight`);
  return error;
}

/** `bytes` with the start of every compressed cluster overwritten. */
async function corrupt(bytes: Uint8Array): Promise<Uint8Array> {
  const copy = bytes.slice();
  const image = await openImage(bytes);
  const hosts: number[] = [];
  for await (const e of image.extents()) {
    if (e.kind === "compressed") hosts.push(e.hostOffset!);
  }
  assertEquals(hosts.length, SPREAD_COMPRESSED.length);
  // Far apart: each is read by a read of its own.
  hosts.forEach((h, i) => assert(i === 0 || h - hosts[i - 1] > 64 * 1024));
  for (const h of hosts) copy.fill(0xff, h, h + 16);
  return copy;
}

const needs = { ignore: !hasQemu, sanitizeResources: false };

for (const type of ["zlib", "zstd"] as const) {
  Deno.test({
    name: `in flight: no ${type} decompressor`,
    ...needs,
    fn: async () => {
      const error = await convertFails(new SlowSource(images![type]), {
        codecs: {},
      });
      assertInstanceOf(error, Qcow2Error);
      assertEquals((error as Qcow2Error).code, "UNSUPPORTED_COMPRESSION");
    },
  });

  const codecSets: [string, () => Codecs & { close?(): void }][] = [
    ["node:zlib", () => nodeCodecs],
    ["workers", () => workerCodecs({ workers: 2 })],
  ];
  if (type === "zlib") codecSets.push(["portable", () => webCodecs]);
  for (const [name, make] of codecSets) {
    Deno.test({
      name: `in flight: corrupt ${type} data, ${name} codecs`,
      ...needs,
      fn: async () => {
        const codecs = make();
        try {
          const source = new SlowSource(await corrupt(images![type]));
          const error = await convertFails(source, { codecs });
          assertInstanceOf(error, Qcow2Error);
          assertEquals((error as Qcow2Error).code, "BAD_COMPRESSED_DATA");
        } finally {
          codecs.close?.();
        }
      },
    });
  }
}

Deno.test({
  name: "in flight: a failing read of compressed clusters",
  ...needs,
  fn: async () => {
    const bytes = images!.zstd;
    // The metadata reads well; the data area fails.
    const source = new SlowSource(
      bytes,
      (position) => position >= 0x50000 ? new Error("injected") : undefined,
    );
    const error = await convertFails(source, {});
    assertEquals((error as Error).message, "injected");
  },
});

Deno.test({
  name: "in flight: failing data reads while more L2 tables load",
  ...needs,
  fn: async () => {
    const bytes = images!.tables;
    const image = await openImage(bytes);
    const data: number[] = [];
    for await (const e of image.extents()) {
      if (e.kind === "data") data.push(e.hostOffset!);
    }
    const inData = (p: number) =>
      data.some((h) => p >= h && p < h + 512)
        ? new Error("injected")
        : undefined;
    // One read of the whole disk: data reads start as each L2 table is
    // walked, and fail while the next table is loading.
    const source = new SlowSource(bytes, inData);
    const opened = await openImage(source);
    const error = await failsCleanly(() =>
      opened.read(0, new Uint8Array(opened.size))
    );
    assertEquals((error as Error).message, "injected");
    assertEquals(source.inFlight, 0);
    // A data read and the next table's read, at least.
    assert(source.mostInFlight >= 2, `only ${source.mostInFlight} in flight`);
    // And through convert, in chunks.
    await convertFails(new SlowSource(bytes, inData), {});
  },
});

Deno.test({
  name: "in flight: a failing sink",
  ...needs,
  fn: async () => {
    let writes = 0;
    const sink: RawSink = {
      writeAt: async () => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        if (++writes === 2) throw new Error("disk full");
      },
      finish: () => Promise.resolve(),
    };
    const error = await convertFails(
      new SlowSource(images!.zstd),
      { codecs: nodeCodecs, chunkSize: 65536 },
      sink,
    );
    assertEquals((error as Error).message, "disk full");
  },
});

Deno.test({
  name: "in flight: an erroring stream",
  ...needs,
  fn: async () => {
    let chunks = 0;
    const stream = new WritableStream<Uint8Array>({
      write() {
        if (++chunks === 3) throw new Error("stream broke");
      },
    });
    const error = await convertFails(
      new SlowSource(images!.zlib),
      { chunkSize: 65536 },
      stream,
    );
    assertEquals((error as Error).message, "stream broke");
  },
});

Deno.test({
  name: "in flight: aborted while reads are in flight",
  ...needs,
  fn: async () => {
    const controller = new AbortController();
    const reason = new Error("interrupted");
    const source = new SlowSource(
      images!.tables,
      undefined,
      (count) => count === 40 && controller.abort(reason),
    );
    const error = await convertFails(source, {
      signal: controller.signal,
      chunkSize: 4096,
    });
    assertEquals(error, reason);
  },
});

// The writer's pipeline (convert -O qcow2 -c): compressions run ahead of
// the writer; each error path with many in flight.

/**
 * A compressor that counts what is in flight, and may fail on one cluster
 * or call `onCall` with the count of calls.
 */
function countingCompressor(failAt?: number, onCall?: (n: number) => void) {
  const state = { inFlight: 0, most: 0, calls: 0 };
  const compress = async (input: Uint8Array, maxOutput: number) => {
    const n = ++state.calls;
    onCall?.(n);
    state.inFlight++;
    state.most = Math.max(state.most, state.inFlight);
    try {
      await new Promise((resolve) => setTimeout(resolve, 2));
      if (n === failAt) throw new Error("compressor broke");
      return await webCodecs.compress!.zlib!(input, maxOutput);
    } finally {
      state.inFlight--;
    }
  };
  return { state, codecs: { ...webCodecs, compress: { zlib: compress } } };
}

/** Converts the tables image (256 KiB of data) to compressed qcow2. */
async function writerFails(
  options: {
    failAt?: number;
    target?: ImageTarget;
    signal?: AbortSignal;
    onCall?: (n: number) => void;
  },
  source = new SlowSource(images!.tables),
): Promise<unknown> {
  const { state, codecs } = countingCompressor(options.failAt, options.onCall);
  let atError = -1;
  const error = await failsCleanly(() =>
    convertToQcow2(source, options.target ?? memoryTarget(), {
      compress: true,
      clusterSize: 4096, // 64 clusters to compress
      codecs,
      signal: options.signal,
    }).catch((e) => {
      atError = state.inFlight;
      throw e;
    })
  );
  assertEquals(atError, 0, "every compression settles before the error");
  assert(state.most >= 8, `only ${state.most} compressions in flight`);
  assertEquals(source.inFlight, 0);
  return error;
}

Deno.test({
  name: "in flight (writer): a compressor that fails",
  ...needs,
  fn: async () => {
    const error = await writerFails({ failAt: 20 });
    assertEquals((error as Error).message, "compressor broke");
  },
});

Deno.test({
  name: "in flight (writer): a failing target",
  ...needs,
  fn: async () => {
    let writes = 0;
    const target: ImageTarget = {
      writeAt: async () => {
        await new Promise((resolve) => setTimeout(resolve, 1));
        if (++writes === 5) throw new Error("disk full");
      },
      finish: () => Promise.resolve(),
    };
    const error = await writerFails({ target });
    assertEquals((error as Error).message, "disk full");
  },
});

Deno.test({
  name: "in flight (writer): aborted while compressions run",
  ...needs,
  fn: async () => {
    const controller = new AbortController();
    const reason = new Error("interrupted");
    const error = await writerFails({
      signal: controller.signal,
      onCall: (n) => n === 30 && controller.abort(reason),
    });
    assertEquals(error, reason);
  },
});

Deno.test({
  name: "in flight (writer): corrupt compressed data in the source",
  ...needs,
  fn: async () => {
    const error = await failsCleanly(() =>
      convertToQcow2(
        new SlowSource(images!.zlib),
        memoryTarget(),
        { compress: true },
      ).then(async () =>
        // The source is fine: now a corrupt one.
        convertToQcow2(
          new SlowSource(await corrupt(images!.zlib)),
          memoryTarget(),
          { compress: true },
        )
      )
    );
    assertEquals((error as Qcow2Error).code, "BAD_COMPRESSED_DATA");
  },
});
