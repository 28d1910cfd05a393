import { assert, assertEquals, assertRejects } from "@std/assert";
import { L2Cache } from "../src/qcow2/l2_cache.ts";

const BYTES = 16;

/** A load that fills the table with `value` and records its buffer. */
function filler(value: number, buffers: Uint8Array[]) {
  return (into: Uint8Array) => {
    buffers.push(into);
    into.fill(value);
    return Promise.resolve();
  };
}

/** A promise and its resolver. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => resolve = r);
  return { promise, resolve };
}

Deno.test("L2Cache keeps at most its capacity and reads a held table once", async () => {
  const cache = new L2Cache(2, BYTES);
  const buffers: Uint8Array[] = [];
  for (const offset of [1, 2, 1, 2, 1]) {
    const first = await cache.use(offset, filler(offset, buffers), (t) => t[0]);
    assertEquals(first, offset);
  }
  assertEquals(buffers.length, 2);
  assertEquals(cache.size, 2);
  await cache.use(3, filler(3, buffers), () => {});
  assertEquals(cache.size, 2);
  // 2 was the least recently used: it is read again, 1 is not.
  await cache.use(1, filler(1, buffers), () => {});
  assertEquals(buffers.length, 3);
  await cache.use(2, filler(2, buffers), () => {});
  assertEquals(buffers.length, 4);
});

Deno.test("L2Cache reuses the buffer of a table that left the cache", async () => {
  const cache = new L2Cache(1, BYTES);
  const buffers: Uint8Array[] = [];
  for (let offset = 1; offset <= 5; offset++) {
    const seen = await cache.use(offset, filler(offset, buffers), (t) => [
      ...t,
    ]);
    assertEquals(seen, new Array(BYTES).fill(offset));
  }
  assertEquals(buffers.length, 5);
  // Two buffers take turns: the one in the cache and the one just evicted.
  assertEquals(new Set(buffers).size, 2);
});

Deno.test("L2Cache never reuses a buffer while its table is awaited", async () => {
  const cache = new L2Cache(1, BYTES);
  const buffers: Uint8Array[] = [];
  const gate = deferred();
  // Table 1 is still being read when 2 and 3 push it out of the cache.
  const slow = cache.use(1, async (into) => {
    buffers.push(into);
    await gate.promise;
    into.fill(1);
  }, (t) => [...t]);
  const second = cache.use(1, () => {
    throw new Error("a table being read is not read twice");
  }, (t) => [...t]);
  await cache.use(2, filler(2, buffers), () => {});
  await cache.use(3, filler(3, buffers), () => {});
  assert(buffers[1] !== buffers[0] && buffers[2] !== buffers[0]);
  gate.resolve();
  assertEquals(await slow, new Array(BYTES).fill(1));
  assertEquals(await second, new Array(BYTES).fill(1));
  // The next read takes table 2's buffer, spare since 3 replaced it.
  await cache.use(4, filler(4, buffers), () => {});
  assertEquals(buffers[3], buffers[1]);
});

Deno.test("L2Cache forgets a failed read and does not reuse its buffer", async () => {
  const cache = new L2Cache(1, BYTES);
  const buffers: Uint8Array[] = [];
  await assertRejects(
    () =>
      cache.use(1, (into) => {
        buffers.push(into);
        return Promise.reject(new Error("short read"));
      }, () => {}),
    Error,
    "short read",
  );
  assertEquals(cache.size, 0);
  await cache.use(1, filler(1, buffers), () => {});
  await cache.use(2, filler(2, buffers), () => {});
  assertEquals(buffers.length, 3);
  assert(!buffers.slice(1).includes(buffers[0]));
});

Deno.test("L2Cache releases a table when its body throws", async () => {
  const cache = new L2Cache(1, BYTES);
  const buffers: Uint8Array[] = [];
  await assertRejects(
    () =>
      cache.use(1, filler(1, buffers), () => {
        throw new Error("bad entry");
      }),
    Error,
    "bad entry",
  );
  await cache.use(2, filler(2, buffers), () => {});
  await cache.use(3, filler(3, buffers), () => {});
  // Table 1's buffer came back for table 3.
  assertEquals(buffers[2], buffers[0]);
});

Deno.test("L2Cache never reuses a buffer whose table a caller is about to read", async () => {
  const cache = new L2Cache(1, BYTES);
  const buffers: Uint8Array[] = [];
  await cache.use(1, filler(1, buffers), () => {});
  // A hit: the caller resumes only after a turn of the microtask queue,
  // while 2 and 3 push table 1 out and are read at once.
  const reading = cache.use(1, () => {
    throw new Error("a held table is not read again");
  }, (t) => [...t]);
  const two = cache.use(2, filler(2, buffers), () => {});
  const three = cache.use(3, filler(3, buffers), () => {});
  assertEquals(await reading, new Array(BYTES).fill(1));
  await Promise.all([two, three]);
  assert(!buffers.slice(1).includes(buffers[0]));
});
