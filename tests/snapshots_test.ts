import { assertEquals, assertRejects } from "@std/assert";
import {
  bytesSource,
  openImage,
  Qcow2Error,
  readHeader,
  readSnapshots,
} from "../mod.ts";
import { synthImage } from "./_synth.ts";

interface Entry {
  l1Offset?: bigint;
  l1Size?: number;
  id: string;
  name: string;
  extra?: Uint8Array;
}

/** An image with a snapshot table appended, at a cluster boundary. */
function withSnapshots(entries: Entry[]): Uint8Array {
  const base = synthImage({}, new Map());
  const at = Math.ceil(base.length / 65536) * 65536;
  const parts: Uint8Array[] = [];
  for (const e of entries) {
    const id = new TextEncoder().encode(e.id);
    const name = new TextEncoder().encode(e.name);
    const extra = e.extra ?? new Uint8Array(24);
    const size = 40 + extra.length + id.length + name.length;
    const entry = new Uint8Array(Math.ceil(size / 8) * 8);
    const v = new DataView(entry.buffer);
    v.setBigUint64(0, e.l1Offset ?? 0x20000n);
    v.setUint32(8, e.l1Size ?? 1);
    v.setUint16(12, id.length);
    v.setUint16(14, name.length);
    v.setUint32(16, 1700000000);
    v.setUint32(20, 5);
    v.setBigUint64(24, 3_500_000_000n);
    v.setUint32(36, extra.length);
    entry.set(extra, 40);
    entry.set(id, 40 + extra.length);
    entry.set(name, 40 + extra.length + id.length);
    parts.push(entry);
  }
  const table = parts.reduce((n, p) => n + p.length, 0);
  const out = new Uint8Array(at + Math.max(table, 8));
  out.set(base);
  let p = at;
  for (const part of parts) (out.set(part, p), p += part.length);
  const v = new DataView(out.buffer);
  v.setUint32(60, entries.length);
  v.setBigUint64(64, BigInt(at));
  return out;
}

function extra(vmState: bigint, disk: bigint, icount: bigint): Uint8Array {
  const e = new Uint8Array(24);
  const v = new DataView(e.buffer);
  v.setBigUint64(0, vmState);
  v.setBigUint64(8, disk);
  v.setBigUint64(16, icount);
  return e;
}

Deno.test("the snapshot table: every field", async () => {
  const bytes = withSnapshots([
    {
      id: "1",
      name: "first",
      extra: extra(0n, 1n << 20n, 0xffffffffffffffffn),
    },
    { id: "2", name: "second one", extra: extra(4096n, 1n << 20n, 42n) },
  ]);
  const source = bytesSource(bytes);
  const snapshots = await readSnapshots(source, await readHeader(source));
  assertEquals(snapshots.length, 2);
  assertEquals(snapshots[0], {
    id: "1",
    name: "first",
    l1TableOffset: 0x20000,
    l1Size: 1,
    vmStateSize: 0,
    dateSec: 1700000000,
    dateNsec: 5,
    vmClockNsec: 3_500_000_000,
    diskSize: 1 << 20,
    unknownExtraData: new Uint8Array(0),
  });
  assertEquals(snapshots[1].icount, 42);
  assertEquals(snapshots[1].vmStateSize, 4096);
  const image = await openImage(bytes, { snapshot: "second one" });
  assertEquals(image.size, 1 << 20);
});

Deno.test("the snapshot table: the checks of qemu-iotests 080 and 261", async () => {
  for (
    const [entries, message] of [
      [[{ id: "1", name: "a", extra: new Uint8Array(1028) }], /extra data/],
    ] as const
  ) {
    const bytes = withSnapshots(entries as unknown as Entry[]);
    const e = await assertRejects(() => openImage(bytes), Qcow2Error);
    assertEquals(message.test(e.message), true, e.message);
  }
  // A bad snapshot L1 table fails only when that snapshot is read, as in
  // QEMU (the active state reads).
  for (
    const [entries, message] of [
      [[{ id: "1", name: "a", l1Offset: 0x20200n }], /L1 table offset/],
      [[{ id: "1", name: "a", l1Size: 0x7fffffff }], /32 MiB/],
    ] as const
  ) {
    const bytes = withSnapshots(entries as unknown as Entry[]);
    (await openImage(bytes)).close();
    const e = await assertRejects(
      () => openImage(bytes, { snapshot: "a" }),
      Qcow2Error,
    );
    assertEquals(message.test(e.message), true, e.message);
  }
  // nb_snapshots larger than the table in the file.
  const bytes = withSnapshots([{ id: "1", name: "a" }]);
  new DataView(bytes.buffer).setUint32(60, 60000);
  const e = await assertRejects(() => openImage(bytes), Qcow2Error);
  assertEquals(e.code, "BAD_HEADER");
});
