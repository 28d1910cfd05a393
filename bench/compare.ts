/**
 * Whole-process comparison of `cli.ts convert` with `qemu-img convert -O raw`
 * on the inputs of issue 4, generated here:
 *
 * | input | how it is made |
 * |---|---|
 * | `ext4` | a 3 GiB ext4 file system (`mkfs.ext4 -d`) holding about 0.8 GiB of files copied from `/usr`, as an uncompressed qcow2 |
 * | `ext4-zlib` | the same, `qemu-img convert -c` |
 * | `ext4-zstd` | the same, `-c -o compression_type=zstd` |
 * | `random` | 1 GiB of pseudo-random data, uncompressed |
 * | `sparse-1t` | 1 TiB virtual, 64 MiB written in 1 MiB pieces 16 GiB apart (`qemu-io`) |
 *
 * ```sh
 * deno run -A bench/compare.ts [--runs N] [--only NAME,...] [--dir DIR] [--keep]
 * deno run -A bench/compare.ts --reuse DIR [--runs N] [--only NAME,...]
 * ```
 *
 * `--keep` keeps the inputs (and the raw files they were made from) in a
 * new directory under `--dir`; `--reuse DIR` times those again without
 * making them anew (it writes nothing into DIR unless an input is missing
 * there: the outputs go to a temporary directory of their own).
 *
 * For each input it alternates our converter and qemu-img (one warm-up
 * pair, then `--runs` pairs), removing the output and running `sync` before
 * each run, outside the timed part; it times each child process and takes
 * its peak RSS from `/usr/bin/time`. The warm-up outputs are checked byte for
 * byte (SHA-256) against each other and against the source, and their
 * allocated blocks compared. It prints a Markdown table of medians, the
 * median of the per-pair ratios ours/qemu-img, and peak RSS.
 *
 * @module
 */

import { createHash } from "node:crypto";
import { parseArgs } from "@std/cli/parse-args";
import { makeExt4 } from "./_ext4.ts";

const KiB = 1024;
const MiB = 1024 * KiB;
const GiB = 1024 * MiB;

const flags = parseArgs(Deno.args, {
  string: ["runs", "dir", "only", "reuse"],
  boolean: ["keep", "help"],
  alias: { h: "help" },
  default: { runs: "5" },
});
if (flags.help) {
  console.log(
    "Usage: deno run -A bench/compare.ts [--runs N] [--only ext4,ext4-zlib,ext4-zstd,random,sparse-1t] [--dir DIR] [--keep | --reuse DIR]",
  );
  Deno.exit(0);
}
const runs = Number(flags.runs);
if (!Number.isInteger(runs) || runs < 1) {
  console.error("--runs must be an integer >= 1");
  Deno.exit(2);
}
const only = flags.only?.split(",");
/** Whether the inputs outlive the run. */
const keep = flags.keep || flags.reuse !== undefined;
/** Whether `path` is an input of an earlier `--keep` run to time again. */
const reusing = (path: string): boolean => {
  if (flags.reuse === undefined) return false;
  try {
    Deno.statSync(path);
    return true;
  } catch {
    return false;
  }
};
const cliPath = new URL("../cli.ts", import.meta.url).pathname;
const repoRoot = new URL("..", import.meta.url).pathname;
const timeBin = await exists("/usr/bin/time") ? "/usr/bin/time" : undefined;

console.log(`date:     ${new Date().toISOString()}`);
console.log(`deno:     ${await firstLine(Deno.execPath(), ["--version"])}`);
console.log(`qemu-img: ${await firstLine("qemu-img", ["--version"])}`);
console.log(
  `cpu:      ${await cpuModel()}, ${navigator.hardwareConcurrency} cores`,
);
console.log(
  `runs:     ${runs} pairs per input after 1 warm-up pair; peak RSS ${
    timeBin ? "from /usr/bin/time -f %M" : "not measured (no /usr/bin/time)"
  }`,
);

/** The temporary directory; made at the end of this file. */
let dir = "";
/**
 * Where the outputs and time(1)'s report go: never `dir`, which with
 * `--reuse` may be a shared, read-only folder of inputs.
 */
let outDir = "";

/** One input: its qcow2 file and the SHA-256 its raw form must have. */
interface Input {
  name: string;
  path: string;
  /** SHA-256 of the raw form, or "" for the 1 TiB image (checked by parts). */
  digest: string;
  virtualSize: number;
}

/** The 1 TiB input's writes: 1 MiB of byte `i + 1` at `i` * 16 GiB. */
const SPARSE_WRITES = 64;

async function main(): Promise<void> {
  const inputs: Input[] = [];
  const want = (name: string) => !only || only.includes(name);

  if (want("ext4") || want("ext4-zlib") || want("ext4-zstd")) {
    const raw = `${dir}/ext4.raw`;
    let began = performance.now();
    if (!reusing(raw)) {
      const copied = await makeExt4(dir, raw, 3 * GiB, 800 * MiB);
      console.log(
        `made ext4.raw in ${secs(began)} s: ${copied.files} files, ${
          formatMiB(copied.bytes)
        } MiB of file data, ${formatMiB(await allocated(raw))} MiB allocated`,
      );
    }
    const digest = await sha256File(raw);
    for (
      const [name, args] of [
        ["ext4", []],
        ["ext4-zlib", ["-c"]],
        ["ext4-zstd", ["-c", "-o", "compression_type=zstd"]],
      ] as [string, string[]][]
    ) {
      if (!want(name)) continue;
      began = performance.now();
      const path = `${dir}/${name}.qcow2`;
      if (reusing(path)) {
        inputs.push({ name, path, digest, virtualSize: 3 * GiB });
        continue;
      }
      await run("qemu-img", [
        "convert",
        "-f",
        "raw",
        "-O",
        "qcow2",
        ...args,
        raw,
        path,
      ]);
      console.log(
        `made ${name}.qcow2 in ${secs(began)} s: ${
          formatMiB((await Deno.stat(path)).size)
        } MiB file`,
      );
      inputs.push({ name, path, digest, virtualSize: 3 * GiB });
    }
    if (!keep) await Deno.remove(raw);
  }

  if (want("random")) {
    const raw = `${dir}/random.raw`;
    const path = `${dir}/random.qcow2`;
    const began = performance.now();
    let digest: string;
    if (reusing(raw) && reusing(path)) digest = await sha256File(raw);
    else {
      digest = await makeRandom(raw, 1 * GiB);
      await run("qemu-img", ["convert", "-f", "raw", "-O", "qcow2", raw, path]);
      if (!keep) await Deno.remove(raw);
      console.log(`made random.qcow2 in ${secs(began)} s`);
    }
    inputs.push({ name: "random", path, digest, virtualSize: 1 * GiB });
  }

  if (want("sparse-1t")) {
    const path = `${dir}/sparse-1t.qcow2`;
    const began = performance.now();
    if (!reusing(path)) {
      await run("qemu-img", ["create", "-q", "-f", "qcow2", path, "1T"]);
      const commands: string[] = [];
      for (let i = 0; i < SPARSE_WRITES; i++) {
        commands.push("-c", `write -q -P ${i + 1} ${i * 16}G 1M`);
      }
      await run("qemu-io", ["-f", "qcow2", ...commands, path]);
      console.log(`made sparse-1t.qcow2 in ${secs(began)} s`);
    }
    // Hashing 1 TiB of holes would take hours: its raw form is checked by
    // its written parts and its allocated size instead.
    inputs.push({
      name: "sparse-1t",
      path,
      digest: "",
      virtualSize: 1024 * GiB,
    });
  }

  const rows: string[][] = [];
  for (const input of inputs) rows.push(await compare(input));
  console.log();
  printTable([
    "input",
    "ours s (median)",
    "qemu-img s (median)",
    "ours/qemu-img (median of pairs)",
    "peak RSS MiB ours / qemu-img",
    "allocated MiB ours / qemu-img",
    "identical",
  ], rows);
}

/** Times both tools on one input; returns its table row. */
async function compare(input: Input): Promise<string[]> {
  const ours = `${outDir}/out-ours.raw`;
  const theirs = `${outDir}/out-qemu.raw`;
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
  const [dOurs, dQemu] = input.digest === ""
    ? [await checkSparse(ours), await checkSparse(theirs)]
    : [await sha256File(ours), await sha256File(theirs)];
  const lengths = [
    (await Deno.stat(ours)).size,
    (await Deno.stat(theirs)).size,
  ];
  const identical = dOurs === dQemu &&
    dOurs === (input.digest || "written parts and holes as expected") &&
    lengths.every((n) => n === input.virtualSize);
  if (!identical) {
    console.log(
      `${input.name}: OUTPUTS DIFFER: ours ${dOurs}, qemu-img ${dQemu}, source ${input.digest}, lengths ${lengths}`,
    );
  }
  const allocOurs = await allocated(ours);
  const allocQemu = await allocated(theirs);

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
  return [
    input.name,
    median(tOurs).toFixed(2),
    median(tQemu).toFixed(2),
    median(ratios).toFixed(2),
    `${rss(rssOurs)} / ${rss(rssQemu)}`,
    `${formatMiB(allocOurs)} / ${formatMiB(allocQemu)}`,
    identical ? "yes" : "NO",
  ];
}

/**
 * Checks the raw form of the 1 TiB input without reading its holes: each
 * written MiB holds its byte, and nothing else is allocated.
 */
async function checkSparse(path: string): Promise<string> {
  using file = await Deno.open(path);
  const buffer = new Uint8Array(MiB);
  for (let i = 0; i < SPARSE_WRITES; i++) {
    await file.seek(i * 16 * GiB, Deno.SeekMode.Start);
    let n = 0;
    while (n < buffer.length) {
      const got = await file.read(buffer.subarray(n));
      if (got === null) break;
      n += got;
    }
    if (n !== MiB || buffer.some((b) => b !== i + 1)) {
      return `wrong bytes at ${i * 16} GiB`;
    }
  }
  const extra = await allocated(path) - SPARSE_WRITES * MiB;
  return extra > MiB
    ? `${formatMiB(extra)} MiB allocated beyond the writes`
    : "written parts and holes as expected";
}

// ---------------------------------------------------------- generation

/** Writes `size` bytes of xorshift output to `path`; returns the SHA-256. */
async function makeRandom(path: string, size: number): Promise<string> {
  const hash = createHash("sha256");
  const buffer = new Uint8Array(4 * MiB);
  const words = new Uint32Array(buffer.buffer);
  let s = 0x9e3779b9;
  using file = await Deno.open(path, {
    write: true,
    create: true,
    truncate: true,
  });
  for (let done = 0; done < size; done += buffer.length) {
    for (let i = 0; i < words.length; i++) {
      s ^= s << 13;
      s ^= s >>> 17;
      s ^= s << 5;
      words[i] = s;
    }
    hash.update(buffer);
    await writeAll(file, buffer);
  }
  return hash.digest("hex");
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
  const rssFile = `${outDir}/rss.txt`;
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

dir = flags.reuse ?? await Deno.makeTempDir({
  dir: flags.dir ?? "/tmp",
  prefix: "qcow2-bench-",
});
console.log(
  `dir:      ${dir}${flags.reuse ? " (reused)" : keep ? " (kept)" : ""}\n`,
);
outDir = await Deno.makeTempDir({ prefix: "qcow2-bench-out-" });
try {
  await main();
} finally {
  await Deno.remove(outDir, { recursive: true });
  if (!keep) await Deno.remove(dir, { recursive: true });
}
