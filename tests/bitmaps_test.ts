/**
 * Persistent dirty bitmaps in `info`, against qemu-img 7.2: the fixtures
 * made by tests/fixtures/bitmaps/make_bitmaps.sh (text line by line, JSON
 * parsed), and bitmap directories made hostile by patching bytes: each is
 * one error line from us, where qemu-img refuses the image too.
 */
import { assertEquals, assertRejects, assertStringIncludes } from "@std/assert";
import { bytesSource, parseHeader, Qcow2Error, readBitmaps } from "../mod.ts";
import { cli, fixture, hasQemu, tempDir } from "./_reference.ts";

async function qemuImg(args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command("qemu-img", {
    args,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr),
  };
}

const FIXTURES = ["bitmaps.qcow2", "bitmaps_small.qcow2", "bitmaps_snap.qcow2"];

Deno.test({
  name: "info lists bitmaps as qemu-img does (text and JSON)",
  ignore: !hasQemu,
  async fn() {
    for (const name of FIXTURES) {
      const path = fixture(`bitmaps/${name}`);
      const text = await cli([`--allow-read=${path}`], ["info", path]);
      const theirs = await qemuImg(["info", path]);
      assertEquals(text.code, 0, text.stderr);
      assertEquals(text.stdout.split("\n"), theirs.stdout.split("\n"), name);
      const json = await cli([`--allow-read=${path}`], [
        "info",
        "--output=json",
        path,
      ]);
      const theirsJson = await qemuImg(["info", "--output=json", path]);
      const ours = JSON.parse(json.stdout);
      delete ours["qcow2-header"];
      const expected = JSON.parse(theirsJson.stdout);
      assertEquals(ours, expected, name);
      // Printed as qemu-img prints it: empty flag lists open a line, and
      // names are escaped as \uXXXX.
      const bitmaps = (s: string) =>
        s.slice(s.indexOf('"bitmaps"'), s.indexOf('"refcount-bits"'));
      assertEquals(bitmaps(json.stdout), bitmaps(theirsJson.stdout), name);
    }
  },
});

/** Where the bitmaps extension and the first directory entry are. */
function locate(bytes: Uint8Array) {
  const header = parseHeader(bytes);
  const ext = header.extensions.bitmaps!;
  const view = new DataView(bytes.buffer);
  // The extension's data: after the header and the extensions before it.
  let at = view.getUint32(100);
  while (view.getUint32(at) !== 0x23852875) {
    at += 8 + Math.ceil(view.getUint32(at + 4) / 8) * 8;
  }
  return { view, extension: at + 8, dir: ext.directoryOffset };
}

type Patch = (p: ReturnType<typeof locate>) => void;

const HOSTILE: Record<string, Patch> = {
  "granularity above 2^31": (p) => p.view.setUint8(p.dir + 17, 40),
  "granularity below 512": (p) => p.view.setUint8(p.dir + 17, 8),
  "type not dirty tracking": (p) => p.view.setUint8(p.dir + 16, 2),
  "reserved flag": (p) => p.view.setUint32(p.dir + 12, 8),
  "empty bitmap table": (p) => p.view.setUint32(p.dir + 8, 0),
  "bitmap table at 0": (p) => p.view.setBigUint64(p.dir, 0n),
  "unaligned bitmap table": (p) => p.view.setBigUint64(p.dir, 513n),
  "extra data": (p) => p.view.setUint32(p.dir + 20, 8),
  "name past the directory": (p) => p.view.setUint16(p.dir + 18, 1000),
  "more bitmaps counted": (p) => p.view.setUint32(p.extension, 2),
  "directory size zero": (p) => p.view.setBigUint64(p.extension + 8, 0n),
  "directory past the end of the file": (p) =>
    p.view.setBigUint64(p.extension + 16, 1n << 30n),
  "bitmap table too long": (p) => p.view.setUint32(p.dir + 8, 2),
  "bad bitmap table entry": (p) => {
    const table = Number(p.view.getBigUint64(p.dir));
    p.view.setBigUint64(table, 3n);
  },
};

Deno.test({
  name:
    "info: a hostile bitmap directory is one error line, as qemu-img refuses it",
  ignore: !hasQemu,
  async fn() {
    const dir = await tempDir();
    try {
      const original = await Deno.readFile(
        fixture("bitmaps/bitmaps_small.qcow2"),
      );
      for (const [what, patch] of Object.entries(HOSTILE)) {
        const bytes = original.slice();
        patch(locate(bytes));
        const path = `${dir}/hostile.qcow2`;
        await Deno.writeFile(path, bytes);
        const theirs = await qemuImg(["info", path]);
        assertEquals(theirs.code, 1, `qemu-img accepts: ${what}`);
        const ours = await cli([`--allow-read=${path}`], ["info", path]);
        assertEquals(ours.code, 1, what);
        assertEquals(ours.stdout, "", what);
        assertEquals(ours.stderr.trim().split("\n").length, 1, ours.stderr);
        assertStringIncludes(ours.stderr, "bitmap", what);
        await assertRejects(
          () => readBitmaps(bytesSource(bytes), parseHeader(bytes)),
          Qcow2Error,
        );
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("readBitmaps: a table past the end of the file reads as zeros, as in QEMU", async () => {
  const bytes = await Deno.readFile(fixture("bitmaps/bitmaps_small.qcow2"));
  const p = locate(bytes);
  p.view.setBigUint64(p.dir, 1n << 30n);
  const bitmaps = await readBitmaps(bytesSource(bytes), parseHeader(bytes));
  assertEquals(bitmaps.map((b) => b.name), [
    "a-rather-long-bitmap-name-to-fill-the-directory",
  ]);
  // Without autoclear bit 0 the bitmaps are ignored, as QEMU ignores them.
  const stale = await Deno.readFile(fixture("bitmaps/bitmaps_small.qcow2"));
  new DataView(stale.buffer).setBigUint64(88, 0n);
  assertEquals(await readBitmaps(bytesSource(stale), parseHeader(stale)), []);
});
