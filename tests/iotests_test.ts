/**
 * The corrupted-image cases of QEMU's qemu-iotests that apply to reading,
 * rebuilt on small synthetic images: each must fail with the stated code (or,
 * where QEMU reads the image, read). Cases that only concern writing, repair
 * or `qemu-img check` are not listed.
 *
 * qcow v1 cases (092) are in qcow_test.ts; snapshot table cases (080, 261)
 * also in snapshots_test.ts.
 */
import { assertEquals } from "@std/assert";
import { openImage, Qcow2Error, type Qcow2ErrorCode } from "../mod.ts";
import {
  prng,
  type SynthCluster,
  type SynthHeader,
  synthImage,
} from "./_synth.ts";

const CS = 65536;
const data = new Map<number, SynthCluster>([[0, {
  kind: "data",
  bytes: prng(CS, 1),
}]]);

function image(h: SynthHeader = {}, clusters = data): Uint8Array {
  return synthImage({ size: 2n * BigInt(CS), ...h }, clusters);
}

function patch(
  bytes: Uint8Array,
  at: number,
  value: bigint,
  size: 4 | 8,
): Uint8Array {
  const v = new DataView(bytes.buffer);
  if (size === 4) v.setUint32(at, Number(value));
  else v.setBigUint64(at, value);
  return bytes;
}

const featureTable = (bit: number, name: string) => {
  const entry = new Uint8Array(48);
  entry.set([0, bit, ...new TextEncoder().encode(name)]);
  return { type: 0x6803f857, data: entry };
};

const CASES: [string, () => Uint8Array, Qcow2ErrorCode | "reads"][] = [
  [
    "080 header_length 0xffffffff",
    () => patch(image(), 100, 0xffffffffn, 4),
    "BAD_HEADER",
  ],
  [
    "080 header_length 0x7fffffff",
    () => patch(image(), 100, 0x7fffffffn, 4),
    "BAD_HEADER",
  ],
  ["080 extension length 0x7fffffff", () => {
    const b = image({
      extensions: [{ type: 0x1234, data: new Uint8Array(8) }],
    });
    return patch(b, 116, 0x7fffffffn, 4);
  }, "BAD_EXTENSION"],
  [
    "080 backing_file_offset huge",
    () => patch(image(), 8, 0x7fffffffffffffffn, 8),
    "TOO_LARGE",
  ],
  [
    "080 backing_file_offset past the cluster",
    () => patch(image(), 8, 0x20000n, 8),
    "BAD_HEADER",
  ],
  [
    "080 refcount_table_clusters 0xffffffff",
    () => patch(image(), 56, 0xffffffffn, 4),
    "BAD_HEADER",
  ],
  [
    "080 refcount_table_clusters 0x00020001",
    () => patch(image(), 56, 0x00020001n, 4),
    "BAD_HEADER",
  ],
  [
    "080 refcount_table_offset 0x1234567890abcdef",
    () => patch(image(), 48, 0x1234567890abcdefn, 8),
    "TOO_LARGE",
  ],
  [
    "080 refcount_table_offset unaligned",
    () => patch(image(), 48, 0x10200n, 8),
    "BAD_HEADER",
  ],
  [
    "080 nb_snapshots 0xffffffff",
    () => patch(image(), 60, 0xffffffffn, 4),
    "BAD_HEADER",
  ],
  [
    "080 nb_snapshots 0x7fffffff",
    () => patch(image(), 60, 0x7fffffffn, 4),
    "BAD_HEADER",
  ],
  [
    "080 snapshots_offset huge",
    () => patch(patch(image(), 60, 1n, 4), 64, 0x7fffffffffff0000n, 8),
    "TOO_LARGE",
  ],
  [
    "080 snapshots_offset unaligned",
    () => patch(patch(image(), 60, 1n, 4), 64, 0x12345n, 8),
    "BAD_HEADER",
  ],
  [
    "080 snapshot table past the end of the file",
    () => patch(patch(image(), 60, 1n, 4), 64, 0x100000n, 8),
    "BAD_HEADER",
  ],
  [
    "080 l1_size 0xffffffff",
    () => patch(image(), 36, 0xffffffffn, 4),
    "BAD_HEADER",
  ],
  [
    "080 l1_size 0x7fffffff",
    () => patch(image(), 36, 0x7fffffffn, 4),
    "BAD_HEADER",
  ],
  [
    "080 l1_table_offset huge",
    () => patch(image(), 40, 0x7fffffffffff0000n, 8),
    "TOO_LARGE",
  ],
  [
    "080 l1_table_offset unaligned",
    () => patch(image(), 40, 0x20200n, 8),
    "BAD_HEADER",
  ],
  [
    "080 l1_table_offset past the end of the file",
    () => patch(image(), 40, 0x7ff0000n, 8),
    "TRUNCATED",
  ],
  [
    "080 l1_size too small for the disk",
    () => patch(image({ size: 1n << 32n }), 36, 1n, 4),
    "BAD_HEADER",
  ],
  ["080 backing name size 0xffffffff", () => {
    const b = image({ backingFile: "base" });
    return patch(b, 16, 0xffffffffn, 4);
  }, "BAD_HEADER"],
  [
    "036 unknown incompatible bit 63",
    () => image({ incompatible: 1n << 63n }),
    "UNSUPPORTED_FEATURE",
  ],
  ["036 unknown incompatible bits 61-63, named", () =>
    image({
      incompatible: 7n << 61n,
      extensions: [featureTable(62, "test feature")],
    }), "UNSUPPORTED_FEATURE"],
  [
    "036 unknown autoclear bit 63 opens",
    () => image({ autoclear: 1n << 63n }),
    "reads",
  ],
  [
    "036 unknown compatible bit 63 opens",
    () => image({ compatible: 1n << 63n }),
    "reads",
  ],
  [
    "039 dirty bit: reads (read-only open)",
    () => image({ incompatible: 1n }),
    "reads",
  ],
  [
    "039 corrupt bit: reads (read-only open)",
    () => image({ incompatible: 2n }),
    "reads",
  ],
  [
    "054 virtual size of 1 EB",
    () => patch(image(), 24, 1n << 60n, 8),
    "TOO_LARGE",
  ],
  [
    "060 L1 entry unaligned",
    () => patch(image(), 0x20000, 0x30200n, 8),
    "UNALIGNED_OFFSET",
  ],
  [
    "060 L2 entry unaligned",
    () => image({}, new Map([[0, { kind: "raw", entry: 0x40200n }]])),
    "UNALIGNED_OFFSET",
  ],
  [
    "060 L2 entry on the L1 table",
    () => image({}, new Map([[0, { kind: "raw", entry: 0x20000n }]])),
    "METADATA_OVERLAP",
  ],
  [
    "060 L2 entry on the header",
    () => image({}, new Map([[0, { kind: "raw", entry: 0x1n << 63n }]])),
    "reads",
  ],
  [
    "060 L2 entry on the refcount table",
    () => image({}, new Map([[0, { kind: "raw", entry: 0x10000n }]])),
    "METADATA_OVERLAP",
  ],
  [
    "060 L2 entry on its own L2 table",
    () => image({}, new Map([[0, { kind: "raw", entry: 0x30000n }]])),
    "METADATA_OVERLAP",
  ],
  ["138 data cluster at 32 PB with 512-byte clusters", () =>
    image(
      { clusterBits: 9, size: 1n << 20n },
      new Map([[0, { kind: "raw", entry: (1n << 55n) | (1n << 63n) }]]),
    ), "OFFSET_PAST_END"],
  [
    "244 data file bit without a data file name",
    () => image({ incompatible: 4n }),
    "EXTERNAL_DATA_FILE",
  ],
  ["271 extended L2: subcluster allocated and zero", () =>
    image(
      { incompatible: 16n },
      new Map([[0, {
        kind: "raw",
        entry: 0x40000n | (1n << 63n),
        bitmap: (1n << 32n) | 1n,
      }]]),
    ), "BAD_SUBCLUSTER_BITMAP"],
  [
    "271 extended L2: allocated subclusters without a cluster",
    () =>
      image(
        { incompatible: 16n },
        new Map([[0, { kind: "raw", entry: 0n, bitmap: 1n }]]),
      ),
    "BAD_SUBCLUSTER_BITMAP",
  ],
  ["287 compression type zstd without bit 3", () => {
    const b = image();
    b[104] = 1;
    return b;
  }, "BAD_HEADER"],
  [
    "287 bit 3 with compression type zlib",
    () => image({ incompatible: 8n }),
    "BAD_HEADER",
  ],
  ["287 unknown compression type", () => {
    const b = image({ compressionType: 1 });
    b[104] = 7;
    return b;
  }, "BAD_HEADER"],
];

for (const [name, build, want] of CASES) {
  Deno.test(`qemu-iotests ${name}: ${want}`, async () => {
    let got: string = "reads";
    try {
      const image = await openImage(build());
      await image.read(0, new Uint8Array(Math.min(image.size, 4 * CS)));
    } catch (e) {
      if (!(e instanceof Qcow2Error)) throw e;
      got = e.code;
    }
    assertEquals(got, want);
  });
}
