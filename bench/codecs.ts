/**
 * MB/s of the candidate codec libraries on real compressed clusters, and
 * the requirements each meets (see "Codecs" in bench/README.md).
 *
 * Usage:
 *   deno run -A bench/codecs.ts ZLIB.qcow2 ZSTD.qcow2 [--clusters N] [--rounds R]
 *
 * The images are issue 4's `ext4-zlib` and `ext4-zstd` inputs (made by
 * `bench/compare.ts --keep`). The first N compressed clusters of each
 * (default 1500, about 94 MiB) are taken as qemu-img wrote them, with the
 * bytes that follow each one in the file (as a reader gets them). Every
 * candidate decompresses them all, the output is checked against node:zlib,
 * and the rounds alternate in order between candidates; the figure is the median
 * round, in MB/s of uncompressed data (10^6 bytes per second). Compressors
 * are timed on the decompressed clusters, with `cluster_size - 1` as the
 * room, as QEMU gives.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import zlib from "node:zlib";
// The candidates that were not chosen are bench-only: pinned here.
// deno-lint-ignore no-import-prefix
import * as fflate from "npm:fflate@0.8.3";
// deno-lint-ignore no-import-prefix
import * as fzstd from "npm:fzstd@0.1.1";
// deno-lint-ignore no-import-prefix
import * as bokuweb from "npm:@bokuweb/zstd-wasm@0.0.27";
import { ZSTDDecoder } from "zstddec";
import { Zstd } from "@hpcc-js/wasm-zstd";
import { nodeCodecs, openImage } from "../mod.ts";
import type { Decompressor } from "../src/codecs/codecs.ts";
import { deflateRaw12, inflateRaw } from "../src/codecs/deflate.ts";
import { zstdCompress, zstdDecompress } from "../src/codecs/zstd.ts";
import { zstdFrameLength } from "../src/codecs/zstd_frame.ts";

const flags = parseArgs(Deno.args, {
  string: ["clusters", "rounds"],
  default: { clusters: "1500", rounds: "5" },
});
const [zlibImage, zstdImage] = flags._.map(String);
if (!zlibImage || !zstdImage) {
  console.error(
    "Usage: deno run -A bench/codecs.ts ZLIB.qcow2 ZSTD.qcow2 [--clusters N] [--rounds R]",
  );
  Deno.exit(2);
}
const limit = Number(flags.clusters);
const rounds = Number(flags.rounds);

interface Sample {
  /** The compressed bytes, with what follows them in the file. */
  input: Uint8Array;
  /** The length of the compressed stream alone. */
  length: number;
  /** The cluster, as node:zlib decompresses it. */
  output: Uint8Array;
}

/** The first `limit` compressed clusters of `path`, as a reader sees them. */
async function samples(path: string): Promise<Sample[]> {
  const got: Sample[] = [];
  const record =
    (type: "zlib" | "zstd"): Decompressor => async (input, maxOutput) => {
      const output = (await nodeCodecs[type]!(input, maxOutput)).slice();
      got.push({ input: input.slice(), length: 0, output });
      return output;
    };
  const image = await openImage(path, {
    codecs: { zlib: record("zlib"), zstd: record("zstd") },
  });
  try {
    const cs = 65536;
    const buf = new Uint8Array(cs);
    for await (const e of image.extents()) {
      if (e.kind !== "compressed") continue;
      for (let at = e.start; at < e.start + e.length; at += cs) {
        await image.read(at, buf);
        if (got.length >= limit) return got;
      }
    }
  } finally {
    image.close();
  }
  return got;
}

const zlibSamples = await samples(zlibImage);
const zstdSamples = await samples(zstdImage);
const cs = zlibSamples[0].output.length;
for (const s of zlibSamples) s.length = s.input.length;
for (const s of zstdSamples) s.length = zstdFrameLength(s.input);

const mb = (n: number) => n / 1e6;
const bytesOf = (list: Sample[]) =>
  list.reduce((n, s) => n + s.output.length, 0);

type Run = (list: Sample[]) => Promise<void> | void;
interface Candidate {
  name: string;
  group: string;
  run: Run;
  /** What it misses, if anything. */
  note?: string;
}

const equal = (a: Uint8Array, b: Uint8Array) => {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i += 997) if (a[i] !== b[i]) return false;
  return a[a.length - 1] === b[b.length - 1];
};
const checked = (name: string, s: Sample, out: Uint8Array) => {
  if (!equal(out, s.output)) throw new Error(`${name}: wrong output`);
};

const zstddec = new ZSTDDecoder();
await zstddec.init();
const hpcc = await Zstd.load();
await bokuweb.init();

const candidates: Candidate[] = [
  // Raw deflate, decompression.
  {
    name: "node:zlib (nodeCodecs, native: reference)",
    group: "inflate",
    run: async (list) => {
      for (const s of list) {
        checked("node:zlib", s, await nodeCodecs.zlib!(s.input, cs));
      }
    },
  },
  {
    name: "pako 3.0.3 (chosen)",
    group: "inflate",
    run: (list) => {
      for (const s of list) checked("pako", s, inflateRaw(s.input, cs));
    },
  },
  {
    name: "fflate 0.8.3",
    group: "inflate",
    note:
      "writes past its output only by dropping bytes (no error), so an overlong cluster is seen only by its length",
    run: (list) => {
      const out = new Uint8Array(cs + 1);
      for (const s of list) {
        checked("fflate", s, fflate.inflateSync(s.input, { out }));
      }
    },
  },
  // zstd, decompression.
  {
    name: "node:zlib (nodeCodecs, native: reference)",
    group: "zstd decompress",
    run: async (list) => {
      for (const s of list) {
        checked("node:zlib", s, await nodeCodecs.zstd!(s.input, cs));
      }
    },
  },
  {
    name: "zstddec 0.3.4 (reference zstd, WebAssembly; chosen)",
    group: "zstd decompress",
    run: async (list) => {
      for (const s of list) {
        checked("zstddec", s, await zstdDecompress(s.input, cs));
      }
    },
  },
  {
    name: "zstddec 0.3.4 called directly",
    group: "zstd decompress",
    run: (list) => {
      for (const s of list) {
        checked(
          "zstddec",
          s,
          zstddec.decode(s.input.subarray(0, s.length), cs),
        );
      }
    },
  },
  {
    name: "fzstd 0.1.1 (pure JS)",
    group: "zstd decompress",
    note:
      "fails on bytes after the frame (cut first); writes no more than given",
    run: (list) => {
      for (const s of list) {
        checked("fzstd", s, fzstd.decompress(s.input.subarray(0, s.length)));
      }
    },
  },
  {
    name: "@hpcc-js/wasm-zstd 1.12.5",
    group: "zstd decompress",
    note: "needs the frame's content size; fails on bytes after the frame",
    run: (list) => {
      for (const s of list) {
        checked("hpcc", s, hpcc.decompress(s.input.subarray(0, s.length)));
      }
    },
  },
  {
    name: "@bokuweb/zstd-wasm 0.0.27",
    group: "zstd decompress",
    note: "loads its .wasm by URL (a second file to serve in a page)",
    run: (list) => {
      for (const s of list) {
        checked(
          "bokuweb",
          s,
          bokuweb.decompress(s.input.subarray(0, s.length)),
        );
      }
    },
  },
  // Raw deflate, 12-bit window, compression.
  {
    name: "node:zlib deflateRawSync windowBits 12 (native, reference)",
    group: "deflate, 12-bit window",
    run: (list) => {
      for (const s of list) {
        zlib.deflateRawSync(s.output, { windowBits: 12, memLevel: 9 });
      }
    },
  },
  {
    name: "pako 3.0.3 (chosen)",
    group: "deflate, 12-bit window",
    run: (list) => {
      for (const s of list) deflateRaw12(s.output, cs - 1);
    },
  },
  {
    name: "fflate 0.8.3 (32 KiB window: cannot serve)",
    group: "deflate, 12-bit window",
    note: "has no window size option",
    run: (list) => {
      for (const s of list) fflate.deflateSync(s.output, { level: 6 });
    },
  },
  // zstd, compression.
  {
    name: "node:zlib zstdCompressSync (native, reference)",
    group: "zstd compress",
    run: (list) => {
      for (const s of list) zlib.zstdCompressSync(s.output);
    },
  },
  {
    name: "@hpcc-js/wasm-zstd 1.12.5 (chosen)",
    group: "zstd compress",
    run: async (list) => {
      for (const s of list) await zstdCompress(s.output, cs - 1);
    },
  },
  {
    name: "@bokuweb/zstd-wasm 0.0.27",
    group: "zstd compress",
    note: "loads its .wasm by URL",
    run: (list) => {
      for (const s of list) bokuweb.compress(s.output, 3);
    },
  },
];

console.log(`date: ${new Date().toISOString()}`);
console.log(`deno: ${Deno.version.deno}, v8 ${Deno.version.v8}`);
console.log(`load: ${Deno.loadavg().map((l) => l.toFixed(2)).join(" ")}`);
console.log(
  `zlib clusters: ${zlibSamples.length} (${
    mb(bytesOf(zlibSamples)).toFixed(0)
  } MB out, ${
    mb(zlibSamples.reduce((n, s) => n + s.length, 0)).toFixed(0)
  } MB in with trailing bytes); zstd clusters: ${zstdSamples.length}`,
);

const times = new Map<Candidate, number[]>(candidates.map((c) => [c, []]));
for (let r = 0; r < rounds; r++) {
  const order = r % 2 ? [...candidates].reverse() : candidates;
  for (const c of order) {
    const list = c.group.startsWith("zstd") ? zstdSamples : zlibSamples;
    const t0 = performance.now();
    await c.run(list);
    times.get(c)!.push((performance.now() - t0) / 1000);
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[s.length >> 1];
};
console.log("\n| group | library | MB/s (median) | range | note |");
console.log("|---|---|---|---|---|");
for (const c of candidates) {
  const list = c.group.startsWith("zstd") ? zstdSamples : zlibSamples;
  const bytes = bytesOf(list);
  const ts = times.get(c)!;
  const rate = (t: number) => (mb(bytes) / t).toFixed(0);
  console.log(
    `| ${c.group} | ${c.name} | ${rate(median(ts))} | ${
      rate(Math.max(...ts))
    }–${rate(Math.min(...ts))} | ${c.note ?? ""} |`,
  );
}
