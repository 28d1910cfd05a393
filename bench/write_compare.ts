/**
 * Writing into a fresh image, whole process, ours against `qemu-img bench
 * -w -t writeback --pattern=0xa5` (issue 13's two workloads: 16384
 * sequential writes of 64 KiB, and 16384 writes of 4 KiB at a 256 KiB
 * step, each allocating a cluster), 64 writes in flight, in paired runs
 * that alternate which tool goes first. Each run gets a fresh 4 GiB image
 * from `qemu-img create`; ours flushes and closes at the end (as qemu-img
 * bench flushes). Wall time and peak RSS come from /usr/bin/time.
 *
 * Usage: deno run -A bench/write_compare.ts [--pairs N] [--dir DIR]
 */
import { parseArgs } from "@std/cli/parse-args";

const args = parseArgs(Deno.args, { string: ["pairs", "dir"] });
const PAIRS = Number(args.pairs ?? 5);
const DIR = args.dir ?? await Deno.makeTempDir({ prefix: "write-bench-" });
const CHILD = new URL("./write_child.ts", import.meta.url).pathname;
const IMAGE = `${DIR}/bench.qcow2`;

const WORKLOADS = [
  { name: "sequential 64 KiB", count: 16384, size: 65536, step: 65536 },
  { name: "4 KiB at a 256 KiB step", count: 16384, size: 4096, step: 262144 },
];

async function timed(cmd: string, argv: string[]) {
  await new Deno.Command("qemu-img", {
    args: ["create", "-q", "-f", "qcow2", IMAGE, "4G"],
  }).output();
  await new Deno.Command("sync").output();
  const out = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "TIME %e %M", cmd, ...argv],
    stdout: "null",
    stderr: "piped",
  }).output();
  const text = new TextDecoder().decode(out.stderr);
  const m = text.match(/TIME ([\d.]+) (\d+)/);
  if (!out.success || !m) throw new Error(`${cmd} failed: ${text}`);
  const check = await new Deno.Command("qemu-img", { args: ["check", IMAGE] })
    .output();
  if (!check.success) throw new Error(`check failed after ${cmd}`);
  return { seconds: Number(m[1]), rssMiB: Number(m[2]) / 1024 };
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? s[s.length >> 1]
    : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};

for (const w of WORKLOADS) {
  const ratios: number[] = [];
  const ours: number[] = [];
  const theirs: number[] = [];
  let rssOurs = 0;
  let rssTheirs = 0;
  for (let p = 0; p < PAIRS; p++) {
    const runOurs = () =>
      timed(Deno.execPath(), [
        "run",
        "-A",
        CHILD,
        IMAGE,
        String(w.count),
        String(w.size),
        String(w.step),
        "64",
      ]);
    const runTheirs = () =>
      timed("qemu-img", [
        "bench",
        "-w",
        "-t",
        "writeback",
        "--pattern=0xa5",
        "-c",
        String(w.count),
        "-s",
        String(w.size),
        "-S",
        String(w.step),
        "-d",
        "64",
        IMAGE,
      ]);
    // Alternate which tool goes first.
    let a;
    let b;
    if (p % 2 === 0) {
      a = await runOurs();
      b = await runTheirs();
    } else {
      b = await runTheirs();
      a = await runOurs();
    }
    console.log(
      `  ${w.name}, pair ${p + 1} (${
        p % 2 === 0 ? "ours" : "qemu-img"
      } first): ` +
        `ours ${a.seconds.toFixed(2)} s, qemu-img ${b.seconds.toFixed(2)} s`,
    );
    ours.push(a.seconds);
    theirs.push(b.seconds);
    ratios.push(a.seconds / b.seconds);
    rssOurs = Math.max(rssOurs, a.rssMiB);
    rssTheirs = Math.max(rssTheirs, b.rssMiB);
  }
  const load = (await Deno.readTextFile("/proc/loadavg")).split(" ")[0];
  console.log(
    `${w.name}: ours/qemu-img median ${median(ratios).toFixed(2)} ` +
      `(${Math.min(...ratios).toFixed(2)}-${
        Math.max(...ratios).toFixed(2)
      }, ${PAIRS} pairs); ` +
      `ours ${median(ours).toFixed(2)} s, qemu-img ${
        median(theirs).toFixed(2)
      } s; ` +
      `peak RSS ${rssOurs.toFixed(0)} / ${
        rssTheirs.toFixed(0)
      } MiB; load ${load}`,
  );
}
await Deno.remove(IMAGE).catch(() => {});
if (!args.dir) await Deno.remove(DIR, { recursive: true });
