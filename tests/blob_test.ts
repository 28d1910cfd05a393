/**
 * Images read from a `Blob` (what a browser's file picker gives) read and
 * convert exactly as the same bytes in memory do.
 */
import { assertEquals } from "@std/assert";
import { blobSource, convert, openImage, readHeader } from "../mod.ts";
import { expected, fixture, hex } from "./_reference.ts";

async function rawOf(
  input: Uint8Array | Blob,
): Promise<{ bytes: Uint8Array; sha256: string }> {
  const chunks: Uint8Array<ArrayBuffer>[] = [];
  await convert(
    input,
    new WritableStream<Uint8Array>({
      write: (c) => void chunks.push(c.slice()),
    }),
  );
  const bytes = new Uint8Array(await new Blob(chunks).arrayBuffer());
  return {
    bytes,
    sha256: hex(await crypto.subtle.digest("SHA-256", bytes)),
  };
}

for (const name of ["v3_64k.qcow2", "zlib.qcow2", "odd_size_zlib.qcow2"]) {
  Deno.test(`Blob input: ${name} converts to the same bytes as a Uint8Array`, async () => {
    const bytes = await Deno.readFile(fixture(name));
    const fromBlob = await rawOf(new Blob([bytes]));
    const fromBytes = await rawOf(bytes);
    assertEquals(fromBlob.bytes.length, expected[name].virtualSize);
    assertEquals(fromBlob.sha256, fromBytes.sha256);
    assertEquals(fromBlob.sha256, expected[name].sha256);
  });
}

Deno.test("Blob input: a File passes to openImage and readHeader as it is", async () => {
  const bytes = await Deno.readFile(fixture("zlib.qcow2"));
  const file = new File([bytes], "zlib.qcow2");
  assertEquals(
    (await readHeader(file)).size,
    expected["zlib.qcow2"].virtualSize,
  );
  const image = await openImage(file);
  const fromBlob = new Uint8Array(image.size);
  await image.read(0, fromBlob);
  const fromBytes = new Uint8Array(image.size);
  await (await openImage(bytes)).read(0, fromBytes);
  assertEquals(fromBlob, fromBytes);
});

Deno.test("blobSource: size, short reads at the end, reads past the end", async () => {
  const source = blobSource(new Blob([new Uint8Array([1, 2, 3, 4, 5])]));
  assertEquals(source.size, 5);
  const buffer = new Uint8Array(4);
  assertEquals(await source.readAt(3, buffer), 2);
  assertEquals(buffer.subarray(0, 2), new Uint8Array([4, 5]));
  assertEquals(await source.readAt(5, buffer), 0);
  assertEquals(await source.readAt(99, buffer), 0);
  assertEquals(await source.readAt(0, new Uint8Array(0)), 0);
});

Deno.test("blobSource: concurrent reads each get their own bytes", async () => {
  const bytes = new Uint8Array(256 * 1024).map((_, i) =>
    (i * 7 + (i >> 8)) & 255
  );
  const source = blobSource(new Blob([bytes]));
  const reads = Array.from({ length: 64 }, (_, i) => {
    const buffer = new Uint8Array(1000 + i * 37);
    const position = (i * 4099) % (bytes.length - buffer.length);
    return source.readAt(position, buffer).then((n) => ({
      n,
      buffer,
      position,
    }));
  });
  for (const { n, buffer, position } of await Promise.all(reads)) {
    assertEquals(n, buffer.length);
    assertEquals(buffer, bytes.subarray(position, position + buffer.length));
  }
});
