/**
 * Converting a 1 GiB LUKS image (aes-256-xts-plain64, sha256: qemu-img
 * 7.2's defaults) to raw: `cli.ts convert --password-file` against
 * `qemu-img convert --object secret --image-opts`, paired and alternating.
 *
 * The image is made here: 1 GiB of pseudo-random data (so every cluster is
 * allocated and decrypted) converted by qemu-img with
 * `encrypt.iter-time=10`, so that unlocking the key slot takes
 * milliseconds in both tools and the figure is about decryption.
 *
 * ```sh
 * deno run -A bench/luks_compare.ts [--runs N] [--dir DIR] [--keep | --reuse DIR]
 * ```
 *
 * Before each run the output is removed and `sync` run, outside the timed
 * part. The warm-up pair's outputs are compared byte for byte. It prints
 * the medians, the median of the per-pair ratios ours/qemu-img (and their
 * range), peak RSS, and the load average before and after.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";

const flags = parseArgs(Deno.args, {
  string: ["runs", "dir", "reuse"],
  boolean: ["keep", "help"],
  default: { runs: "5" },
});
if (flags.help) {
  console.log(
    "Usage: deno run -A bench/luks_compare.ts [--runs N] [--dir DIR] [--keep | --reuse DIR]",
  );
  Deno.exit(0);
}
const runs = Number(flags.runs);
const PASSWORD = "bench-password";
const CLI = new URL("../cli.ts", import.meta.url).pathname;

async function sh(cmd: string, args: string[]): Promise<void> {
  const { success, stderr } = await new Deno.Command(cmd, { args }).output();
  if (!success) {
    throw new Error(`${cmd} failed: ${new TextDecoder().decode(stderr)}`);
  }
}

/** Runs a command under /usr/bin/time; wall seconds and peak RSS in KiB. */
async function timed(
  cmd: string[],
): Promise<{ seconds: number; rssKiB: number; cpu: number }> {
  const began = performance.now();
  const { success, stderr } = await new Deno.Command("/usr/bin/time", {
    args: ["-f", "%M %U %S", ...cmd],
    stdout: "null",
    stderr: "piped",
  }).output();
  const seconds = (performance.now() - began) / 1000;
  const text = new TextDecoder().decode(stderr).trim().split("\n");
  if (!success) throw new Error(`${cmd.join(" ")}: ${text.join("\n")}`);
  const [rss, user, sys] = text.at(-1)!.split(" ").map(Number);
  return { seconds, rssKiB: rss, cpu: user + sys };
}

const dir = flags.reuse ??
  await Deno.makeTempDir({ dir: flags.dir, prefix: "luks-bench-" });
const image = `${dir}/luks.qcow2`;
const pw = `${dir}/password`;
try {
  await Deno.writeTextFile(pw, PASSWORD);
  if (!flags.reuse) {
    const raw = `${dir}/source.raw`;
    // 1 GiB of AES-CTR keystream: pseudo-random, made fast.
    await sh("sh", [
      "-c",
      `openssl enc -aes-128-ctr -pass pass:bench -nosalt -pbkdf2 < /dev/zero 2>/dev/null | head -c 1073741824 > ${raw}`,
    ]);
    for (let attempt = 1;; attempt++) {
      try {
        await sh("qemu-img", [
          "convert",
          "--object",
          `secret,id=s,file=${pw}`,
          "-O",
          "qcow2",
          "-o",
          "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10",
          raw,
          image,
        ]);
        break;
      } catch (e) {
        // qemu-img's PBKDF2 calibration fails now and then under load.
        if (attempt === 8) throw e;
      }
    }
    await Deno.remove(raw);
  }
  const out = `${dir}/out.raw`;
  const ours = [
    Deno.execPath(),
    "run",
    "-A",
    CLI,
    "convert",
    "--password-file",
    pw,
    image,
    out,
  ];
  const qemu = [
    "qemu-img",
    "convert",
    "--object",
    `secret,id=s,file=${pw}`,
    "--image-opts",
    `driver=qcow2,file.filename=${image},encrypt.key-secret=s`,
    "-O",
    "raw",
    out,
  ];
  const run = async (cmd: string[]) => {
    await Deno.remove(out).catch(() => {});
    await sh("sync", []);
    return await timed(cmd);
  };
  const loadBefore = (await Deno.readTextFile("/proc/loadavg")).split(" ")
    .slice(0, 3).join(" ");
  // Warm-up pair, outputs compared.
  await run(ours);
  const a = await Deno.readFile(out);
  await run(qemu);
  const b = await Deno.readFile(out);
  if (a.length !== b.length || !a.every((x, i) => x === b[i])) {
    throw new Error("our output differs from qemu-img's");
  }
  const pairs: {
    ours: number;
    qemu: number;
    oursRss: number;
    qemuRss: number;
    oursCpu: number;
    qemuCpu: number;
  }[] = [];
  for (let i = 0; i < runs; i++) {
    const o = await run(ours);
    const q = await run(qemu);
    pairs.push({
      ours: o.seconds,
      qemu: q.seconds,
      oursRss: o.rssKiB,
      qemuRss: q.rssKiB,
      oursCpu: o.cpu,
      qemuCpu: q.cpu,
    });
    console.error(
      `pair ${i + 1}: ours ${o.seconds.toFixed(2)} s, qemu-img ${
        q.seconds.toFixed(2)
      } s, ratio ${(o.seconds / q.seconds).toFixed(2)}; CPU ${
        o.cpu.toFixed(2)
      } / ${q.cpu.toFixed(2)} s`,
    );
  }
  await Deno.remove(out).catch(() => {});
  const loadAfter = (await Deno.readTextFile("/proc/loadavg")).split(" ")
    .slice(0, 3).join(" ");
  const median = (xs: number[]) => {
    const s = [...xs].sort((x, y) => x - y);
    return s.length % 2
      ? s[(s.length - 1) / 2]
      : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
  };
  const ratios = pairs.map((p) => p.ours / p.qemu);
  console.log(
    `| input | ours (s) | qemu-img (s) | ratio, median (range) | CPU (user+sys) ours / qemu-img | peak RSS ours / qemu-img |\n` +
      `|---|---|---|---|---|---|\n` +
      `| 1 GiB LUKS aes-256-xts, iter-time 10 | ${
        median(pairs.map((p) => p.ours)).toFixed(2)
      } | ${median(pairs.map((p) => p.qemu)).toFixed(2)} | **${
        median(ratios).toFixed(2)
      }** (${Math.min(...ratios).toFixed(2)}–${
        Math.max(...ratios).toFixed(2)
      }) | ${median(pairs.map((p) => p.oursCpu)).toFixed(2)} / ${
        median(pairs.map((p) => p.qemuCpu)).toFixed(2)
      } s | ${Math.round(median(pairs.map((p) => p.oursRss)) / 1024)} / ${
        Math.round(median(pairs.map((p) => p.qemuRss)) / 1024)
      } MiB |\n\n${runs} pairs; load average before ${loadBefore}, after ${loadAfter}.`,
  );
} finally {
  if (!flags.keep && !flags.reuse) await Deno.remove(dir, { recursive: true });
  else console.error(`inputs kept in ${dir}`);
}
