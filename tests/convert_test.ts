import { assert, assertEquals, assertRejects } from "@std/assert";
import {
  type ByteSource,
  bytesSource,
  convert,
  type ConvertProgress,
  openImage,
  type RawSink,
} from "../mod.ts";
import { prng, type SynthCluster, synthImage } from "./_synth.ts";

const CS = 65536;

/** A `Deno.FsFile`-shaped writer in memory that records every call. */
class MemoryFile {
  bytes = new Uint8Array(0);
  pos = 0;
  writes: [number, number][] = [];
  failAfter = Infinity;
  write(p: Uint8Array): Promise<number> {
    if (this.writes.length >= this.failAfter) {
      return Promise.reject(new Error("disk full"));
    }
    this.writes.push([this.pos, p.length]);
    if (this.pos + p.length > this.bytes.length) {
      this.resize(this.pos + p.length);
    }
    this.bytes.set(p, this.pos);
    this.pos += p.length;
    return Promise.resolve(p.length);
  }
  seek(offset: number, whence: number): Promise<number> {
    assert(whence === 0 || whence === 2, `whence ${whence}`);
    this.pos = whence === 0 ? offset : this.bytes.length + offset;
    return Promise.resolve(this.pos);
  }
  truncate(len = 0): Promise<void> {
    this.resize(len);
    return Promise.resolve();
  }
  resize(len: number) {
    const next = new Uint8Array(len);
    next.set(this.bytes.subarray(0, len));
    this.bytes = next;
  }
}

const data = prng(CS, 5);
// A cluster that is half zeros: its zero 4 KiB blocks are left as holes.
const half = prng(CS, 6).fill(0, 8192, 8192 + 32768);

function image() {
  return synthImage(
    { size: 10n * BigInt(CS) + 512n },
    new Map<number, SynthCluster>([
      [0, { kind: "data", bytes: data }],
      [1, { kind: "data", bytes: half }],
      [2, { kind: "zero", allocated: true }],
      [4, { kind: "data", bytes: new Uint8Array(CS) }],
      [10, { kind: "data", bytes: data }],
    ]),
  );
}

function expected(): Uint8Array {
  const out = new Uint8Array(10 * CS + 512);
  out.set(data, 0);
  out.set(half, CS);
  out.set(data.subarray(0, 512), 10 * CS);
  return out;
}

Deno.test("convert writes data, seeks over holes and sets the length", async () => {
  const dst = new MemoryFile();
  dst.bytes = new Uint8Array(100).fill(9); // old content is discarded
  const summary = await convert(image(), dst);
  assertEquals(dst.bytes, expected());
  assertEquals(summary.virtualSize, 10 * CS + 512);
  assertEquals(summary.bytesWritten, 2 * CS - 32768 + 512);
  assertEquals(
    summary.bytesSkipped,
    summary.virtualSize - summary.bytesWritten,
  );
  // Nothing was written inside the zero block of cluster 1, cluster 2, 3 or 4.
  for (const [pos, len] of dst.writes) {
    const end = pos + len;
    assert(end <= CS + 8192 || pos >= CS + 8192 + 32768, `write ${pos}+${len}`);
    assert(end <= 2 * CS || pos >= 10 * CS, `write ${pos}+${len}`);
  }
});

Deno.test("convert -S 0 writes every byte", async () => {
  const dst = new MemoryFile();
  const summary = await convert(image(), dst, { sparseSize: 0 });
  assertEquals(dst.bytes, expected());
  assertEquals(summary.bytesWritten, summary.virtualSize);
  const covered = dst.writes.reduce((n, [, len]) => n + len, 0);
  assertEquals(covered, summary.virtualSize);
});

Deno.test("convert with a larger sparse size keeps more data", async () => {
  const dst = new MemoryFile();
  const summary = await convert(image(), dst, { sparseSize: 65536 });
  assertEquals(dst.bytes, expected());
  assertEquals(summary.bytesWritten, 2 * CS + 512);
});

Deno.test("convert to a stream writes every byte", async () => {
  const chunks: Uint8Array[] = [];
  const sink = new WritableStream<Uint8Array>({
    write(c) {
      chunks.push(c.slice());
    },
  });
  await convert(image(), sink);
  const out = new Uint8Array(chunks.reduce((n, c) => n + c.length, 0));
  let p = 0;
  for (const c of chunks) {
    out.set(c, p);
    p += c.length;
  }
  assertEquals(out, expected());
});

Deno.test("convert reports progress up to the total", async () => {
  const seen: ConvertProgress[] = [];
  await convert(image(), new MemoryFile(), {
    onProgress: (p) => seen.push(p),
    chunkSize: 65536,
  });
  assert(seen.length >= 2);
  for (let i = 1; i < seen.length; i++) {
    assert(seen[i].done >= seen[i - 1].done);
  }
  assertEquals(seen.at(-1), { done: 10 * CS + 512, total: 10 * CS + 512 });
});

Deno.test("convert stops when aborted", async () => {
  const controller = new AbortController();
  const reason = new Error("stop");
  const e = await assertRejects(() =>
    convert(image(), new MemoryFile(), {
      chunkSize: 65536,
      signal: controller.signal,
      onProgress: () => controller.abort(reason),
    })
  );
  assertEquals(e, reason);
  controller.abort();
  await assertRejects(() =>
    convert(image(), new MemoryFile(), { signal: controller.signal })
  );
});

Deno.test("convert passes on a write error", async () => {
  const dst = new MemoryFile();
  dst.failAfter = 1;
  await assertRejects(
    () => convert(image(), dst, { chunkSize: 65536 }),
    Error,
    "disk full",
  );
});

Deno.test("convert refuses a bad sparse size", async () => {
  for (const sparseSize of [100, -512, 32 * 1024 * 1024]) {
    await assertRejects(
      () => convert(image(), new MemoryFile(), { sparseSize }),
      RangeError,
      "Invalid sparse size",
    );
  }
});

Deno.test("convert accepts an open image", async () => {
  const dst = new MemoryFile();
  await convert(await openImage(image()), dst);
  assertEquals(dst.bytes, expected());
});

/** A MemoryFile that also records which buffers its writes came from. */
class BufferRecorder extends MemoryFile {
  buffers = new Set<ArrayBufferLike>();
  override write(p: Uint8Array): Promise<number> {
    this.buffers.add(p.buffer);
    return super.write(p);
  }
}

/** 32 clusters of data: 32 chunks of one cluster each. */
function dataImage(): Uint8Array {
  const clusters = new Map<number, SynthCluster>();
  for (let i = 0; i < 32; i++) {
    clusters.set(i, { kind: "data", bytes: prng(CS, 100 + i) });
  }
  return synthImage({ size: 32n * BigInt(CS) }, clusters);
}

Deno.test("convert reuses one chunk buffer when reads and writes settle at once", async () => {
  const dst = new BufferRecorder();
  await convert(dataImage(), dst, { chunkSize: CS });
  assertEquals(dst.writes.length, 32);
  assertEquals(dst.buffers.size, 1);
});

Deno.test("convert keeps several chunks in flight when reads take time", async () => {
  const bytes = dataImage();
  const memory = bytesSource(bytes);
  const slow: ByteSource = {
    size: memory.size,
    readAt: (position, buffer) =>
      new Promise((resolve, reject) =>
        setTimeout(() => memory.readAt(position, buffer).then(resolve, reject))
      ),
  };
  const dst = new BufferRecorder();
  await convert(slow, dst, { chunkSize: CS, parallel: 4 });
  const direct = new MemoryFile();
  await convert(bytes, direct);
  assertEquals(dst.bytes, direct.bytes);
  assertEquals(dst.buffers.size, 4);
});

Deno.test("convert gives timers a turn during a long synchronous conversion", async () => {
  // 512 MiB of unallocated guest bytes written as zeros (-S 0), to a
  // writer that settles at once: only convert's own yields let a timer run.
  const bytes = synthImage({ size: 512n << 20n }, new Map());
  const discard = {
    write: (p: Uint8Array) => Promise.resolve(p.length),
    seek: (offset: number) => Promise.resolve(offset),
    truncate: () => Promise.resolve(),
  };
  let fired = 0;
  const timer = setInterval(() => fired++, 0);
  try {
    const summary = await convert(bytes, discard, { sparseSize: 0 });
    assertEquals(summary.bytesWritten, 512 << 20);
  } finally {
    clearInterval(timer);
  }
  assert(fired >= 2, `the timer ran ${fired} times`);
});

Deno.test("convert writes to a RawSink of one's own as it is", async () => {
  const writes: [number, number][] = [];
  const out = new Uint8Array(10 * CS + 512);
  let finished = -1;
  const sink: RawSink = {
    writeAt(position, bytes) {
      writes.push([position, bytes.length]);
      out.set(bytes, position);
      return Promise.resolve();
    },
    finish(size) {
      finished = size;
      return Promise.resolve();
    },
  };
  const summary = await convert(image(), sink);
  assertEquals(out, expected());
  assertEquals(finished, 10 * CS + 512);
  assertEquals(
    writes.reduce((n, [, length]) => n + length, 0),
    summary.bytesWritten,
  );
  // Offsets only grow, and the zero clusters were never written.
  for (let i = 1; i < writes.length; i++) {
    assert(writes[i][0] >= writes[i - 1][0] + writes[i - 1][1]);
  }
  assert(writes.every(([p]) => p < 2 * CS || p >= 10 * CS));
});

Deno.test("convert: chunk buffers from allocate, reused; a short one refused", async () => {
  const bytes = await Deno.readFile(
    new URL("./fixtures/zlib.qcow2", import.meta.url),
  );
  const plain = new MemoryFile();
  await convert(bytes, plain);
  const made: Uint8Array[] = [];
  const file = new MemoryFile();
  await convert(bytes, file, {
    chunkSize: CS,
    parallel: 2,
    allocate: (n) => {
      const b = new Uint8Array(n);
      made.push(b);
      return b;
    },
  });
  assertEquals(file.bytes, plain.bytes);
  // 2 MiB in 64 KiB chunks through at most `parallel` buffers.
  assert(made.length >= 1 && made.length <= 2, `${made.length} buffers`);
  assert(made.every((b) => b.length === CS));
  await assertRejects(
    () =>
      convert(bytes, new MemoryFile(), {
        chunkSize: CS,
        allocate: (n) => new Uint8Array(n - 1),
      }),
    RangeError,
    "allocate",
  );
});
