import { assertEquals, assertThrows } from "@std/assert";
import { parseHeader } from "../src/qcow2/header.ts";
import {
  encodeExtensions,
  encodeFeatures,
  encodeHeader,
  QEMU_FEATURE_NAMES,
} from "../src/qcow2/header_encode.ts";

const fixtures = new URL("./fixtures/", import.meta.url);

/** Every qcow2 image under tests/fixtures, layouts/ included. */
function qcow2Fixtures(): URL[] {
  const out: URL[] = [];
  for (const dir of [fixtures, new URL("layouts/", fixtures)]) {
    for (const e of Deno.readDirSync(dir)) {
      if (e.isFile && e.name.endsWith(".qcow2")) out.push(new URL(e.name, dir));
    }
  }
  return out.sort((a, b) => a.href.localeCompare(b.href));
}

/** Index of the first differing byte, or -1 (assertEquals on 2 MiB is slow). */
function firstDifference(a: Uint8Array, b: Uint8Array): number {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) if (a[i] !== b[i]) return i;
  return a.length === b.length ? -1 : n;
}

Deno.test("encodeHeader gives back the first cluster qemu-img wrote, for every fixture", () => {
  const files = qcow2Fixtures();
  assertEquals(files.length >= 30, true, `only ${files.length} fixtures`);
  for (const url of files) {
    const bytes = Deno.readFileSync(url);
    const header = parseHeader(bytes);
    const encoded = encodeHeader(header);
    const name = url.pathname.split("/fixtures/")[1];
    assertEquals(encoded.length, header.clusterSize, name);
    const first = firstDifference(
      encoded,
      bytes.subarray(0, header.clusterSize),
    );
    assertEquals(first, -1, `${name}: first differing byte at ${first}`);
    // And what it encodes parses to the same header.
    assertEquals(parseHeader(encoded), header, name);
  }
});

Deno.test("QEMU's feature name table is what v3 fixtures carry", () => {
  const bytes = Deno.readFileSync(new URL("v3_64k.qcow2", fixtures));
  assertEquals(parseHeader(bytes).extensions.featureNames, [
    ...QEMU_FEATURE_NAMES,
  ]);
});

Deno.test("encodeFeatures sets the bits of the named features", () => {
  const bytes = Deno.readFileSync(new URL("lazy.qcow2", fixtures));
  const header = parseHeader(bytes);
  const bits = encodeFeatures(header.features);
  assertEquals(bits.incompatibleFeatures, header.incompatibleFeatures);
  assertEquals(bits.compatibleFeatures, header.compatibleFeatures);
  assertEquals(bits.autoclearFeatures, header.autoclearFeatures);
  assertEquals(
    encodeFeatures({
      dirty: true,
      corrupt: true,
      externalDataFile: true,
      compressionType: "zstd",
      extendedL2: true,
      bitmaps: true,
      rawExternalData: true,
    }),
    {
      incompatibleFeatures: 0x1fn,
      compatibleFeatures: 0n,
      autoclearFeatures: 3n,
    },
  );
  assertEquals(
    encodeFeatures({ compressionType: "zlib" }).incompatibleFeatures,
    0n,
  );
});

Deno.test("encodeExtensions round-trips bitmaps, encryption and unknown extensions", () => {
  const bytes = Deno.readFileSync(new URL("empty.qcow2", fixtures));
  const header = parseHeader(bytes);
  const extensions = {
    featureNames: [...QEMU_FEATURE_NAMES],
    bitmaps: { count: 2, directorySize: 80, directoryOffset: 0x50000 },
    encryption: { offset: 0x30000, length: 0x100000 },
    unknown: [{ type: 0x0badcafe, data: new Uint8Array([1, 2, 3]) }],
  };
  const encoded = encodeHeader({ ...header, cryptMethod: 2, extensions });
  assertEquals(parseHeader(encoded).extensions, { ...extensions });
  assertEquals(encodeExtensions({}), new Uint8Array(8));
});

Deno.test("encodeHeader refuses what no reader would open", () => {
  const bytes = Deno.readFileSync(new URL("v2_64k.qcow2", fixtures));
  const v2 = parseHeader(bytes);
  assertThrows(
    () => encodeHeader({ ...v2, compatibleFeatures: 1n }),
    RangeError,
  );
  assertThrows(() => encodeHeader({ ...v2, version: 4 as 3 }), RangeError);
  const v3 = parseHeader(Deno.readFileSync(new URL("v3_64k.qcow2", fixtures)));
  assertThrows(
    () => encodeHeader({ ...v3, compressionType: "zstd" }),
    RangeError,
  );
  assertThrows(
    () =>
      encodeHeader({ ...v3, extensions: { backingFormat: "x".repeat(16) } }),
    RangeError,
  );
  assertThrows(
    () =>
      encodeHeader({ ...v3, clusterBits: 9, backingFile: "b".repeat(1000) }),
    RangeError,
  );
});
