/** fileHandleWriter: positions kept for a positional FileHandle. */
import { assertEquals, assertRejects } from "@std/assert";
import { convert, fileHandleWriter } from "@qcow2/qcow2";
import { expected, fixture, hex } from "./_reference.ts";

/** A FileHandle-like object over a growable byte array. */
function memoryHandle(initial = new Uint8Array()) {
  let bytes = initial;
  let written = 0;
  return {
    get bytes() {
      return bytes;
    },
    get written() {
      return written;
    },
    write(buffer: Uint8Array, offset: number, length: number, pos: number) {
      if (pos + length > bytes.length) {
        const grown = new Uint8Array(pos + length);
        grown.set(bytes);
        bytes = grown;
      }
      // Short writes: at most 1000 bytes at a time.
      const n = Math.min(length, 1000);
      bytes.set(buffer.subarray(offset, offset + n), pos);
      written += n;
      return Promise.resolve({ bytesWritten: n });
    },
    truncate(len = 0) {
      const next = new Uint8Array(len);
      next.set(bytes.subarray(0, len));
      bytes = next;
      return Promise.resolve();
    },
    stat: () => Promise.resolve({ size: BigInt(bytes.length) }),
  };
}

Deno.test("fileHandleWriter keeps the position across seeks and short writes", async () => {
  const handle = memoryHandle(new Uint8Array([9, 9, 9]));
  const w = fileHandleWriter(handle);
  assertEquals(await w.seek(0, 2), 3); // end, from stat (a bigint)
  assertEquals(await w.write(new Uint8Array([1, 2])), 2);
  assertEquals(await w.seek(-1, 1), 4); // current
  await w.write(new Uint8Array([7]));
  assertEquals(await w.seek(1, 0), 1); // start
  await w.write(new Uint8Array([5]));
  assertEquals(handle.bytes, new Uint8Array([9, 5, 9, 1, 7]));
  await w.truncate(2);
  assertEquals(handle.bytes, new Uint8Array([9, 5]));
  await assertRejects(() => w.seek(-1, 0), RangeError);
  await assertRejects(() => w.seek(0, 7), RangeError);
});

Deno.test("convert through fileHandleWriter gives qemu-img's bytes, sparse", async () => {
  const handle = memoryHandle(new Uint8Array(100).fill(1));
  const bytes = await Deno.readFile(fixture("zlib.qcow2"));
  const summary = await convert(bytes, fileHandleWriter(handle));
  assertEquals(handle.bytes.length, expected["zlib.qcow2"].virtualSize);
  assertEquals(
    hex(await crypto.subtle.digest("SHA-256", handle.bytes)),
    expected["zlib.qcow2"].sha256,
  );
  // Holes were never written: only the data went through write.
  assertEquals(handle.written, summary.bytesWritten);
  assertEquals(summary.bytesWritten < summary.virtualSize, true);
});
