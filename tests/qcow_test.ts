import { assertEquals, assertRejects, assertThrows } from "@std/assert";
import * as zlib from "node:zlib";
import {
  openImage,
  parseQcowHeader,
  Qcow2Error,
  type QcowImage,
} from "../mod.ts";
import { prng } from "./_synth.ts";

/** A qcow v1 image: 48-byte header, L1 at 512, one L2 at 4096, data after. */
function qcowImage(
  h: {
    clusterBits?: number;
    l2Bits?: number;
    size?: bigint;
    crypt?: number;
    backing?: string;
  } = {},
  l2: bigint[] = [],
  tail: Uint8Array = new Uint8Array(0),
): Uint8Array {
  const bytes = new Uint8Array(8192 + tail.length);
  const v = new DataView(bytes.buffer);
  v.setUint32(0, 0x514649fb);
  v.setUint32(4, 1);
  v.setBigUint64(24, h.size ?? 1n << 20n);
  bytes[32] = h.clusterBits ?? 12;
  bytes[33] = h.l2Bits ?? 9;
  v.setUint32(36, h.crypt ?? 0);
  v.setBigUint64(40, 512n);
  if (h.backing !== undefined) {
    const name = new TextEncoder().encode(h.backing);
    v.setBigUint64(8, 48n);
    v.setUint32(16, name.length);
    bytes.set(name.subarray(0, 400), 48);
  }
  v.setBigUint64(512, 4096n); // L1[0] -> L2 at 4096
  l2.forEach((e, i) => v.setBigUint64(4096 + i * 8, e));
  bytes.set(tail, 8192);
  return bytes;
}

Deno.test("qcow v1: header fields", () => {
  const h = parseQcowHeader(qcowImage({ backing: "base.img" }));
  assertEquals(h.version, 1);
  assertEquals(h.clusterBits, 12);
  assertEquals(h.clusterSize, 4096);
  assertEquals(h.l2Bits, 9);
  assertEquals(h.size, 1 << 20);
  assertEquals(h.l1Size, 1);
  assertEquals(h.l1TableOffset, 512);
  assertEquals(h.backingFile, "base.img");
});

Deno.test("qcow v1: the header checks of qemu-iotests 092", () => {
  for (
    const [h, code] of [
      [{ clusterBits: 8 }, "BAD_HEADER"],
      [{ clusterBits: 17 }, "BAD_HEADER"],
      [{ l2Bits: 5 }, "BAD_HEADER"],
      [{ l2Bits: 14 }, "BAD_HEADER"],
      [{ size: 1n << 62n }, "TOO_LARGE"],
      [{ size: 1n << 52n, clusterBits: 9, l2Bits: 6 }, "TOO_LARGE"],
      [{ crypt: 2 }, "BAD_HEADER"],
    ] as const
  ) {
    const e = assertThrows(() => parseQcowHeader(qcowImage(h)), Qcow2Error);
    assertEquals(
      e.code,
      code,
      JSON.stringify(h, (_, x) => typeof x === "bigint" ? String(x) : x),
    );
  }
  const bytes = qcowImage({ backing: "x" });
  new DataView(bytes.buffer).setUint32(16, 1024);
  assertEquals(
    assertThrows(() => parseQcowHeader(bytes), Qcow2Error).code,
    "BAD_HEADER",
  );
});

Deno.test("qcow v1: data, unallocated and compressed clusters", async () => {
  const data = prng(4096, 3);
  const text = new TextEncoder().encode("qcow one ".repeat(500)).subarray(
    0,
    4096,
  );
  const packed = zlib.deflateRawSync(text, { windowBits: 12 });
  // Cluster 0 data at 8192; cluster 2 compressed right after it.
  const tail = new Uint8Array(4096 + packed.length);
  tail.set(data);
  tail.set(packed, 4096);
  const compressed = (1n << 63n) | (BigInt(packed.length) << 51n) | 12288n;
  const image = await openImage(
    qcowImage({}, [8192n, 0n, compressed], tail),
  ) as QcowImage;
  const out = new Uint8Array(3 * 4096);
  await image.read(0, out);
  assertEquals(out.subarray(0, 4096), data);
  assertEquals(out.subarray(4096, 8192), new Uint8Array(4096));
  assertEquals(out.subarray(8192), text);
});

Deno.test("qcow v1: encrypted images are refused", async () => {
  const e = await assertRejects(
    () => openImage(qcowImage({ crypt: 1 })),
    Qcow2Error,
  );
  assertEquals(e.code, "ENCRYPTED");
});
