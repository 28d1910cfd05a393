/**
 * `map` against qemu-img 7.2: every fixture, both output forms, ranges, raw
 * files with holes made here, and the errors. JSON is compared as parsed
 * values and as text, the human form line by line. Runs in-process (the
 * test process has --allow-ffi, so host holes count as in QEMU); a few
 * cases run the CLI as a program for the exit statuses.
 */

import { assertEquals, assertRejects } from "@std/assert";
import { runMap } from "../cli/map.ts";
import { mapImage, openImage } from "../mod.ts";
import { cli, FIXTURES, tempDir } from "./_reference.ts";

const LAYOUTS = new URL("layouts/", FIXTURES).pathname;
const TOP = FIXTURES.pathname;
const DAMAGED = new URL("damaged/", FIXTURES).pathname;

/** qemu-img map's stdout and exit status, run in `cwd`. */
async function qemuMap(args: string[], cwd: string) {
  const { code, stdout } = await new Deno.Command("qemu-img", {
    args: ["map", ...args],
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return { code, stdout: new TextDecoder().decode(stdout) };
}

/** Our map's stdout and exit status, run in `cwd` (paths as given). */
async function ourMap(args: string[], cwd: string) {
  const here = Deno.cwd();
  Deno.chdir(cwd);
  let stdout = "";
  try {
    const code = await runMap(args, (t) => stdout += t);
    return { code, stdout };
  } catch {
    return { code: 1, stdout };
  } finally {
    Deno.chdir(here);
  }
}

async function same(args: string[], cwd: string) {
  const theirs = await qemuMap(args, cwd);
  const ours = await ourMap(args, cwd);
  const what = `map ${args.join(" ")} (in ${cwd})`;
  assertEquals(ours.code, theirs.code, `${what}: exit status`);
  if (args.includes("--output=json") && theirs.code === 0) {
    assertEquals(JSON.parse(ours.stdout), JSON.parse(theirs.stdout), what);
  }
  assertEquals(ours.stdout.split("\n"), theirs.stdout.split("\n"), what);
}

async function images(dir: string): Promise<string[]> {
  const names: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (/\.(qcow2|qcow|raw|data)$/.test(e.name)) names.push(e.name);
  }
  return names.sort();
}

for (
  const [dir, label] of [
    [TOP, "fixtures"],
    [LAYOUTS, "layouts"],
    [DAMAGED, "damaged (errors included)"],
    [new URL("bitmaps/", FIXTURES).pathname, "bitmaps"],
    [new URL("resized/", FIXTURES).pathname, "resized"],
  ]
) {
  Deno.test(`map: every image of ${label} as qemu-img, both forms`, async () => {
    for (const name of await images(dir)) {
      for (const output of ["json", "human"]) {
        await same([`--output=${output}`, name], dir);
      }
    }
  });
}

Deno.test("map: ranges as qemu-img (--start-offset, --max-length, -s, -l, suffixes)", async () => {
  const cases = [
    ["-s", "1000", "-l", "70000", "chain_top.qcow2"],
    ["--start-offset=1.5k", "--max-length=100k", "chain_top.qcow2"],
    ["--start-offset=2M", "--max-length=0", "chain_top.qcow2"],
    ["-s", "10M", "chain_top.qcow2"], // past the end: one empty entry
    ["-s", "0x3000", "-l", "0x100000", "sub_top.qcow2"],
    ["-s", "983040", "-l", "200000", "big_over.qcow2"],
    ["-l", "5000", "rawbase.raw"],
  ];
  for (const args of cases) {
    for (const output of ["json", "human"]) {
      await same([`--output=${output}`, ...args], LAYOUTS);
    }
  }
  for (const output of ["json", "human"]) {
    await same([
      `--output=${output}`,
      "-s",
      "1T",
      "-l",
      "3T",
      "sparse_4t.qcow2",
    ], TOP);
  }
});

Deno.test("map: -f raw on qcow2 files, and raw files with holes", async () => {
  const dir = await tempDir();
  try {
    // Holes, data at unaligned places, and a size that is no multiple of 512.
    const file = await Deno.open(`${dir}/holes.raw`, {
      write: true,
      create: true,
    });
    await file.truncate(3 * 1024 * 1024 + 100);
    for (const at of [0, 200000, 1048576 + 4096, 3 * 1024 * 1024 + 90]) {
      await file.seek(at, Deno.SeekMode.Start);
      await file.write(new Uint8Array([1, 2, 3]));
    }
    file.close();
    await Deno.writeFile(`${dir}/empty.raw`, new Uint8Array(0));
    await Deno.copyFile(`${LAYOUTS}/chain_base.qcow2`, `${dir}/base.qcow2`);
    for (const output of ["json", "human"]) {
      await same([`--output=${output}`, "holes.raw"], dir);
      await same([`--output=${output}`, "-f", "raw", "holes.raw"], dir);
      await same([`--output=${output}`, "empty.raw"], dir);
      await same([`--output=${output}`, "-f", "raw", "base.qcow2"], dir);
      await same([`--output=${output}`, "-f", "raw", "v1.qcow"], LAYOUTS);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("map: a qcow2 image over a raw file with holes, made with qemu-img", async () => {
  const dir = await tempDir();
  try {
    const run = async (cmd: string, args: string[]) => {
      const { success, stderr } = await new Deno.Command(cmd, {
        args,
        cwd: dir,
      })
        .output();
      if (!success) throw new Error(new TextDecoder().decode(stderr));
    };
    await run("qemu-img", ["create", "-f", "raw", "base.raw", "2M"]);
    await run("qemu-io", ["-f", "raw", "-c", "write -P 7 64k 8k", "base.raw"]);
    await run("qemu-img", [
      "create",
      "-f",
      "qcow2",
      "-b",
      "base.raw",
      "-F",
      "raw",
      "top.qcow2",
      "3M",
    ]);
    await run("qemu-io", [
      "-c",
      "write -P 9 1M 64k",
      "-c",
      "write -z 2560k 64k",
      "top.qcow2",
    ]);
    for (const output of ["json", "human"]) {
      await same([`--output=${output}`, "top.qcow2"], dir);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("map: mapImage without host allocation counts every byte of a file as data", async () => {
  const bytes = await Deno.readFile(`${LAYOUTS}/chain_base.qcow2`);
  const entries = [];
  for await (const e of mapImage(await openImage(bytes))) {
    const { file: _, ...printed } = e;
    entries.push(printed);
  }
  assertEquals(entries.every((e) => !(e.data && e.zero)), true);
  assertEquals(entries.reduce((n, e) => n + e.length, 0), 4 * 1024 * 1024);
  await assertRejects(async () => {
    for await (const _ of mapImage(await openImage(bytes), { start: -1 })) {
      // never reached
    }
  }, RangeError);
});

Deno.test("map: exit statuses and messages as qemu-img's", async () => {
  const path = `${LAYOUTS}/v1_comp.qcow`;
  const cases: [string[], number, string][] = [
    [[path], 1, "File contains external, encrypted or compressed clusters."],
    [[], 1, "Expecting one image file name"],
    [[path, path], 1, "Expecting one image file name"],
    [
      ["--output=xml", path],
      1,
      "--output must be used with human or json as argument.",
    ],
    [["-s", "1x", path], 1, "Invalid start offset specified."],
    [["-l", "5x", path], 1, "Invalid max length specified."],
    [["-f", "vmdk", path], 1, "format 'vmdk'"],
    [["--image-opts", path], 1, "--image-opts"],
  ];
  for (const [args, status, message] of cases) {
    const r = await cli(["--allow-read"], ["map", ...args]);
    const theirs = await qemuMap(args, TOP);
    assertEquals(r.code, status, `map ${args.join(" ")}: ${r.stderr}`);
    assertEquals(theirs.code, status, `qemu-img map ${args.join(" ")}`);
    assertEquals(r.stderr.includes(message), true, r.stderr);
  }
});

Deno.test("map: -s and -l as qemu-img's cvtnum reads them (past the end: nothing; 2^63: refused)", async () => {
  const header = "Offset          Length          Mapped to       File\n";
  // qemu-img 7.2: exit 0 and the header alone for an offset past the end,
  // even one of 2^53 bytes or more; 8E is out of cvtnum's range.
  assertEquals(await ourMap(["-s", "1E", "v3_64k.qcow2"], TOP), {
    code: 0,
    stdout: header,
  });
  assertEquals(await ourMap(["-s", "+0x1k", "-l", "1E", "v3_64k.qcow2"], TOP), {
    code: 0,
    stdout: (await ourMap(["-s", "1024", "v3_64k.qcow2"], TOP)).stdout,
  });
  assertEquals((await ourMap(["-s", "8E", "v3_64k.qcow2"], TOP)).code, 1);
});
