/**
 * Mutates the committed fixtures and checks that every run on bad input ends
 * quickly, either succeeding or throwing a Qcow2Error, with memory bounded.
 * CI runs a fixed seed; `FUZZ_CASES=5000 deno test -A tests/fuzz_test.ts`
 * (and `FUZZ_SEED=n`) runs more on demand.
 */
import { assert } from "@std/assert";
import {
  bytesSource,
  convert,
  openImage,
  Qcow2Error,
  webCodecs,
} from "../mod.ts";
import { fixture } from "./_reference.ts";

const CASES = Number(Deno.env.get("FUZZ_CASES") ?? 300);
const SEED = Number(Deno.env.get("FUZZ_SEED") ?? 20261125);
/** Each case must end within this bound. */
const TIME_LIMIT_MS = 5000;
/** Peak RSS allowed for the whole run. */
const RSS_LIMIT = 1024 * 1024 * 1024;

const SOURCES = [
  "v2_64k.qcow2",
  "v3_64k.qcow2",
  "c512.qcow2",
  "c4k.qcow2",
  "zlib_4k.qcow2",
  "zstd.qcow2",
  "odd_size_zlib.qcow2",
  "refcount1.qcow2",
  "sample.qcow2",
  "sparse_4t.qcow2",
];

/** xorshift32: the same cases for the same seed. */
function random(seed: number) {
  let s = seed >>> 0 || 1;
  const next = () => {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    return s >>> 0;
  };
  return {
    int: (n: number) => next() % n,
    pick: <T>(xs: readonly T[]) => xs[next() % xs.length],
  };
}

const EDGES = [
  0n,
  1n,
  0x1ffn,
  0x200n,
  0xffffffffn,
  0x7fffffffn,
  1n << 53n,
  (1n << 63n) - 1n,
  (1n << 64n) - 1n,
];
const FIELDS: [number, 4 | 8][] = [
  [4, 4],
  [8, 8],
  [16, 4],
  [20, 4],
  [24, 8],
  [32, 4],
  [36, 4],
  [40, 8],
  [48, 8],
  [56, 4],
  [60, 4],
  [64, 8],
  [72, 8],
  [80, 8],
  [88, 8],
  [96, 4],
  [100, 4],
];

type Mutation = (b: Uint8Array, r: ReturnType<typeof random>) => string;

/** The L1 table and the L2 tables it names, as file offsets. */
function tables(
  b: Uint8Array,
): { l1: number; l1Size: number; l2: number[]; cs: number } {
  const v = new DataView(b.buffer, b.byteOffset, b.byteLength);
  const cs = 2 ** v.getUint32(20);
  const l1 = Number(v.getBigUint64(40));
  const l1Size = v.getUint32(36);
  const l2: number[] = [];
  for (let i = 0; i < Math.min(l1Size, 4096); i++) {
    const at = l1 + i * 8;
    if (at + 8 > b.length) break;
    const o = Number(v.getBigUint64(at) & 0x00fffffffffffe00n);
    if (o !== 0 && o + cs <= b.length) l2.push(o);
  }
  return { l1, l1Size, l2, cs };
}

const MUTATIONS: Mutation[] = [
  (b, r) => {
    // Name a backing file (the image itself, or another name for it).
    const name = new TextEncoder().encode(
      r.pick(["fuzz.qcow2", "./fuzz.qcow2", "x/../fuzz.qcow2", "other"]),
    );
    if (b.length < 512) return "too short for a backing name";
    const at = 512 - 64;
    b.set(name, at);
    const v = new DataView(b.buffer);
    v.setBigUint64(8, BigInt(at));
    v.setUint32(16, name.length);
    return `backing file ${new TextDecoder().decode(name)}`;
  },
  (b, r) => {
    const [at, size] = r.pick(FIELDS);
    const value = r.pick(EDGES);
    const v = new DataView(b.buffer);
    if (size === 4) v.setUint32(at, Number(value & 0xffffffffn));
    else v.setBigUint64(at, value & ((1n << 64n) - 1n));
    return `header field at ${at} = ${value}`;
  },
  (b, r) => {
    const n = 1 + r.int(16);
    const limit = Math.min(b.length, 4 * 65536);
    for (let i = 0; i < n; i++) b[r.int(limit)] ^= 1 << r.int(8);
    return `${n} bit flips in the first ${limit} bytes`;
  },
  (b, r) => {
    const t = tables(b);
    if (t.l2.length === 0) return "no L2 table";
    const l2 = r.pick(t.l2);
    const i = r.int(t.cs / 8);
    const bad = [
      BigInt(b.length) + 0x10000n,
      0x200n | (1n << 63n),
      BigInt(t.l1) | (1n << 63n),
      (1n << 62n) | BigInt(r.int(b.length)),
      (1n << 62n) | ((1n << 62n) - 1n),
      0x1n | BigInt(l2),
      r.pick(EDGES),
    ];
    const value = r.pick(bad) & ((1n << 64n) - 1n);
    new DataView(b.buffer).setBigUint64(l2 + i * 8, value);
    return `L2 entry ${i} of ${l2} = ${value}`;
  },
  (b, r) => {
    const t = tables(b);
    if (t.l1 + 8 > b.length) return "no L1";
    const i = r.int(Math.max(1, Math.min(t.l1Size, 64)));
    if (t.l1 + i * 8 + 8 > b.length) return "L1 past end";
    const value = r.pick([BigInt(b.length), 0x30200n, BigInt(t.l1), ...EDGES]) &
      ((1n << 64n) - 1n);
    new DataView(b.buffer).setBigUint64(t.l1 + i * 8, value);
    return `L1 entry ${i} = ${value}`;
  },
  (b, r) => {
    // Garbage over data or compressed clusters near the end of the file.
    const from = Math.max(0, b.length - r.int(65536) - 512);
    const n = Math.min(b.length - from, 1 + r.int(4096));
    for (let i = 0; i < n; i++) b[from + i] = r.int(256);
    return `${n} random bytes at ${from}`;
  },
];

Deno.test(`fuzz: ${CASES} mutated fixtures end quickly in success or Qcow2Error`, async () => {
  const r = random(SEED);
  const originals = await Promise.all(
    SOURCES.map((n) => Deno.readFile(fixture(n))),
  );
  let failures = 0;
  let peak = 0;
  const outcomes = { ok: 0, error: 0 };
  for (let c = 0; c < CASES; c++) {
    const k = r.int(SOURCES.length);
    let bytes = originals[k].slice();
    const what: string[] = [];
    for (let m = 1 + r.int(3); m > 0; m--) {
      what.push(r.pick(MUTATIONS)(bytes, r));
    }
    if (r.int(8) === 0) {
      const cut = r.int(bytes.length);
      bytes = bytes.subarray(0, cut);
      what.push(`truncated to ${cut}`);
    }
    const label = `case ${c} (${SOURCES[k]}: ${what.join("; ")})`;
    let timer: ReturnType<typeof setTimeout> | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`timed out: ${label}`)),
        TIME_LIMIT_MS,
      );
    });
    const run = async () => {
      // Every file the image names is the image itself: chains loop.
      const image = await openImage(bytes, {
        codecs: c % 2 ? webCodecs : undefined,
        path: "fuzz.qcow2",
        openFile: () => Promise.resolve(bytesSource(bytes)),
      });
      // Read a bounded amount: the whole disk when small, else its extents and
      // a few spots.
      if (image.size <= 64 * 1024 * 1024) {
        await convert(image, new WritableStream({ write() {} }));
      } else {
        let n = 0;
        for await (const _ of image.extents()) if (++n > 100000) break;
        for (
          const at of [
            0,
            image.size - 512,
            Math.floor(image.size / 3 / 512) * 512,
          ]
        ) {
          await image.read(at, new Uint8Array(512));
        }
      }
    };
    try {
      await Promise.race([run(), timeout]);
      outcomes.ok++;
    } catch (e) {
      if (e instanceof Qcow2Error) outcomes.error++;
      else {
        failures++;
        console.error(
          `${label}: ${e instanceof Error ? `${e.name}: ${e.message}` : e}`,
        );
      }
    } finally {
      clearTimeout(timer);
    }
    peak = Math.max(peak, Deno.memoryUsage().rss);
  }
  console.log(
    `fuzz: seed ${SEED}, ${CASES} cases: ${outcomes.ok} read fine, ${outcomes.error} Qcow2Error`,
  );
  assert(failures === 0, `${failures} cases ended otherwise (see above)`);
  assert(peak < RSS_LIMIT, `peak RSS ${peak}`);
  assert(outcomes.error > CASES / 10, "the mutations should break many images");
});
