/**
 * Converting a remote image: `cli.ts convert -O raw URL` against
 * `qemu-img convert -m 1 -O raw URL` (qemu-img's curl driver, from Debian's
 * qemu-block-extra), the image served by nginx on 127.0.0.1, directly and
 * through a proxy that adds a delay to every request (bench/_delay_proxy.ts).
 * Then ours alone at each HTTP concurrency, to show none stalls.
 *
 * Usage:
 *   deno run -A bench/http.ts [--image PATH] [--runs N] [--delays 0,10]
 *     [--concurrency 1,2,4,8,16] [--timeout S]
 *
 * Without --image it makes issue 4's ext4-zlib image with bench/compare.ts
 * (about 80 s, in a temporary directory, removed at the end). Each pair
 * alternates the order, removes the output and runs `sync` before each run;
 * the figure is the median of the per-pair ratios ours/qemu-img. A run that
 * takes longer than --timeout seconds (default 300) is killed and counted as
 * a stall. Needs nginx, qemu-img with the curl driver, and /usr/bin/time.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";

const flags = parseArgs(Deno.args, {
  string: ["image", "runs", "delays", "concurrency", "timeout"],
  default: {
    runs: "3",
    delays: "0,10",
    concurrency: "1,2,4,8,16",
    timeout: "300",
  },
});
const runs = Number(flags.runs);
const delays = flags.delays.split(",").filter(Boolean).map(Number);
const concurrencies = flags.concurrency.split(",").filter(Boolean).map(Number);
const timeoutMs = Number(flags.timeout) * 1000;
const root = new URL("..", import.meta.url).pathname;
const cliPath = new URL("../cli.ts", import.meta.url).pathname;
const converter = new URL("./_http_convert.ts", import.meta.url).pathname;
const proxyPath = new URL("./_delay_proxy.ts", import.meta.url).pathname;

const work = await Deno.makeTempDir({ prefix: "qcow2-http-bench-" });
const children: Deno.ChildProcess[] = [];
const cleanUp = async () => {
  for (const c of children) {
    try {
      c.kill("SIGTERM");
      await c.status;
    } catch { /* gone */ }
  }
  await Deno.remove(work, { recursive: true }).catch(() => {});
};
for (const signal of ["SIGINT", "SIGTERM"] as const) {
  Deno.addSignalListener(signal, () => {
    cleanUp().finally(() => Deno.exit(130));
  });
}
try {
  await main();
} finally {
  await cleanUp();
}

async function main() {
  let image = flags.image;
  if (!image) {
    console.log("making ext4-zlib with bench/compare.ts (about 80 s) ...");
    await sh(Deno.execPath(), [
      "run",
      "-A",
      `${root}bench/compare.ts`,
      "--only",
      "ext4-zlib",
      "--runs",
      "1",
      "--keep",
      "--dir",
      work,
    ]);
    for await (const d of Deno.readDir(work)) {
      if (d.isDirectory) image = `${work}/${d.name}/ext4-zlib.qcow2`;
    }
  }
  image = await Deno.realPath(image!);
  const dir = image.slice(0, image.lastIndexOf("/"));
  const name = image.slice(dir.length + 1);
  const size = (await Deno.stat(image)).size;

  const port = freePort();
  await startNginx(dir, port);
  const origin = `http://127.0.0.1:${port}`;
  const out = `${work}/out.raw`;

  console.log(`date:     ${new Date().toISOString()}`);
  console.log(`image:    ${image} (${(size / 2 ** 20).toFixed(0)} MiB)`);
  console.log(
    `qemu-img: ${(await sh("qemu-img", ["--version"])).split("\n")[0]}`,
  );
  console.log(`nginx:    ${(await sh("nginx", ["-v"], true)).trim()}`);
  console.log(`load:     ${Deno.loadavg().map((l) => l.toFixed(2)).join(" ")}`);

  const rows: string[] = [];
  for (const delay of delays) {
    let base = origin;
    if (delay > 0) {
      const p = freePort();
      await startProxy(p, origin, delay);
      base = `http://127.0.0.1:${p}`;
    }
    const url = `${base}/${name}`;
    const ours = () =>
      timed(Deno.execPath(), [
        "run",
        `--allow-net=127.0.0.1:${new URL(base).port}`,
        `--allow-write=${work}`,
        `--allow-read=${work}`,
        cliPath,
        "convert",
        "-O",
        "raw",
        url,
        out,
      ]);
    const theirs = () =>
      timed("qemu-img", [
        "convert",
        "-m",
        "1",
        "-f",
        "qcow2",
        "-O",
        "raw",
        url,
        out,
      ]);
    const t = {
      ours: [] as number[],
      qemu: [] as number[],
      ratio: [] as number[],
      cpuRatio: [] as number[],
    };
    const rss = { ours: 0, qemu: 0 };
    let stalls = 0;
    // One warm-up pair, outputs compared.
    await ours();
    const digest = await sha(out);
    await theirs();
    if (digest !== await sha(out)) {
      throw new Error(`delay ${delay}: outputs differ`);
    }
    for (let i = 0; i < runs; i++) {
      const order = i % 2 ? [theirs, ours] : [ours, theirs];
      const r: Record<string, { s: number; kb: number; cpu: number }> = {};
      for (const f of order) {
        const x = await f();
        r[f === ours ? "ours" : "qemu"] = x;
      }
      if (!Number.isFinite(r.ours.s) || !Number.isFinite(r.qemu.s)) stalls++;
      t.ours.push(r.ours.s);
      t.qemu.push(r.qemu.s);
      t.ratio.push(r.ours.s / r.qemu.s);
      t.cpuRatio.push(r.ours.cpu / r.qemu.cpu);
      rss.ours = Math.max(rss.ours, r.ours.kb);
      rss.qemu = Math.max(rss.qemu, r.qemu.kb);
      console.log(
        `delay ${delay} ms, pair ${i + 1}: ours ${
          r.ours.s.toFixed(2)
        } s, qemu-img ${r.qemu.s.toFixed(2)} s, ratio ${
          (r.ours.s / r.qemu.s).toFixed(2)
        }`,
      );
    }
    rows.push(
      `| ${delay} ms | ${runs} | ${median(t.ours).toFixed(2)} | ${
        median(t.qemu).toFixed(2)
      } | **${median(t.ratio).toFixed(2)}** (${
        Math.min(...t.ratio).toFixed(2)
      }–${Math.max(...t.ratio).toFixed(2)}) | ${
        median(t.cpuRatio).toFixed(2)
      } | ${(rss.ours / 1024).toFixed(0)} / ${
        (rss.qemu / 1024).toFixed(0)
      } | ${stalls} |`,
    );
  }
  console.log(
    `\nload:     ${Deno.loadavg().map((l) => l.toFixed(2)).join(" ")}`,
  );
  console.log(
    "\n| added delay per request | pairs | ours s (median) | qemu-img -m 1 s (median) | ours/qemu-img (median of pairs, range) | CPU time ours/qemu-img (median) | peak RSS MiB ours / qemu-img | stalls |",
  );
  console.log("|---|---|---|---|---|---|---|---|");
  for (const r of rows) console.log(r);

  // Ours at each concurrency (library: bench/_http_convert.ts), no delay.
  if (concurrencies.length > 0) {
    console.log(
      "\n| httpSource concurrency | convert s | requests | stalled |",
    );
    console.log("|---|---|---|---|");
    for (const c of concurrencies) {
      const r = await timed(Deno.execPath(), [
        "run",
        "--allow-net=127.0.0.1",
        `--allow-write=${work}`,
        converter,
        `${origin}/${name}`,
        out,
        String(c),
        "16",
      ], true);
      const stats = r.stdout ? JSON.parse(r.stdout) : {};
      console.log(
        `| ${c} | ${Number.isFinite(r.s) ? r.s.toFixed(2) : "-"} | ${
          stats.requests ?? "-"
        } | ${Number.isFinite(r.s) ? "no" : "YES"} |`,
      );
    }
  }
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2
    ? s[s.length >> 1]
    : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
}

function freePort(): number {
  const l = Deno.listen({ hostname: "127.0.0.1", port: 0 });
  const { port } = l.addr as Deno.NetAddr;
  l.close();
  return port;
}

async function startNginx(root: string, port: number) {
  const conf = `${work}/nginx.conf`;
  await Deno.writeTextFile(
    conf,
    `daemon off;
master_process off;
worker_processes 1;
pid ${work}/nginx.pid;
error_log ${work}/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  sendfile on;
  client_body_temp_path ${work};
  proxy_temp_path ${work};
  fastcgi_temp_path ${work};
  uwsgi_temp_path ${work};
  scgi_temp_path ${work};
  server {
    listen 127.0.0.1:${port};
    root ${root};
  }
}
`,
  );
  const child = new Deno.Command("nginx", {
    args: ["-c", conf],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  children.push(child);
  await waitForPort(port);
}

async function startProxy(port: number, upstream: string, delay: number) {
  const child = new Deno.Command(Deno.execPath(), {
    args: [
      "run",
      "--allow-net=127.0.0.1",
      proxyPath,
      String(port),
      upstream,
      String(delay),
    ],
    stdout: "null",
    stderr: "inherit",
  }).spawn();
  children.push(child);
  await waitForPort(port);
}

async function waitForPort(port: number) {
  for (let i = 0; i < 100; i++) {
    try {
      (await Deno.connect({ hostname: "127.0.0.1", port })).close();
      return;
    } catch {
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  throw new Error(`nothing listens on port ${port}`);
}

/** Runs a command after removing the output and `sync`; Infinity if it stalls. */
async function timed(cmd: string, args: string[], capture = false) {
  await Deno.remove(`${work}/out.raw`).catch(() => {});
  await sh("sync", []);
  // timeout(1) kills the command itself; time(1) reports on both.
  const child = new Deno.Command("/usr/bin/time", {
    args: [
      "-f",
      "%e %M %U %S",
      "-o",
      `${work}/time.txt`,
      "timeout",
      "-s",
      "KILL",
      String(timeoutMs / 1000),
      cmd,
      ...args,
    ],
    stdout: capture ? "piped" : "null",
    stderr: "piped",
  }).spawn();
  children.push(child);
  const r = await child.output();
  children.splice(children.indexOf(child), 1);
  if (!r.success) {
    const err = new TextDecoder().decode(r.stderr);
    if (r.code === 137 || r.code === 124) {
      return { s: Infinity, kb: 0, cpu: Infinity, stdout: "" };
    }
    throw new Error(`${cmd} failed: ${err}`);
  }
  const [s, kb, user, sys] = (await Deno.readTextFile(`${work}/time.txt`))
    .trim().split(/\s+/).slice(-4).map(Number);
  return {
    s,
    kb,
    cpu: user + sys,
    stdout: capture ? new TextDecoder().decode(r.stdout) : "",
  };
}

async function sha(path: string): Promise<string> {
  return (await sh("sha256sum", [path])).split(" ")[0];
}

async function sh(
  cmd: string,
  args: string[],
  stderr = false,
): Promise<string> {
  const r = await new Deno.Command(cmd, {
    args,
    stdout: "piped",
    stderr: "piped",
  })
    .output();
  if (!r.success) {
    throw new Error(
      `${cmd} ${args.join(" ")}: ${new TextDecoder().decode(r.stderr)}`,
    );
  }
  return new TextDecoder().decode(stderr ? r.stderr : r.stdout);
}
