/**
 * The worker pool decompresses exactly as the in-thread codecs do: same
 * bytes, same errors, and it never keeps a process alive.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import { createHash } from "node:crypto";
import {
  type Codecs,
  convert,
  nodeCodecs,
  Qcow2Error,
  workerCodecs,
} from "@qcow2/qcow2";
import { deflateRawSync } from "node:zlib";

const fixture = (name: string) =>
  new URL(`./fixtures/${name}`, import.meta.url).pathname;
const expected = JSON.parse(
  await Deno.readTextFile(fixture("expected.json")),
) as Record<string, { sha256: string }>;

async function digestWith(name: string, codecs: Codecs): Promise<string> {
  const hash = createHash("sha256");
  const sink = new WritableStream<Uint8Array>({
    write: (c) => void hash.update(c),
  });
  await convert(fixture(name), sink, { codecs });
  return hash.digest("hex");
}

for (
  const name of [
    "zlib.qcow2",
    "zstd.qcow2",
    "zlib_4k.qcow2",
    "c512.qcow2",
    "c2m.qcow2",
    "odd_size_zlib.qcow2",
    "e2image.qcow2",
  ]
) {
  Deno.test(`worker codecs convert ${name} to the expected bytes`, async () => {
    const codecs = workerCodecs({ workers: 2 });
    try {
      assertEquals(await digestWith(name, codecs), expected[name].sha256);
    } finally {
      codecs.close();
    }
  });
}

Deno.test("worker codecs decompress into the given buffer", async () => {
  const data = new Uint8Array(65536).map((_, i) => (i * 7) % 251);
  const codecs = workerCodecs({ workers: 1 });
  try {
    const into = new Uint8Array(65536);
    const out = await codecs.zlib!(deflateRawSync(data), 65536, into);
    assert(out === into);
    assertEquals(into, data);
    // Without `into`, a copy of its own.
    assertEquals(await codecs.zlib!(deflateRawSync(data), 65536), data);
  } finally {
    codecs.close();
  }
});

Deno.test("worker codecs report corrupt and wrong-sized data like node:zlib", async () => {
  const codecs = workerCodecs({ workers: 1 });
  try {
    // Garbage: an error, as the in-thread codec gives.
    await assertRejects(() =>
      codecs.zlib!(new Uint8Array([0xff, 0xff, 0xff, 1, 2, 3]), 65536)
    );
    await assertRejects(() =>
      nodeCodecs.zlib!(new Uint8Array([0xff, 0xff, 0xff, 1, 2, 3]), 65536)
    );
    // Short output: resolved with its true length, for the caller to refuse.
    const short = await codecs.zlib!(
      deflateRawSync(new Uint8Array(100)),
      65536,
    );
    assertEquals(short.length, 100);
    // Longer than a cluster: never more than maxOutput + 1 bytes reported.
    const long = await codecs.zlib!(
      deflateRawSync(new Uint8Array(70000)),
      65536,
    );
    assert(long.length !== 65536);
    // A zstd frame cut short is a Qcow2Error from the framing check.
    await assertRejects(
      () => codecs.zstd!(new Uint8Array([0x28, 0xb5, 0x2f, 0xfd]), 65536),
      Qcow2Error,
    );
  } finally {
    codecs.close();
  }
});

Deno.test("worker codecs: many clusters at once, mixed sizes, in order", async () => {
  const codecs = workerCodecs({ workers: 2 });
  try {
    const sizes = [512, 4096, 65536, 2 * 1024 * 1024];
    const jobs: Promise<void>[] = [];
    for (let i = 0; i < 200; i++) {
      const cs = sizes[i % sizes.length];
      const data = new Uint8Array(cs).fill(i & 0xff);
      data[cs - 1] = 7;
      jobs.push(
        codecs.zlib!(deflateRawSync(data), cs).then((out) =>
          assertEquals(out, data)
        ),
      );
    }
    await Promise.all(jobs);
  } finally {
    codecs.close();
  }
});

Deno.test("close() rejects what is pending; the pool restarts on demand", async () => {
  const codecs = workerCodecs({ workers: 1 });
  const data = deflateRawSync(new Uint8Array(65536));
  const pending = codecs.zlib!(data, 65536);
  codecs.close();
  await assertRejects(() => pending, Error, "closed");
  assertEquals((await codecs.zlib!(data, 65536)).length, 65536);
  codecs.close();
});

Deno.test("an idle pool stops by itself and does not keep a process alive", async () => {
  const script = `
    import { workerCodecs } from ${
    JSON.stringify(
      new URL("../native/worker_codecs.ts", import.meta.url).href,
    )
  };
    import { deflateRawSync } from "node:zlib";
    const codecs = workerCodecs({ idleMs: 50 });
    const out = await codecs.zlib(deflateRawSync(new Uint8Array(4096)), 4096);
    console.log(out.length);
    // no close(): the process must still end
  `;
  const child = new Deno.Command(Deno.execPath(), {
    args: ["eval", script],
    stdout: "piped",
    stderr: "piped",
  });
  const began = performance.now();
  const out = await child.output();
  assertEquals(new TextDecoder().decode(out.stderr), "");
  assertEquals(new TextDecoder().decode(out.stdout).trim(), "4096");
  assert(out.success);
  assert(performance.now() - began < 10_000);
});

Deno.test("if a worker fails, pending and later requests run in-thread", async () => {
  const RealWorker = globalThis.Worker;
  // A worker that fails as soon as it starts.
  class FailingWorker extends EventTarget {
    onmessage: ((e: MessageEvent) => void) | null = null;
    onerror: ((e: ErrorEvent) => void) | null = null;
    constructor(_url: string | URL, _options?: WorkerOptions) {
      super();
      setTimeout(() =>
        this.onerror?.(new ErrorEvent("error", { message: "cannot start" }))
      );
    }
    postMessage() {}
    terminate() {}
  }
  globalThis.Worker = FailingWorker as unknown as typeof Worker;
  const codecs = workerCodecs({ workers: 2 });
  try {
    const data = new Uint8Array(65536).map((_, i) => i % 13);
    const outs = await Promise.all(
      [1, 2, 3].map(() => codecs.zlib!(deflateRawSync(data), 65536)),
    );
    for (const out of outs) assertEquals(out, data);
    assertEquals(await codecs.zlib!(deflateRawSync(data), 65536), data);
  } finally {
    codecs.close();
    globalThis.Worker = RealWorker;
  }
});

Deno.test("in-thread codecs decompress into the given buffer too", async () => {
  const data = new Uint8Array(65536).map((_, i) => (i * 3) % 241);
  const into = new Uint8Array(65536);
  const out = await nodeCodecs.zlib!(deflateRawSync(data), 65536, into);
  assert(out === into);
  assertEquals(into, data);
  // After corrupt data, the next cluster still decompresses.
  await assertRejects(() =>
    nodeCodecs.zlib!(new Uint8Array([0xff, 0xff, 0xff, 1, 2, 3]), 65536)
  );
  assertEquals(await nodeCodecs.zlib!(deflateRawSync(data), 65536), data);
  // A short result is its own copy, for the caller to refuse.
  const short = await nodeCodecs.zlib!(
    deflateRawSync(data.subarray(0, 10)),
    65536,
    into,
  );
  assert(short !== into);
  assertEquals(short.length, 10);
});

Deno.test("allocate: the workers write clusters straight into shared buffers", async () => {
  // A fallback that fails: every cluster below must go through a worker.
  const codecs = workerCodecs({
    workers: 2,
    fallback: { zlib: () => Promise.reject(new Error("fallback used")) },
  });
  try {
    const cs = 65536;
    const before = codecs.allocate(4 * cs + 512); // before the workers start
    assert(before.buffer instanceof SharedArrayBuffer);
    const clusters = [0, 1, 2, 3].map((k) =>
      new Uint8Array(cs).map((_, i) => (i * (k + 3)) % 253)
    );
    const run = async (buffer: Uint8Array) => {
      const outs = await Promise.all(clusters.map((data, k) => {
        const into = buffer.subarray(512 + k * cs, 512 + (k + 1) * cs);
        return codecs.zlib!(deflateRawSync(data), cs, into).then((out) => {
          assert(out === into);
          return out;
        });
      }));
      outs.forEach((out, k) => assertEquals(out, clusters[k]));
      assertEquals(buffer.subarray(0, 512), new Uint8Array(512));
    };
    await run(before);
    const after = codecs.allocate(4 * cs + 512); // workers running
    await run(after);
    // A short cluster is not copied into the target; corrupt data rejects.
    after.fill(9);
    const short = await codecs.zlib!(
      deflateRawSync(new Uint8Array(100)),
      cs,
      after.subarray(512, 512 + cs),
    );
    assertEquals(short.length, 100);
    assertEquals(after.subarray(512, 512 + cs), new Uint8Array(cs).fill(9));
    await assertRejects(() =>
      codecs.zlib!(
        new Uint8Array([0xff, 0xff, 0xff, 1]),
        cs,
        after.subarray(0, cs),
      )
    );
    // After close(), the pool restarts and buffers allocated then work too.
    codecs.close();
    await run(codecs.allocate(4 * cs + 512));
    // An old buffer is no longer shared with the workers: copied into.
    await run(before.fill(0));
  } finally {
    codecs.close();
  }
});

Deno.test("convert with allocate: chunks in shared buffers, the expected bytes", async () => {
  const codecs = workerCodecs({ workers: 2 });
  let buffers = 0;
  try {
    for (const name of ["zlib.qcow2", "zstd.qcow2", "c2m.qcow2"]) {
      const hash = createHash("sha256");
      const sink = new WritableStream<Uint8Array>({
        write: (c) => void hash.update(c),
      });
      await convert(fixture(name), sink, {
        codecs,
        chunkSize: 256 * 1024,
        allocate: (n) => {
          buffers++;
          return codecs.allocate(n);
        },
      });
      assertEquals(hash.digest("hex"), expected[name].sha256, name);
    }
    assert(buffers > 0 && buffers <= 3 * 4, `${buffers} buffers`);
  } finally {
    codecs.close();
  }
});
