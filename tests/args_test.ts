/**
 * The flags every command shares (cli/_args.ts): -f, --output, -U, -l, and
 * qemu-img's options we do not support refused by name.
 */
import { assertEquals, assertStringIncludes, assertThrows } from "@std/assert";
import {
  CommandError,
  imageFormat,
  parse,
  QEMU_IMG_OPTIONS,
  snapshotParam,
  unsupportedHelp,
  UsageError,
} from "../cli/_args.ts";
import { cli, fixture, hasQemu, run, tempDir } from "./_reference.ts";

Deno.test("parse: -f, -U, --output and --json", () => {
  const spec = { boolean: ["s"], output: true };
  let f = parse("x", ["-f", "raw", "-U", "a"], spec);
  assertEquals([f.format, f.f, f["force-share"], f.output, f.json], [
    "raw",
    "raw",
    true,
    "human",
    false,
  ]);
  f = parse("x", ["--format=qcow2", "--force-share", "--output=json"], spec);
  assertEquals([f.format, f.output, f.json], ["qcow2", "json", true]);
  f = parse("x", ["--output", "json"], spec);
  assertEquals(f.output, "json");
  f = parse("x", ["--json"], spec);
  assertEquals([f.output, f.json], ["json", true]);
  // getopt's attached values and groups.
  f = parse("x", ["-qUfraw", "b"], spec);
  assertEquals([f.quiet, f["force-share"], f.format, f._], [
    true,
    true,
    "raw",
    ["b"],
  ]);
  const e = assertThrows(
    () => parse("x", ["--output=xml"], spec),
    CommandError,
  );
  assertEquals(
    e.message,
    "--output must be used with human or json as argument.",
  );
  assertThrows(
    () => parse("x", ["--json", "--output=human"], spec),
    UsageError,
  );
  assertThrows(
    () => parse("x", ["-f", "raw", "-f", "qcow2"], spec),
    UsageError,
  );
  assertThrows(() => parse("x", ["-f", ""], spec), UsageError);
});

Deno.test("parse: operands stay as written; an option's value may start with '-', as getopt takes it", () => {
  const spec = { string: ["S", "object"] };
  // Not numbers: "1e3" is no 1000 and "0x10" no 16 (a SIZE or a file name).
  assertEquals(parse("x", ["a", "1e3", "4E-1", "0x10"], spec)._, [
    "a",
    "1e3",
    "4E-1",
    "0x10",
  ]);
  // -S -1 is a value of -S (refused as a size), not an unknown option -1.
  const f = parse("x", ["-S", "-1", "--object", "-x", "a"], spec);
  assertEquals([f.S, f.object, f._], ["-1", "-x", ["a"]]);
});

Deno.test("parse: a qemu-img option we lack is refused by name, with the command's status", () => {
  const e = assertThrows(
    () => parse("compare", ["--image-opts", "a", "b"], { usageStatus: 1 }),
    UsageError,
  );
  assertEquals(
    e.message,
    "qemu-img's option --image-opts is not supported by 'qcow2 compare'",
  );
  assertEquals(e.status, 1);
  const t = assertThrows(
    () => parse("convert", ["-t", "none", "a", "b"], {}),
    UsageError,
  );
  assertEquals(
    t.message,
    "qemu-img's option -t CACHE is not supported by 'qcow2 convert'",
  );
  assertEquals(t.status, 2);
  const u = assertThrows(() => parse("info", ["--frob"], {}), UsageError);
  assertEquals(u.message, "unknown option '--frob'");
  // -o may be repeated, as in qemu-img: the values are joined.
  const o = parse("measure", ["-o", "a=1", "-o", "b=2"], { list: ["o"] });
  assertEquals(o.o, "a=1,b=2");
});

Deno.test("imageFormat: qcow2, qcow and raw; others refused", () => {
  assertEquals(imageFormat(undefined, "-f", "x"), undefined);
  assertEquals(imageFormat("raw", "-f", "x"), "raw");
  assertEquals(imageFormat("qcow", "-F", "x"), "qcow");
  const vmdk = assertThrows(() => imageFormat("vmdk", "-f", "x"), UsageError);
  assertStringIncludes(vmdk.message, "format 'vmdk' (-f) is not supported");
  const foo = assertThrows(() => imageFormat("foo", "-F", "x", 1), UsageError);
  assertStringIncludes(foo.message, "unknown format 'foo' (-F)");
  assertEquals(foo.status, 1);
});

Deno.test("snapshotParam: qemu-img's forms", () => {
  assertEquals(snapshotParam("a,b", "x"), "a,b");
  assertEquals(snapshotParam("snapshot.name=a,,b", "x"), "snapshot.name=a,,b");
  assertEquals(
    snapshotParam("snapshot.id=1,snapshot.name=x", "x"),
    "snapshot.id=1,snapshot.name=x",
  );
  assertThrows(() => snapshotParam("snapshot.name=a,b", "x"), UsageError);
  assertThrows(() => snapshotParam("snapshot.foo=1", "x"), UsageError);
  assertThrows(() => snapshotParam("snapshot.id=", "x"), UsageError);
});

Deno.test("unsupportedHelp lists what a command lacks", () => {
  const text = unsupportedHelp("compare", { boolean: ["s", "p"] });
  assertStringIncludes(text, "qemu-img compare options not supported here:");
  assertStringIncludes(text, "-F FMT");
  assertStringIncludes(text, "--image-opts");
  assertEquals(text.includes(" -s,"), false);
  for (const line of text.split("\n")) assertEquals(line.length <= 78, true);
  for (const command of Object.keys(QEMU_IMG_OPTIONS)) {
    assertEquals(
      unsupportedHelp(command, {
        boolean: Object.keys(QEMU_IMG_OPTIONS[command]).map((k) =>
          k.split(" ")[0]
        ),
      }),
      "",
    );
  }
});

Deno.test({
  name: "cli -f raw reads a qcow2 file as raw, as qemu-img does",
  ignore: !hasQemu,
  async fn() {
    const src = fixture("v3_64k.qcow2");
    const ours = await cli([`--allow-read=${src}`], [
      "info",
      "--output=json",
      "-f",
      "raw",
      "-U",
      src,
    ]);
    const theirs = await run("qemu-img", [
      "info",
      "--output=json",
      "-f",
      "raw",
      "-U",
      src,
    ]);
    assertEquals(ours.code, 0, ours.stderr);
    assertEquals(JSON.parse(ours.stdout), JSON.parse(theirs));
    const dir = await tempDir();
    try {
      const dst = `${dir}/out.raw`;
      const r = await cli([`--allow-read=${src}`, `--allow-write=${dir}`], [
        "convert",
        "-fraw",
        src,
        dst,
      ]);
      assertEquals(r.code, 0, r.stderr);
      assertEquals(await Deno.readFile(dst), await Deno.readFile(src));
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("cli: -l takes snapshot.id= and snapshot.name= together", async () => {
  const src = fixture("layouts/snap.qcow2");
  const dir = await tempDir();
  try {
    const one = `${dir}/one.raw`;
    const two = `${dir}/two.raw`;
    const flags = [`--allow-read=${src}`, `--allow-write=${dir}`];
    const a = await cli(flags, ["convert", "-l", "first", src, one]);
    assertEquals(a.code, 0, a.stderr);
    const b = await cli(flags, [
      "convert",
      "-l",
      "snapshot.id=1,snapshot.name=first",
      src,
      two,
    ]);
    assertEquals(b.code, 0, b.stderr);
    assertEquals(await Deno.readFile(one), await Deno.readFile(two));
    const c = await cli(flags, [
      "convert",
      "-l",
      "snapshot.id=2,snapshot.name=first",
      src,
      two,
    ]);
    assertEquals(c.code, 1);
    assertStringIncludes(c.stderr, "Cannot find snapshot");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
