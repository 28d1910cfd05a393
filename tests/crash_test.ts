/**
 * Crash safety, tested as a user would break it: a child process runs a
 * seeded workload on an image read-write (writes of mixed sizes over a
 * backing file, over compressed clusters and over clusters shared with a
 * snapshot; zero writes; discards; flushes) and is killed with SIGKILL at a
 * random moment. After each kill `qemu-img check` must find no corruption
 * (leaks allowed), every operation completed before the last completed
 * flush must read back, and with lazy refcounts `qemu-img check -r all`
 * must repair the image.
 *
 * CRASH_KILLS sets the kills per kind (default 3); CRASH_SEED the first seed.
 */
import { assert, assertEquals } from "@std/assert";
import { run, tempDir } from "./_reference.ts";
import { type Op, prng, workload } from "./_workload.ts";

const KILLS = Number(Deno.env.get("CRASH_KILLS") ?? "3");
const FIRST_SEED = Number(Deno.env.get("CRASH_SEED") ?? "1");
const SIZE = 8 * 1024 * 1024;
const CS = 65536;
const COUNT = 20000;
const CHILD = new URL("./crash/child.ts", import.meta.url).pathname;

/** Makes the image: compressed clusters, a snapshot, over a raw backing file. */
async function makeImage(dir: string, lazy: boolean): Promise<void> {
  const sh = `head -c ${SIZE} /dev/urandom > base.raw && ` +
    `qemu-img create -q -f qcow2 -b base.raw -F raw ` +
    `-o lazy_refcounts=${lazy ? "on" : "off"} disk.qcow2 ${SIZE} && ` +
    `qemu-io -c 'write -c -P 0x5a 0 2M' -c 'write -P 0x6b 2M 2M' disk.qcow2 >/dev/null && ` +
    `qemu-img snapshot -c snap disk.qcow2`;
  await run("sh", ["-c", sh], dir);
}

/** `qemu-img check` exit code and JSON report. */
async function check(path: string, repair = false) {
  const out = await new Deno.Command("qemu-img", {
    args: ["check", "--output=json", ...(repair ? ["-r", "all"] : []), path],
  }).output();
  const text = new TextDecoder().decode(out.stdout);
  let report: Record<string, number> = {};
  try {
    report = JSON.parse(text);
  } catch {
    // repair prints text first
  }
  return { code: out.code, report, text };
}

/** The guest bytes of an image, read by qemu-img. */
async function guestBytes(dir: string): Promise<Uint8Array> {
  await run("qemu-img", ["convert", "-O", "raw", "disk.qcow2", "now.raw"], dir);
  const bytes = await Deno.readFile(`${dir}/now.raw`);
  await Deno.remove(`${dir}/now.raw`);
  return bytes;
}

/**
 * Checks that the first `durable` operations read back: each byte whose
 * last writer among them is a write or zero write holds its value, unless
 * a later operation (maybe under way at the kill) touched it.
 */
function checkDurable(
  ops: Op[],
  durable: number,
  bytes: Uint8Array,
): number {
  const want = new Int16Array(bytes.length).fill(-1);
  ops.forEach((o, i) => {
    if (o.op === "flush") return;
    const value = i >= durable
      ? -1
      : o.op === "write"
      ? o.pattern
      : o.op === "zero"
      ? 0
      : -1;
    want.fill(value, o.offset, o.offset + o.length);
  });
  let checked = 0;
  for (let b = 0; b < bytes.length; b++) {
    if (want[b] < 0) continue;
    if (bytes[b] !== want[b]) {
      throw new Error(
        `byte ${b}: ${bytes[b]}, not ${
          want[b]
        } (${durable} operations flushed)`,
      );
    }
    checked++;
  }
  return checked;
}

interface Outcome {
  durable: number;
  leaks: number;
  checked: number;
}

async function crashOnce(
  dir: string,
  seed: number,
  lazy: boolean,
): Promise<Outcome> {
  const random = prng(seed * 7919);
  await run("cp", ["made/disk.qcow2", "disk.qcow2"], dir);
  const child = new Deno.Command("deno", {
    args: [
      "run",
      "-A",
      CHILD,
      "disk.qcow2",
      String(seed),
      String(SIZE),
      String(CS),
      String(COUNT),
    ],
    cwd: dir,
    stdout: "piped",
    stderr: "piped",
  }).spawn();
  let durable = 0;
  let ready = false;
  const reader = (async () => {
    let text = "";
    for await (
      const chunk of child.stdout.pipeThrough(new TextDecoderStream())
    ) {
      text += chunk;
      for (const line of text.split("\n").slice(0, -1)) {
        if (line === "R") ready = true;
        else if (line.startsWith("F ")) durable = Number(line.slice(2));
      }
      text = text.slice(text.lastIndexOf("\n") + 1);
    }
  })();
  // Kill at a random moment after the image is open.
  while (!ready) await new Promise((r) => setTimeout(r, 5));
  await new Promise((r) => setTimeout(r, random() * 1500));
  const seen = durable;
  try {
    child.kill("SIGKILL");
  } catch {
    // already done
  }
  await child.status;
  await reader;
  void child.stderr.cancel();
  const ops = workload(seed, { size: SIZE, clusterSize: CS, count: COUNT })
    .filter((o) => o.op !== "flush");
  let { code, report, text } = await check(`${dir}/disk.qcow2`);
  if (lazy && code !== 0) {
    const repaired = await check(`${dir}/disk.qcow2`, true);
    assert(repaired.code === 0 || repaired.code === 3, repaired.text);
    ({ code, report, text } = await check(`${dir}/disk.qcow2`));
    assertEquals(code, 0, `after -r all: ${text}`);
  }
  assert(code === 0 || code === 3, `seed ${seed}: qemu-img check: ${text}`);
  assertEquals(report.corruptions ?? 0, 0, text);
  const checked = checkDurable(
    ops,
    Math.max(seen, durable),
    await guestBytes(dir),
  );
  return {
    durable: Math.max(seen, durable),
    leaks: report.leaks ?? 0,
    checked,
  };
}

for (const lazy of [false, true]) {
  Deno.test(`crash: SIGKILL at random moments${lazy ? ", lazy refcounts" : ""}: no corruption, flushed writes read back`, async () => {
    const dir = await tempDir();
    try {
      await Deno.mkdir(`${dir}/made`);
      await makeImage(`${dir}/made`, lazy);
      await run("cp", [`${dir}/made/base.raw`, `${dir}/base.raw`]);
      const outcomes: Outcome[] = [];
      const failures: string[] = [];
      for (let k = 0; k < KILLS; k++) {
        try {
          outcomes.push(await crashOnce(dir, FIRST_SEED + k, lazy));
        } catch (e) {
          failures.push(
            `seed ${FIRST_SEED + k}: ${
              (e as Error).message.split("\n").slice(0, 3).join(" ")
            }`,
          );
        }
      }
      if (failures.length > 0) {
        throw new Error(
          `${failures.length} of ${KILLS} kills failed:\n${
            failures.join("\n")
          }`,
        );
      }
      const withLeaks = outcomes.filter((o) => o.leaks > 0);
      console.log(
        `${outcomes.length} kills${lazy ? " (lazy refcounts)" : ""}: ` +
          `flushed operations ${outcomes.map((o) => o.durable).join(",")}; ` +
          `${withLeaks.length} left leaks (at most ${
            Math.max(0, ...outcomes.map((o) => o.leaks))
          } clusters)`,
      );
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}
