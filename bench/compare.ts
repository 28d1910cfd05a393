/**
 * Whole-process comparison of `cli.ts convert` with `qemu-img convert -O raw`
 * on a generated image of realistic mixed content.
 *
 * ```sh
 * deno run -A bench/compare.ts [--size-gib N] [--runs N] [--dir DIR] [--keep]
 * ```
 *
 * It writes a raw disk (default 1 GiB) with a deterministic generator, turns
 * it into a plain qcow2 and a zlib-compressed qcow2 with `qemu-img convert`,
 * marks some zero runs as qcow2 zero clusters with `qemu-io`, then for each
 * input alternates our converter and qemu-img (one warm-up each, then
 * `--runs` pairs), timing each child process and taking its peak RSS from
 * `/usr/bin/time`. The warm-up outputs are checked byte for byte against
 * the generated raw disk (SHA-256), and their allocated blocks reported.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { parseArgs } from "@std/cli/parse-args";
import { type ExtentKind, openImage } from "../mod.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;
const CLUSTER = 64 * KiB;

const flags = parseArgs(Deno.args, {
  string: ["size-gib", "runs", "dir"],
  boolean: ["keep", "help"],
  alias: { h: "help" },
  default: { "size-gib": "1", runs: "5" },
});
if (flags.help) {
  console.log(
    "Usage: deno run -A bench/compare.ts [--size-gib N] [--runs N] [--dir DIR] [--keep]",
  );
  Deno.exit(0);
}
const sizeGiB = Number(flags["size-gib"]);
const runs = Number(flags.runs);
if (!(sizeGiB > 0) || !Number.isInteger(runs) || runs < 1) {
  console.error("--size-gib must be > 0 and --runs an integer >= 1");
  Deno.exit(2);
}
const size = Math.round(sizeGiB * GiB / CLUSTER) * CLUSTER;
const cliPath = new URL("../cli.ts", import.meta.url).pathname;
const repoRoot = new URL("..", import.meta.url).pathname;
const timeBin = await exists("/usr/bin/time") ? "/usr/bin/time" : undefined;

// ------------------------------------------------------------ environment

console.log(`date:     ${new Date().toISOString()}`);
console.log(`deno:     ${await firstLine(Deno.execPath(), ["--version"])}`);
console.log(`qemu-img: ${await firstLine("qemu-img", ["--version"])}`);
console.log(
  `cpu:      ${await cpuModel()}, ${navigator.hardwareConcurrency} cores`,
);
console.log(
  `image:    ${
    formatMiB(size)
  } MiB virtual, 64 KiB clusters; ${runs} pairs per input after 1 warm-up pair; peak RSS ${
    timeBin ? "from /usr/bin/time -f %M" : "not measured (no /usr/bin/time)"
  }`,
);

/** The temporary directory; made at the end of this file, once every class and constant is initialized. */
let dir = "";

async function main(): Promise<void> {
  // ----------------------------------------------------------- the input
  const raw = `${dir}/source.raw`;
  let began = performance.now();
  const { digest: sourceDigest, zeroRuns, share } = await generateRaw(
    raw,
    size,
  );
  console.log(
    `generated ${raw} in ${secs(began)} s: ${
      Object.entries(share).map(([k, v]) =>
        `${k} ${(v / size * 100).toFixed(1)}%`
      )
        .join(", ")
    }`,
  );

  const inputs = [
    { name: "plain", path: `${dir}/plain.qcow2`, args: [] as string[] },
    { name: "zlib", path: `${dir}/zlib.qcow2`, args: ["-c"] },
  ];
  for (const input of inputs) {
    began = performance.now();
    await run("qemu-img", [
      "convert",
      "-f",
      "raw",
      "-O",
      "qcow2",
      ...input.args,
      raw,
      input.path,
    ]);
    await markZeroClusters(input.path, zeroRuns);
    const mix = await composition(input.path);
    const fileSize = (await Deno.stat(input.path)).size;
    console.log(
      `made ${input.name}.qcow2 in ${secs(began)} s: ${
        formatMiB(fileSize)
      } MiB file; ${
        Object.entries(mix).map(([k, v]) => `${k} ${formatMiB(v)} MiB`).join(
          ", ",
        )
      }`,
    );
  }
  if (!flags.keep) await Deno.remove(raw);

  // ---------------------------------------------------------- the runs
  const rows: string[][] = [];
  for (const input of inputs) {
    const ours = `${dir}/out-ours.raw`;
    const theirs = `${dir}/out-qemu.raw`;
    const oursCmd = [
      Deno.execPath(),
      "run",
      `--allow-read=${input.path}`,
      `--allow-write=${ours}`,
      cliPath,
      "convert",
      input.path,
      ours,
    ];
    const qemuCmd = [
      "qemu-img",
      "convert",
      "-f",
      "qcow2",
      "-O",
      "raw",
      input.path,
      theirs,
    ];

    // Warm-up pair; its outputs are the ones verified.
    await timed(oursCmd, ours);
    await timed(qemuCmd, theirs);
    const [dOurs, dQemu] = [await sha256File(ours), await sha256File(theirs)];
    const identical = dOurs === dQemu && dOurs === sourceDigest;
    const allocOurs = await allocated(ours);
    const allocQemu = await allocated(theirs);
    const lenOk = (await Deno.stat(ours)).size === size &&
      (await Deno.stat(theirs)).size === size;
    if (!identical || !lenOk) {
      console.log(
        `${input.name}: OUTPUTS DIFFER: ours ${dOurs}, qemu-img ${dQemu}, source ${sourceDigest}`,
      );
    }

    const tOurs: number[] = [];
    const tQemu: number[] = [];
    const rssOurs: number[] = [];
    const rssQemu: number[] = [];
    for (let i = 0; i < runs; i++) {
      const a = await timed(oursCmd, ours);
      const b = await timed(qemuCmd, theirs);
      tOurs.push(a.seconds);
      tQemu.push(b.seconds);
      if (a.rssKiB !== undefined) rssOurs.push(a.rssKiB);
      if (b.rssKiB !== undefined) rssQemu.push(b.rssKiB);
    }
    await Deno.remove(ours).catch(() => {});
    await Deno.remove(theirs).catch(() => {});
    const ratios = tOurs.map((t, i) => t / tQemu[i]);
    console.log(
      `${input.name}: ours     ${tOurs.map((t) => t.toFixed(2)).join(" ")} s`,
    );
    console.log(
      `${input.name}: qemu-img ${tQemu.map((t) => t.toFixed(2)).join(" ")} s`,
    );
    const rss = (xs: number[]) =>
      xs.length ? (Math.max(...xs) / KiB).toFixed(0) : "n/a";
    rows.push([
      `${input.name}.qcow2`,
      median(tOurs).toFixed(2),
      median(tQemu).toFixed(2),
      median(ratios).toFixed(2),
      `${rss(rssOurs)} / ${rss(rssQemu)}`,
      `${formatMiB(allocOurs)} / ${formatMiB(allocQemu)}`,
      identical && lenOk ? "yes" : "NO",
    ]);
  }

  console.log();
  printTable([
    "input",
    "ours s (median)",
    "qemu-img s (median)",
    "ours/qemu (median of pairs)",
    "peak RSS MiB ours / qemu",
    "allocated MiB ours / qemu",
    "identical",
  ], rows);
}

// ---------------------------------------------------------- generation

/** A small deterministic generator for layout decisions (xorshift32). */
class Rng {
  #s: number;
  constructor(seed: number) {
    this.#s = seed >>> 0 || 1;
  }
  next(): number {
    let s = this.#s;
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    this.#s = s >>> 0;
    return this.#s;
  }
  /** Uniform in [0, 1). */
  float(): number {
    return this.next() / 2 ** 32;
  }
}

type SegmentKind = "random" | "text" | "mixed" | "zero" | "hole";
/** Share of segments of each kind; lengths do not depend on kind. */
const WEIGHTS: [SegmentKind, number][] = [
  ["random", 0.58], // compressed media, binaries, encrypted data
  ["text", 0.14], // logs, source, configuration: compressible
  ["mixed", 0.06], // 4 KiB blocks, half random and half zero
  ["zero", 0.08], // zeros written out (allocated in the raw file)
  ["hole", 0.14], // never written (a hole in the raw file)
];

/** 4 MiB of text-like bytes that segments of kind "text" copy from. */
function textPool(): Uint8Array {
  const rng = new Rng(12345);
  const syllables = [
    "ka",
    "ne",
    "ri",
    "to",
    "su",
    "ma",
    "lo",
    "de",
    "vi",
    "an",
    "or",
    "el",
    "qu",
    "ix",
    "em",
    "ba",
    "ru",
    "ti",
    "so",
    "ge",
    "pa",
    "zu",
    "li",
    "mo",
  ];
  const vocabulary: string[] = [];
  for (let i = 0; i < 2000; i++) {
    let w = "";
    const n = 1 + (rng.next() % 4);
    for (let j = 0; j < n; j++) w += syllables[rng.next() % syllables.length];
    vocabulary.push(w);
  }
  const enc = new TextEncoder();
  const out = new Uint8Array(4 * MiB);
  let p = 0;
  let line = 0;
  while (p < out.length) {
    let s = `${String(line++).padStart(7, "0")} [${
      ["INFO", "WARN", "DEBUG", "ERROR"][rng.next() % 4]
    }] `;
    const words = 4 + (rng.next() % 12);
    for (let i = 0; i < words; i++) {
      // Zipf-like: low indexes are much more common.
      const r = rng.float();
      s += vocabulary[Math.floor(r * r * r * vocabulary.length)] + " ";
      if (rng.next() % 9 === 0) s += `${rng.next() % 65536} `;
    }
    const bytes = enc.encode(s + "\n");
    out.set(bytes.subarray(0, out.length - p), p);
    p += bytes.length;
  }
  return out;
}

/**
 * Writes the raw disk of `total` bytes: segments of 4 KiB to 4 MiB
 * (log-uniform) of each kind in turn. Returns its SHA-256, the zero
 * segments (for zero clusters later), and bytes per kind.
 */
async function generateRaw(path: string, total: number) {
  const rng = new Rng(0x5eed);
  const pool = textPool();
  const hash = createHash("sha256");
  const maxSegment = 4 * MiB;
  const buffer = new Uint8Array(maxSegment);
  const words = new Uint32Array(buffer.buffer);
  const zeros = new Uint8Array(maxSegment);
  let s = 0x9e3779b9; // state of the data generator (xorshift32)
  const fillRandom = (from: number, to: number) => {
    // Whole 32-bit words: from and to are multiples of 4 KiB.
    for (let i = from >>> 2, end = to >>> 2; i < end; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      words[i] = s;
    }
  };
  const share: Record<SegmentKind, number> = {
    random: 0,
    text: 0,
    mixed: 0,
    zero: 0,
    hole: 0,
  };
  const zeroRuns: [number, number][] = [];
  using file = await Deno.open(path, {
    write: true,
    create: true,
    truncate: true,
  });
  let pos = 0;
  while (pos < total) {
    const blocks = Math.floor(
      Math.exp(rng.float() * Math.log(maxSegment / (4 * KiB))),
    );
    const length = Math.min(total - pos, blocks * 4 * KiB);
    let r = rng.float();
    let kind: SegmentKind = "random";
    for (const [k, w] of WEIGHTS) {
      if ((r -= w) < 0) {
        kind = k;
        break;
      }
    }
    share[kind] += length;
    const data = buffer.subarray(0, length);
    if (kind === "hole" || kind === "zero") {
      hash.update(zeros.subarray(0, length));
      if (kind === "zero") {
        zeroRuns.push([pos, length]);
        await file.seek(pos, Deno.SeekMode.Start);
        await writeAll(file, zeros.subarray(0, length));
      }
    } else {
      if (kind === "random") fillRandom(0, length);
      else if (kind === "text") {
        let from = rng.next() % (pool.length - length + 1);
        from -= from % 4096;
        data.set(pool.subarray(from, from + length));
        // Stamp each 4 KiB block so no two blocks are equal.
        for (let b = 0; b < length; b += 4096) {
          data.set(new TextEncoder().encode(`@${pos + b}@`), b);
        }
      } else {
        for (let b = 0; b < length; b += 4096) {
          if (rng.next() & 1) fillRandom(b, b + 4096);
          else data.fill(0, b, b + 4096);
        }
      }
      hash.update(data);
      await file.seek(pos, Deno.SeekMode.Start);
      await writeAll(file, data);
    }
    pos += length;
  }
  await file.truncate(total);
  return { digest: hash.digest("hex"), zeroRuns, share };
}

/**
 * Turns the cluster-aligned interior of each zero segment into qcow2 zero
 * clusters with qemu-io: alternately plain (`write -z` on an unallocated
 * range) and allocated (data written first, then `write -z` without unmap).
 * The guest content stays zeros.
 */
async function markZeroClusters(
  path: string,
  zeroRuns: [number, number][],
): Promise<void> {
  const commands: string[] = [];
  zeroRuns.forEach(([start, length], i) => {
    const from = Math.ceil(start / CLUSTER) * CLUSTER;
    const to = Math.floor((start + length) / CLUSTER) * CLUSTER;
    if (to <= from) return;
    if (i % 2 === 1) {
      commands.push("-c", `write -q -P 0x55 ${from} ${to - from}`);
    }
    commands.push("-c", `write -q -z ${from} ${to - from}`);
  });
  // qemu-io takes many -c; split to stay far below any argument limit.
  for (let i = 0; i < commands.length; i += 400) {
    await run("qemu-io", ["-f", "qcow2", ...commands.slice(i, i + 400), path]);
  }
}

/** Bytes of each extent kind, as this library sees the image. */
async function composition(
  path: string,
): Promise<Partial<Record<ExtentKind, number>>> {
  const image = await openImage(path);
  const out: Partial<Record<ExtentKind, number>> = {};
  try {
    for await (const e of image.extents()) {
      out[e.kind] = (out[e.kind] ?? 0) + e.length;
    }
  } finally {
    image.close();
  }
  return out;
}

// ------------------------------------------------------------- running

/** Runs `cmd` (after removing `dst` and syncing), timing the child process. */
async function timed(
  cmd: string[],
  dst: string,
): Promise<{ seconds: number; rssKiB?: number }> {
  await Deno.remove(dst).catch(() => {});
  // Outside the timed part: no earlier run's dirty pages flush during this one.
  await run("sync", []);
  const rssFile = `${dir}/rss.txt`;
  const [program, ...args] = timeBin
    ? [timeBin, "-f", "%M", "-o", rssFile, ...cmd]
    : cmd;
  const child = new Deno.Command(program, {
    args,
    cwd: repoRoot,
    stdin: "null",
    stdout: "null",
    stderr: "piped",
  });
  const began = performance.now();
  const out = await child.output();
  const seconds = (performance.now() - began) / 1000;
  if (!out.success) {
    throw new Error(
      `${cmd.join(" ")} failed (${out.code}):\n${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
  let rssKiB: number | undefined;
  if (timeBin) {
    const text = await Deno.readTextFile(rssFile);
    rssKiB = Number(text.trim().split("\n").pop());
  }
  return { seconds, rssKiB };
}

/** Runs a command to completion, failing with its stderr. */
async function run(program: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(program, {
    args,
    stdin: "null",
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `${program} ${args.join(" ").slice(0, 200)} failed (${out.code}):\n${
        new TextDecoder().decode(out.stderr)
      }`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

async function firstLine(program: string, args: string[]): Promise<string> {
  try {
    return (await run(program, args)).split("\n")[0];
  } catch {
    return "(not available)";
  }
}

async function cpuModel(): Promise<string> {
  try {
    const info = await Deno.readTextFile("/proc/cpuinfo");
    return /^model name\s*:\s*(.*)$/m.exec(info)?.[1] ?? "unknown CPU";
  } catch {
    return "unknown CPU";
  }
}

// ------------------------------------------------------------- helpers

async function writeAll(file: Deno.FsFile, bytes: Uint8Array): Promise<void> {
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

async function sha256File(path: string): Promise<string> {
  const hash = createHash("sha256");
  using file = await Deno.open(path);
  const buffer = new Uint8Array(8 * MiB);
  for (;;) {
    let n = 0;
    while (n < buffer.length) {
      const got = await file.read(buffer.subarray(n));
      if (got === null) break;
      n += got;
    }
    if (n === 0) break;
    hash.update(buffer.subarray(0, n));
    if (n < buffer.length) break;
  }
  return hash.digest("hex");
}

/** Bytes the file system allocates for `path` (st_blocks * 512). */
async function allocated(path: string): Promise<number> {
  return ((await Deno.stat(path)).blocks ?? 0) * 512;
}

async function exists(path: string): Promise<boolean> {
  try {
    await Deno.stat(path);
    return true;
  } catch {
    return false;
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function secs(since: number): string {
  return ((performance.now() - since) / 1000).toFixed(1);
}

function formatMiB(bytes: number): string {
  return (bytes / MiB).toFixed(0);
}

function printTable(head: string[], rows: string[][]): void {
  const widths = head.map((h, i) =>
    Math.max(h.length, ...rows.map((r) => r[i].length))
  );
  const line = (cells: string[]) =>
    `| ${cells.map((c, i) => c.padEnd(widths[i])).join(" | ")} |`;
  console.log(line(head));
  console.log(`|${widths.map((w) => "-".repeat(w + 2)).join("|")}|`);
  for (const r of rows) console.log(line(r));
}

// --------------------------------------------------------------- start
// Last, so that the classes and constants above are initialized.

dir = await Deno.makeTempDir({
  dir: flags.dir ?? "/tmp",
  prefix: "qcow2-bench-",
});
console.log(`dir:      ${dir}${flags.keep ? " (kept)" : ""}\n`);
try {
  await main();
} finally {
  if (!flags.keep) await Deno.remove(dir, { recursive: true });
}
