/**
 * Writes left running: the writer with a target that has `allocate` (bytes
 * written where they lie, later, in order) makes the same image as with a
 * plain one, and `workerTarget` writes a real file on a worker thread.
 */

import { assertEquals, assertRejects } from "@std/assert";
import {
  convertToQcow2,
  type ImageTarget,
  memoryTarget,
  openImage,
  Qcow2Writer,
  resolveCreateOptions,
} from "../mod.ts";
import { workerTarget } from "../native/worker_target.ts";
import { prng } from "./_synth.ts";
import { tempDir } from "./_reference.ts";

/**
 * A target with `allocate` that does each write a moment later, in the
 * order given: a writer that fills a buffer again before its write is done
 * gets the new bytes written instead of the old ones.
 */
function laterTarget(pooled = false) {
  const inner = memoryTarget();
  let chain = Promise.resolve();
  let allocated = 0;
  // Pooled: every buffer cut from one memory, one after the other (as the
  // worker target does), so that only their places tell them apart.
  const pool = new ArrayBuffer(64 * 1024 * 1024);
  let used = 0;
  const target: ImageTarget & { bytes(): Uint8Array; allocated(): number } = {
    allocate(size: number) {
      allocated++;
      if (!pooled) return new Uint8Array(size);
      used += size;
      return new Uint8Array(pool, used - size, size);
    },
    writeAt(position: number, bytes: Uint8Array) {
      chain = chain
        .then(() => new Promise<void>((resolve) => setTimeout(resolve, 0)))
        .then(() => inner.writeAt(position, bytes));
      return chain;
    },
    finish: (size: number) => chain.then(() => inner.finish(size)),
    bytes: () => inner.bytes(),
    allocated: () => allocated,
  };
  return target;
}

/**
 * 6 MiB + 1 KiB of random data with runs of zeros of several lengths: more
 * than the read buffers taken in turn, so each is filled again.
 */
function source(): Uint8Array {
  const raw = prng(6 * 1024 * 1024 + 1024, 11);
  raw.fill(0, 65536, 3 * 65536); // two zero clusters (64 KiB)
  raw.fill(0, 1024 * 1024 + 512, 1024 * 1024 + 8192); // zeros inside one
  raw.fill(0, 2 * 1024 * 1024, 2 * 1024 * 1024 + 4096);
  return raw;
}

const CASES = [
  {},
  { clusterSize: 512 },
  { clusterSize: 4096 }, // an L2 table every 2 MiB
  { clusterSize: 2 * 1024 * 1024 },
  { extendedL2: true, clusterSize: 32768 },
  { compat: "0.10" as const },
  { sparseSize: 0 }, // zero clusters written from a buffer of its own
  { preallocation: "metadata" as const },
  { preallocation: "full" as const, clusterSize: 16384 },
];

for (
  const [options, pooled] of [
    ...CASES.map((o) => [o, false] as const),
    [{}, true] as const,
    [{ clusterSize: 4096 }, true] as const,
  ]
) {
  Deno.test(`convertToQcow2 with writes left running: the same image, ${JSON.stringify(options)}${pooled ? ", buffers cut from one memory" : ""}`, async () => {
    const raw = source();
    const plain = memoryTarget();
    await convertToQcow2(raw, plain, options);
    const later = laterTarget(pooled);
    await convertToQcow2(raw, later, options);
    // (The first difference, not the whole arrays: a diff of MiBs is huge.)
    const [a, b] = [later.bytes(), plain.bytes()];
    assertEquals(a.length, b.length);
    assertEquals(a.findIndex((x, i) => x !== b[i]), -1);
    // The bytes were read into the target's memory, not copied there.
    assertEquals(later.allocated() > 0, true);
  });
}

Deno.test("Qcow2Writer.settle: the bytes still gathered into one write are written too", async () => {
  const target = laterTarget();
  const cs = 65536;
  const writer = new Qcow2Writer(
    target,
    resolveCreateOptions({ size: 1 << 20 }),
    4,
  );
  // Two clusters gathered for one write, not yet started; then settle, as
  // a caller waiting for every write before going on would.
  await writer.addRun(0, writer.allocate(2 * cs).fill(7));
  await writer.settle();
  await writer.finish();
  const image = await openImage(target.bytes());
  const back = new Uint8Array(2 * cs);
  await image.read(0, back);
  assertEquals(back.findIndex((x) => x !== 7), -1);
});

Deno.test("Qcow2Writer.allocate: buffers the caller gave up are not kept by the writer", async () => {
  // A caller taking a new buffer for each run: the writer must not hold on
  // to them all (the memory would grow with the image). Run apart, to call
  // the garbage collector.
  const mod = new URL("../mod.ts", import.meta.url).href;
  const code = `
    import { Qcow2Writer, resolveCreateOptions } from ${JSON.stringify(mod)};
    const target = {
      allocate: (size) => new Uint8Array(size),
      writeAt: () => Promise.resolve(),
      finish: () => Promise.resolve(),
    };
    const options = resolveCreateOptions({ size: 64 << 20 });
    const writer = new Qcow2Writer(target, options, 2048);
    const kept = [];
    for (let i = 0; i < 32; i++) {
      const bytes = writer.allocate(1 << 20).fill(1);
      kept.push(new WeakRef(bytes.buffer));
      await writer.addRun(i * 16, bytes);
    }
    await writer.finish();
    await new Promise((resolve) => setTimeout(resolve, 0));
    gc();
    console.log(kept.filter((ref) => ref.deref() !== undefined).length);
  `;
  const { code: status, stdout, stderr } = await new Deno.Command(
    Deno.execPath(),
    {
      args: ["eval", "--v8-flags=--expose-gc", code],
      stdout: "piped",
      stderr: "piped",
    },
  ).output();
  assertEquals(status, 0, new TextDecoder().decode(stderr));
  const alive = Number(new TextDecoder().decode(stdout).trim());
  assertEquals(alive < 4, true, `${alive} of 32 buffers still kept`);
});

Deno.test("workerTarget: shared bytes by the worker, metadata here, the length by finish", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/out.img`;
    await Deno.writeFile(path, new Uint8Array(100).fill(9)); // emptied first
    using file = await Deno.open(path, { read: true, write: true });
    const target = await workerTarget(file, path);
    try {
      const a = target.allocate!(8192).fill(1);
      const b = target.allocate!(4096).fill(2);
      await Promise.all([
        target.writeAt(4096, a),
        target.writeAt(16384, b.subarray(0, 1000)),
        target.writeAt(0, new Uint8Array(10).fill(3)),
      ]);
      await target.finish(20000);
      if (Deno.build.os === "linux") {
        // The worker's handle, and with FFI its descriptor for fallocate.
        assertEquals(await openOn(path) >= 2, true);
      }
    } finally {
      await target.close();
    }
    // The worker closed what it opened: only our handle is left.
    if (Deno.build.os === "linux") assertEquals(await openOn(path), 1);
    const expected = new Uint8Array(20000);
    expected.fill(3, 0, 10);
    expected.fill(1, 4096, 4096 + 8192);
    expected.fill(2, 16384, 16384 + 1000);
    assertEquals(await Deno.readFile(path), expected);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Runs `test` with a new empty file open for writing in a directory of its own. */
async function withOutput(
  test: (file: Deno.FsFile, path: string, dir: string) => Promise<void>,
): Promise<void> {
  const dir = await tempDir();
  try {
    const path = `${dir}/out.img`;
    using file = await Deno.open(path, {
      read: true,
      write: true,
      create: true,
    });
    await test(file, path, dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

Deno.test("workerTarget: a write that fails rejects with the runtime's error class", () =>
  withOutput(async (file, _path, dir) => {
    // The worker opens a path that does not exist.
    const target = await workerTarget(file, `${dir}/missing/out.img`);
    try {
      const bytes = target.allocate!(4096);
      await assertRejects(
        () => target.writeAt(0, bytes),
        Deno.errors.NotFound,
      );
    } finally {
      await target.close();
    }
  }));

Deno.test({
  name:
    "workerTarget: a full disk's error keeps its code (ENOSPC), which names the file in the CLI",
  ignore: Deno.build.os !== "linux",
  async fn() {
    // The worker writes /dev/full, where every write fails with ENOSPC (in
    // a child with --allow-all: Deno opens a device with nothing less).
    const module = new URL("../native/worker_target.ts", import.meta.url);
    const program = `
      import { workerTarget } from "${module.href}";
      const dir = await Deno.makeTempDir();
      using file = await Deno.open(dir + "/out.img", { write: true, create: true });
      const target = await workerTarget(file, "/dev/full");
      try {
        await target.writeAt(0, target.allocate(4096));
        console.log("written");
      } catch (e) {
        console.log(e.code ?? String(e));
      } finally {
        await target.close();
        await Deno.remove(dir, { recursive: true });
      }`;
    const { stdout, stderr } = await new Deno.Command(Deno.execPath(), {
      args: ["eval", "--quiet", program],
      env: { NO_COLOR: "1" },
    }).output();
    assertEquals(
      new TextDecoder().decode(stdout).trim(),
      "ENOSPC",
      new TextDecoder().decode(stderr),
    );
  },
});

Deno.test("workerTarget: close() rejects the writes still running", () =>
  withOutput(async (file, path) => {
    const target = await workerTarget(file, path);
    // 32 MiB: still being written when close() comes (4 KiB could be
    // written, and answered, before it: this test failed now and then).
    const write = target.writeAt(0, target.allocate!(32 << 20));
    const closing = target.close(); // before any answer can come
    await assertRejects(() => write, Error, "stopped");
    await assertRejects(() => target.writeAt(0, target.allocate!(10)));
    await closing; // the worker closed its file and stopped
    // Its file is closed: the directory can go (and the process ends).
    await target.close(); // twice: nothing more
  }));

Deno.test("workerTarget: more writes than its ring holds, all in place", () =>
  withOutput(async (file, path) => {
    const target = await workerTarget(file, path);
    const count = 2500; // the ring holds 1024 requests
    try {
      const pool = target.allocate!(count * 16);
      const writes: Promise<void>[] = [];
      for (let i = 0; i < count; i++) {
        // Written backwards: each request lands where it is asked to.
        const bytes = pool.subarray(i * 16, (i + 1) * 16).fill(i % 251);
        writes.push(target.writeAt((count - 1 - i) * 16, bytes));
      }
      await Promise.all(writes);
      await target.finish(count * 16);
    } finally {
      await target.close();
    }
    const written = await Deno.readFile(path);
    for (let i = 0; i < count; i++) {
      assertEquals(written[(count - 1 - i) * 16], i % 251, `write ${i}`);
    }
  }));

Deno.test("workerTarget: metadata lands after a running write it overlaps, at once elsewhere", () =>
  withOutput(async (file, path) => {
    const target = await workerTarget(file, path);
    try {
      const data = target.allocate!(1 << 20).fill(1);
      const writes = [target.writeAt(0, data)];
      // Over the data being written: must land after it.
      writes.push(target.writeAt(1000, new Uint8Array(10).fill(2)));
      // Past it: written at once.
      writes.push(target.writeAt(2 << 20, new Uint8Array(10).fill(3)));
      // Then data again over the first metadata: lands last.
      writes.push(target.writeAt(1004, data.subarray(0, 2)));
      await Promise.all(writes);
      await target.finish((2 << 20) + 10);
    } finally {
      await target.close();
    }
    const written = await Deno.readFile(path);
    assertEquals([...written.subarray(998, 1012)], [
      1,
      1,
      2,
      2,
      2,
      2,
      1,
      1,
      2,
      2,
      2,
      2,
      1,
      1,
    ]);
    assertEquals(written[2 << 20], 3);
    assertEquals(written.length, (2 << 20) + 10);
  }));

Deno.test("workerTarget: a write that fails stops the ones after it", () =>
  withOutput(async (file, path) => {
    const target = await workerTarget(file, path);
    const bytes = target.allocate!(4096);
    // Past any file system's largest file: the write fails.
    const failing = target.writeAt(2 ** 62, bytes);
    const after = target.writeAt(0, bytes);
    await assertRejects(() => failing);
    await assertRejects(() => after);
    await assertRejects(() => target.writeAt(8192, bytes));
    await target.close(); // the worker closed its file and stopped
    if (Deno.build.os === "linux") assertEquals(await openOn(path), 1);
  }));

/**
 * How many of this process's file descriptors are open on `path` (Linux;
 * `ls` reads /proc, which Deno opens to --allow-all alone).
 */
async function openOn(path: string): Promise<number> {
  const { stdout } = await new Deno.Command("ls", {
    args: ["-l", `/proc/${Deno.pid}/fd`],
    stdout: "piped",
  }).output();
  return new TextDecoder().decode(stdout).split("\n")
    .filter((line) => line.endsWith(` -> ${path}`)).length;
}
