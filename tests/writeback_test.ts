/**
 * Early writeback (native/writeback.ts) and the Deno store that uses it
 * (native/writable_file.ts): the kernel takes the request for a written
 * file, and data written through `writeMany` reads back after a flush.
 */
import { assert, assertEquals } from "@std/assert";
import { writeback } from "../native/writeback.ts";
import { openPathWritable } from "../native/writable_file.ts";

/** Early writeback is there on Linux with --allow-ffi (`deno task test`). */
const linux = Deno.build.os === "linux" &&
  Deno.permissions.querySync({ name: "ffi" }).state === "granted";

Deno.test("writeback: sync_file_range takes a written range; refused once closed", async () => {
  const path = await Deno.makeTempFile();
  try {
    await Deno.writeFile(path, new Uint8Array(3 << 20).fill(7));
    const early = writeback(path);
    assertEquals(early !== undefined, linux);
    if (!early) return;
    assertEquals(early.start(0, 3 << 20), true);
    assertEquals(early.start(1 << 20, 0), false); // nothing to write
    early.close();
    assertEquals(early.start(0, 3 << 20), false);
    assertEquals(writeback(`${path}.missing`), undefined);
  } finally {
    await Deno.remove(path);
  }
});

Deno.test("writeback: pieces written through the path store read back after a flush", async () => {
  const path = await Deno.makeTempFile();
  try {
    const store = await openPathWritable(path);
    assertEquals(store.writeMany !== undefined, linux);
    // 3 MiB in pieces (enough to start the writeback), out of order, with
    // a gap that must read as zeros.
    const piece = (i: number) => new Uint8Array(256 << 10).fill(i + 1);
    const order = [5, 0, 3, 1, 11, 4, 2, 7, 6, 10, 9];
    const pieces = order.map((i) => ({
      position: i * (256 << 10),
      bytes: piece(i),
    }));
    if (store.writeMany) await store.writeMany(pieces);
    else for (const p of pieces) await store.writeAt(p.position, p.bytes);
    await store.writeAt(12 << 18, new Uint8Array([0xa5]));
    assertEquals(store.size, (12 << 18) + 1);
    await store.flush!();
    await store.close!();
    const back = await Deno.readFile(path);
    assertEquals(back.length, (12 << 18) + 1);
    for (let i = 0; i < 12; i++) {
      const want = i === 8 ? 0 : i + 1;
      const part = back.subarray(i << 18, (i + 1) << 18);
      assert(part.every((b) => b === want), `piece ${i}`);
    }
    assertEquals(back[12 << 18], 0xa5);
  } finally {
    await Deno.remove(path);
  }
});
