/**
 * Every layout qemu-img reads: backing chains (qcow2 and raw, shorter and
 * longer, v2 and v3, with and without a backing format), extended L2
 * subclusters, external data files, internal snapshots and qcow version 1.
 * Each converts to the same bytes as `qemu-img convert -O raw` (live when
 * qemu-img is installed, and always against the committed digests).
 */
import {
  assert,
  assertEquals,
  assertRejects,
  assertStringIncludes,
} from "@std/assert";
import {
  convert,
  openImage,
  type OpenOptions,
  openPath,
  Qcow2Error,
  type Qcow2Image,
} from "../mod.ts";
import { cli, hasQemu, run, sha256File, tempDir } from "./_reference.ts";
import { synthImage } from "./_synth.ts";

const DIR = new URL("./fixtures/layouts/", import.meta.url).pathname;

interface Layout {
  sha256: string;
  topSha256?: string;
  virtualSize: number;
  info: Record<string, unknown>;
  chain: Record<string, unknown>[];
  snapshots?: Record<string, string>;
}

/** qemu-img, run in the fixtures' directory: QEMU 7.2 resolves a relative
 * data file name against the current directory. */
const qemu = (args: string[]) => run("qemu-img", args, DIR);

const layouts: Record<string, Layout> = JSON.parse(
  await Deno.readTextFile(`${DIR}expected.json`),
);

async function convertTo(path: string, dir: string, options: OpenOptions = {}) {
  const out = `${dir}/out.raw`;
  await Deno.remove(out).catch(() => {});
  using output = await Deno.open(out, { write: true, create: true });
  const summary = await convert(path, output, options);
  return { out, summary };
}

Deno.test("the layout fixtures cover what issue 3 names", () => {
  for (
    const name of [
      "chain_top.qcow2",
      "over_raw.qcow2",
      "big_over.qcow2",
      "v2_over.qcow2",
      "v3_over_v2.qcow2",
      "sub_top.qcow2",
      "sub_nobacking.qcow2",
      "ext_data.qcow2",
      "ext_raw.qcow2",
      "snap.qcow2",
      "v1.qcow",
      "v1_comp.qcow",
    ]
  ) assert(name in layouts, `${name} is missing from layouts/expected.json`);
});

for (const [name, want] of Object.entries(layouts)) {
  Deno.test(`layout ${name}: flattened, same bytes as qemu-img`, async () => {
    const dir = await tempDir();
    try {
      const { out, summary } = await convertTo(DIR + name, dir);
      assertEquals(summary.virtualSize, want.virtualSize);
      const digest = await sha256File(out);
      assertEquals(digest, want.sha256);
      if (hasQemu) {
        await qemu([
          "convert",
          "-O",
          "raw",
          DIR + name,
          `${dir}/qemu.raw`,
        ]);
        assertEquals(await sha256File(`${dir}/qemu.raw`), digest);
      }
      if (want.topSha256) {
        const top = await convertTo(DIR + name, dir, {
          ignoreBackingFile: true,
        });
        assertEquals(
          await sha256File(top.out),
          want.topSha256,
          "top layer alone",
        );
      }
      for (const [snapshot, sha] of Object.entries(want.snapshots ?? {})) {
        const s = await convertTo(DIR + name, dir, { snapshot });
        assertEquals(await sha256File(s.out), sha, `snapshot ${snapshot}`);
        if (hasQemu) {
          await qemu([
            "convert",
            "-O",
            "raw",
            "-l",
            `snapshot.name=${snapshot}`,
            DIR + name,
            `${dir}/qemu.raw`,
          ]);
          assertEquals(await sha256File(`${dir}/qemu.raw`), sha);
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("random reads through a chain agree with the flattened image", async () => {
  const image = await openImage(DIR + "chain_top.qcow2");
  try {
    const whole = new Uint8Array(image.size);
    await image.read(0, whole);
    const step = 65536 - 777;
    for (let p = 0; p + 5000 < image.size; p += step) {
      const part = new Uint8Array(5000);
      await image.read(p, part);
      assertEquals(part, whole.subarray(p, p + 5000));
    }
    // Extents name the layer that holds each run.
    const depths = new Set<number>();
    for await (const e of image.extents()) depths.add(e.depth);
    assert(depths.has(0) && depths.has(1) && depths.has(2), [...depths].join());
  } finally {
    image.close();
  }
});

Deno.test("snapshots are listed with qemu-img's fields and found by id or name", async () => {
  const image = await openImage(DIR + "snap.qcow2") as Qcow2Image;
  try {
    assertEquals(image.snapshots.map((s) => [s.id, s.name]), [["1", "first"], [
      "2",
      "second",
    ]]);
    const byId = await openImage(DIR + "snap.qcow2", {
      snapshot: "1",
    }) as Qcow2Image;
    assertEquals(byId.snapshot?.name, "first");
    byId.close();
    const e = await assertRejects(
      () => openImage(DIR + "snap.qcow2", { snapshot: "third" }),
      Qcow2Error,
    );
    assertEquals(e.code, "NO_SUCH_SNAPSHOT");
  } finally {
    image.close();
  }
});

Deno.test("the openFile hook decides how named files are opened", async () => {
  const asked: string[] = [];
  const image = await openImage(DIR + "chain_top.qcow2", {
    openFile: (path, request) => {
      asked.push(`${request.kind} ${request.name} -> ${path}`);
      return openPath(path);
    },
  });
  image.close();
  assertEquals(asked.length, 2);
  assertStringIncludes(
    asked[0],
    `backing chain_mid.qcow2 -> ${DIR}chain_mid.qcow2`,
  );
  // A hook that forbids backing files makes the open fail, naming the file.
  const e = await assertRejects(
    () =>
      openImage(DIR + "chain_top.qcow2", {
        openFile: () =>
          Promise.reject(new Error("backing files are not allowed here")),
      }),
    Qcow2Error,
  );
  assertEquals(e.code, "BACKING_FILE");
  assertStringIncludes(e.message, "chain_mid.qcow2");
  assertStringIncludes(e.message, "not allowed here");
  // Bytes in memory with no hook cannot follow a backing file.
  const bytes = await Deno.readFile(DIR + "chain_top.qcow2");
  const f = await assertRejects(() => openImage(bytes), Qcow2Error);
  assertEquals(f.code, "BACKING_FILE");
  assertStringIncludes(f.message, "openFile");
});

Deno.test("a chain deeper than the limit is refused", async () => {
  const e = await assertRejects(
    () => openImage(DIR + "chain_top.qcow2", { maxChainDepth: 1 }),
    Qcow2Error,
  );
  assertEquals(e.code, "BACKING_FILE");
  assertStringIncludes(e.message, "deeper than 1");
});

Deno.test("a backing loop and a missing backing file are errors that name the file", async () => {
  const dir = await tempDir();
  try {
    const a = synthImage({ backingFile: "b.qcow2" }, new Map());
    const b = synthImage({ backingFile: "./a.qcow2" }, new Map());
    await Deno.writeFile(`${dir}/a.qcow2`, a);
    await Deno.writeFile(`${dir}/b.qcow2`, b);
    const loop = await assertRejects(
      () => openImage(`${dir}/a.qcow2`),
      Qcow2Error,
    );
    assertEquals(loop.code, "BACKING_FILE");
    assertStringIncludes(loop.message, "loops");
    const self = synthImage({ backingFile: "self.qcow2" }, new Map());
    await Deno.writeFile(`${dir}/self.qcow2`, self);
    assertEquals(
      (await assertRejects(() => openImage(`${dir}/self.qcow2`), Qcow2Error))
        .code,
      "BACKING_FILE",
    );
    const missing = synthImage({ backingFile: "gone.qcow2" }, new Map());
    await Deno.writeFile(`${dir}/missing.qcow2`, missing);
    const gone = await assertRejects(
      () => openImage(`${dir}/missing.qcow2`),
      Qcow2Error,
    );
    assertEquals(gone.code, "BACKING_FILE");
    assertStringIncludes(gone.message, `${dir}/gone.qcow2`);
    // The top layer alone needs no backing file.
    const top = await openImage(`${dir}/missing.qcow2`, {
      ignoreBackingFile: true,
    });
    top.close();
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli converts a chain with read access to its layers only", async () => {
  const dir = await tempDir();
  try {
    const layers = ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"]
      .map((n) => DIR + n);
    const dst = `${dir}/out.raw`;
    const denied = await cli(
      [`--allow-read=${layers[0]}`, `--allow-write=${dst}`],
      ["convert", layers[0], dst],
    );
    assertEquals(denied.code, 1);
    assertStringIncludes(denied.stderr, `--allow-read=${layers[1]}`);
    const ok = await cli(
      [`--allow-read=${layers.join(",")}`, `--allow-write=${dst}`],
      ["convert", layers[0], dst],
    );
    assertEquals(ok.code, 0, ok.stderr);
    assertEquals(await sha256File(dst), layouts["chain_top.qcow2"].sha256);
    const snap = await cli(
      [`--allow-read=${DIR}snap.qcow2`, `--allow-write=${dst}`],
      ["convert", "-l", "first", `${DIR}snap.qcow2`, dst],
    );
    assertEquals(snap.code, 0, snap.stderr);
    assertEquals(await sha256File(dst), layouts["snap.qcow2"].snapshots!.first);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Replaces absolute fixture paths so reports compare across machines. */
function normalize(report: Record<string, unknown>): Record<string, unknown> {
  const out = { ...report };
  delete out.filename;
  delete out["actual-size"];
  delete out["qcow2-header"];
  for (const key of ["full-backing-filename", "backing-filename"]) {
    if (typeof out[key] === "string") {
      out[key] = (out[key] as string).replace(DIR, "");
    }
  }
  return out;
}

for (const [name, want] of Object.entries(layouts)) {
  Deno.test(`layout ${name}: info --backing-chain agrees with qemu-img`, async () => {
    const r = await cli([`--allow-read=${DIR}`], [
      "info",
      "--json",
      "--backing-chain",
      DIR + name,
    ]);
    assertEquals(r.code, 0, r.stderr);
    const ours = (JSON.parse(r.stdout) as Record<string, unknown>[]).map(
      normalize,
    );
    const theirs = hasQemu
      ? (JSON.parse(
        await qemu([
          "info",
          "--output=json",
          "--backing-chain",
          DIR + name,
        ]),
      ) as Record<string, unknown>[]).map(normalize)
      : want.chain;
    assertEquals(ours.length, theirs.length);
    for (let i = 0; i < theirs.length; i++) {
      for (const key of Object.keys(theirs[i])) {
        assertEquals(ours[i][key], theirs[i][key], `layer ${i}: ${key}`);
      }
    }
    if (hasQemu) {
      const text = await cli([`--allow-read=${DIR}`], [
        "info",
        "--backing-chain",
        DIR + name,
      ]);
      assertEquals(
        text.stdout,
        await qemu(["info", "--backing-chain", DIR + name]),
      );
    }
  });
}

Deno.test("cli convert refuses to write over a file of the backing chain", async () => {
  const dir = await tempDir();
  try {
    for (
      const name of ["chain_top.qcow2", "chain_mid.qcow2", "chain_base.qcow2"]
    ) {
      await Deno.copyFile(DIR + name, `${dir}/${name}`);
    }
    const before = await sha256File(`${dir}/chain_base.qcow2`);
    const r = await cli([`--allow-read=${dir}`, `--allow-write=${dir}`], [
      "convert",
      `${dir}/chain_top.qcow2`,
      `${dir}/./chain_base.qcow2`,
    ]);
    assertEquals(r.code, 1);
    assertStringIncludes(
      r.stderr,
      `it is a file of the backing chain of the input '${dir}/chain_top.qcow2'`,
    );
    assertEquals(await sha256File(`${dir}/chain_base.qcow2`), before);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
