/**
 * `cli.ts convert -O qcow2` against `qemu-img convert -O qcow2`, paired, on
 * issue 4's 3 GiB ext4 image (made here, about 80 s; `--reuse DIR` times
 * the inputs of an earlier `--keep` run again):
 *
 * | case | ours | qemu-img |
 * |---|---|---|
 * | raw | `convert -O qcow2 ext4.raw` | the same |
 * | zlib | `convert -O qcow2 -c ext4.raw` | the same |
 * | zstd | `-c -o compression_type=zstd ext4.raw` | the same |
 * | repack | `-c -o compression_type=zstd ext4-zlib.qcow2` | the same |
 * | zlib-W | `-c ext4.raw` | `-W -c ext4.raw` (out-of-order writes) |
 *
 * ```sh
 * deno run -A bench/convert_qcow2_compare.ts [--runs N] [--only raw,zlib,...] [--dir DIR] [--keep | --reuse DIR]
 * ```
 *
 * Each case: one warm-up pair whose outputs are checked (`qemu-img check`,
 * `compare` with the source), then `--runs` pairs alternating ours and
 * qemu-img, `sync` and 300 ms of quiet before each run, outside the timed
 * part. It prints the
 * load average before and after, the medians, the median of the per-pair
 * ratios, the CPU time (user + system, all threads), peak RSS
 * (`/usr/bin/time`, threads included) and the output sizes. On a loaded
 * machine the CPU times compare better than the wall times. Ours runs with `--allow-ffi` so a raw file's holes are found as
 * qemu-img finds them (SEEK_DATA).
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { makeExt4 } from "./_ext4.ts";

const GiB = 1024 ** 3;
const MiB = 1024 ** 2;

const flags = parseArgs(Deno.args, {
  string: ["runs", "dir", "only", "reuse"],
  boolean: ["keep", "help"],
  default: { runs: "3" },
});
if (flags.help) {
  console.log(
    "Usage: deno run -A bench/convert_qcow2_compare.ts [--runs N] [--only raw,zlib,zstd,repack,zlib-W] [--dir DIR] [--keep | --reuse DIR]",
  );
  Deno.exit(0);
}
const runs = Number(flags.runs);
/** Milliseconds of quiet after each `sync`, before a timed run. */
const SETTLE_MS = 300;
const only = flags.only?.split(",");
const cli = new URL("../cli.ts", import.meta.url).pathname;
// Inputs: made here in a temporary directory, or read from --reuse DIR
// (read-only: outputs always go to a temporary directory of their own).
const outDir = await Deno.makeTempDir({
  dir: flags.dir,
  prefix: "qcow2-bench-",
});
const dir = flags.reuse ?? outDir;

const load = async () =>
  (await Deno.readTextFile("/proc/loadavg")).split(" ").slice(0, 3).join(" ");
console.log(`date:     ${new Date().toISOString()}`);
console.log(`deno:     ${Deno.version.deno}`);
console.log(
  `qemu-img: ${(await run("qemu-img", ["--version"])).split("\n")[0]}`,
);
console.log(`cpu:      ${await cpu()}, ${navigator.hardwareConcurrency} cores`);
console.log(`load:     ${await load()} (1, 5, 15 min) before`);

const raw = `${dir}/ext4.raw`;
const zlibInput = `${dir}/ext4-zlib.qcow2`;
if (!(await exists(raw))) {
  const began = performance.now();
  const made = await makeExt4(dir, raw, 3 * GiB, 800 * MiB);
  console.log(
    `made ext4.raw in ${
      ((performance.now() - began) / 1000).toFixed(0)
    } s: ${made.files} files, ${(made.bytes / MiB).toFixed(0)} MiB`,
  );
}
if (!(await exists(zlibInput))) {
  await run("qemu-img", [
    "convert",
    "-f",
    "raw",
    "-O",
    "qcow2",
    "-c",
    raw,
    zlibInput,
  ]);
}

const ours = (args: string[], src: string, dst: string) => [
  Deno.execPath(),
  "run",
  "--allow-read",
  "--allow-write",
  "--allow-ffi",
  cli,
  "convert",
  "-O",
  "qcow2",
  ...args,
  src,
  dst,
];
const theirs = (args: string[], src: string, dst: string) => [
  "qemu-img",
  "convert",
  "-O",
  "qcow2",
  ...args,
  src,
  dst,
];

const CASES: { name: string; src: string; ours: string[]; theirs: string[] }[] =
  [
    { name: "raw", src: raw, ours: [], theirs: [] },
    { name: "zlib", src: raw, ours: ["-c"], theirs: ["-c"] },
    {
      name: "zstd",
      src: raw,
      ours: ["-c", "-o", "compression_type=zstd"],
      theirs: ["-c", "-o", "compression_type=zstd"],
    },
    {
      name: "repack",
      src: zlibInput,
      ours: ["-c", "-o", "compression_type=zstd"],
      theirs: ["-c", "-o", "compression_type=zstd"],
    },
    { name: "zlib-W", src: raw, ours: ["-c"], theirs: ["-W", "-c"] },
  ];

const rows: string[][] = [];
for (const c of CASES) {
  if (only && !only.includes(c.name)) continue;
  const a = `${outDir}/ours.qcow2`;
  const b = `${outDir}/theirs.qcow2`;
  // Warm-up pair, checked.
  await timed(ours(c.ours, c.src, a), a);
  await timed(theirs(c.theirs, c.src, b), b);
  await run("qemu-img", ["check", a]);
  const same = (await run("qemu-img", ["compare", c.src, a])).trim();
  if (same !== "Images are identical.") throw new Error(`${c.name}: ${same}`);
  const sizes = [(await Deno.stat(a)).size, (await Deno.stat(b)).size];
  const t: number[][] = [[], []];
  const cpu: number[][] = [[], []];
  const rss: number[][] = [[], []];
  const ratios: number[] = [];
  for (let i = 0; i < runs; i++) {
    const x = await timed(ours(c.ours, c.src, a), a);
    const y = await timed(theirs(c.theirs, c.src, b), b);
    t[0].push(x.seconds);
    t[1].push(y.seconds);
    rss[0].push(x.rssKiB);
    rss[1].push(y.rssKiB);
    cpu[0].push(x.cpu);
    cpu[1].push(y.cpu);
    ratios.push(x.seconds / y.seconds);
  }
  rows.push([
    c.name,
    median(t[0]).toFixed(2),
    median(t[1]).toFixed(2),
    `**${median(ratios).toFixed(2)}** (${Math.min(...ratios).toFixed(2)}–${
      Math.max(...ratios).toFixed(2)
    })`,
    `${median(cpu[0]).toFixed(1)} / ${median(cpu[1]).toFixed(1)}`,
    `${(Math.max(...rss[0]) / 1024).toFixed(0)} / ${
      (Math.max(...rss[1]) / 1024).toFixed(0)
    }`,
    `${(sizes[0] / MiB).toFixed(1)} / ${(sizes[1] / MiB).toFixed(1)} (${
      ((sizes[0] / sizes[1] - 1) * 100).toFixed(2)
    }%)`,
  ]);
  console.log(`${c.name}: done, load ${await load()}`);
}
console.log(`load:     ${await load()} after; ${runs} pairs per case`);
console.log(
  "\n| case | ours s | qemu-img s | ratio, median (range) | CPU s (user+sys) ours / qemu-img | peak RSS MiB ours / qemu-img | file MiB ours / qemu-img |",
);
console.log("|---|---|---|---|---|---|---|");
for (const r of rows) console.log(`| ${r.join(" | ")} |`);
if (flags.keep && flags.reuse === undefined) {
  for (const name of ["ours.qcow2", "theirs.qcow2", "rss.txt"]) {
    await Deno.remove(`${outDir}/${name}`).catch(() => {});
  }
  console.log(`inputs kept in ${dir}`);
} else await Deno.remove(outDir, { recursive: true });

/** Runs `cmd` after removing `dst` and a `sync`, timing it; peak RSS from /usr/bin/time. */
async function timed(cmd: string[], dst: string) {
  await Deno.remove(dst).catch(() => {});
  await run("sync", []);
  // The file system's own work after a delete and a sync (discards, the
  // journal) lands in the next run otherwise, whichever tool it is: runs of
  // 0.3 s took up to 2 s on this machine without this pause.
  await new Promise((resolve) => setTimeout(resolve, SETTLE_MS));
  const rssFile = `${outDir}/rss.txt`;
  const began = performance.now();
  const out = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "%M %U %S", "-o", rssFile, ...cmd],
    stdout: "null",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - began) / 1000;
  if (!out.success) {
    throw new Error(
      `${cmd.join(" ")}: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  const [rss, user, sys] = (await Deno.readTextFile(rssFile)).trim().split("\n")
    .pop()!.split(" ").map(Number);
  return { seconds, rssKiB: rss, cpu: user + sys };
}

async function run(program: string, args: string[]): Promise<string> {
  const out = await new Deno.Command(program, {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  if (!out.success) {
    throw new Error(
      `${program} ${args.join(" ")}: ${new TextDecoder().decode(out.stderr)}`,
    );
  }
  return new TextDecoder().decode(out.stdout);
}

async function exists(path: string): Promise<boolean> {
  return await Deno.stat(path).then(() => true, () => false);
}

async function cpu(): Promise<string> {
  const info = await Deno.readTextFile("/proc/cpuinfo").catch(() => "");
  return /^model name\s*:\s*(.*)$/m.exec(info)?.[1] ?? "unknown CPU";
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? s[(s.length - 1) / 2]
    : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}
