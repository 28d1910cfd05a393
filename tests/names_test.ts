/**
 * Names read from an image (issue 17, item 2), each case run through
 * qemu-img 7.2 and through us: backing file, backing format, external data
 * file, feature names, snapshot IDs and names; empty, cut by a NUL, not
 * UTF-8, over their limit. The images are committed fixtures patched here,
 * in a temporary directory, by the functions below (nothing new is
 * committed).
 *
 * For `info`, our text must equal qemu-img's (its bytes read as UTF-8, with
 * U+FFFD for what is not); for `convert`, both must succeed with the same
 * bytes, or both fail.
 */
import { assert, assertEquals } from "@std/assert";
import { fixture, hasQemu, sha256File, tempDir } from "./_reference.ts";
import { imageName, listedName, padName } from "../src/qcow2/names.ts";

const CLI = new URL("../cli.ts", import.meta.url).pathname;
const latin1 = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));

/** A header extension: type and data. */
type Extension = [number, Uint8Array];
const BACKING_FORMAT = 0xe2792aca;
const DATA_FILE = 0x44415441;
const FEATURE_NAMES = 0x6803f857;
const BITMAPS = 0x23852875;

function extensionsOf(b: Uint8Array): Extension[] {
  const v = new DataView(b.buffer, b.byteOffset);
  const out: Extension[] = [];
  for (let at = v.getUint32(100);;) {
    const type = v.getUint32(at);
    const length = v.getUint32(at + 4);
    if (type === 0) return out;
    out.push([type, b.slice(at + 8, at + 8 + length)]);
    at += 8 + Math.ceil(length / 8) * 8;
  }
}

/**
 * A v3 image with its header extensions, backing file name and incompatible
 * bits replaced (all in the first cluster, which qemu-img leaves free after
 * the header).
 */
function patchHeader(
  image: Uint8Array,
  change: {
    extensions?: (old: Extension[]) => Extension[];
    backing?: Uint8Array;
    backingAt?: [offset: number, size: number];
    incompatible?: bigint;
  },
): Uint8Array {
  const b = image.slice();
  const v = new DataView(b.buffer);
  const extensions = change.extensions?.(extensionsOf(b)) ?? extensionsOf(b);
  let at = v.getUint32(100);
  for (const [type, data] of extensions) {
    v.setUint32(at, type);
    v.setUint32(at + 4, data.length);
    b.fill(0, at + 8, at + 8 + Math.ceil(data.length / 8) * 8);
    b.set(data, at + 8);
    at += 8 + Math.ceil(data.length / 8) * 8;
  }
  b.fill(0, at, at + 8);
  at += 8;
  if (change.backing) {
    b.set(change.backing, at);
    v.setBigUint64(8, BigInt(at));
    v.setUint32(16, change.backing.length);
  }
  if (change.backingAt) {
    v.setBigUint64(8, BigInt(change.backingAt[0]));
    v.setUint32(16, change.backingAt[1]);
  }
  if (change.incompatible !== undefined) {
    v.setBigUint64(72, change.incompatible);
  }
  return b;
}

/** Replaces extension `type` (first) with `data`. */
const setExtension = (type: number, data: Uint8Array) => (old: Extension[]) => [
  [type, data] as Extension,
  ...old.filter(([t]) => t !== type),
];

/** A snapshot table entry: fixed part, extra data, ID and name. */
interface Entry {
  fixed: Uint8Array;
  extra: Uint8Array;
  id: Uint8Array;
  name: Uint8Array;
}

/** The image with snapshot entry `i`'s ID or name replaced. */
function patchSnapshot(
  image: Uint8Array,
  i: number,
  change: { id?: Uint8Array; name?: Uint8Array },
): Uint8Array {
  const b = image.slice();
  const v = new DataView(b.buffer);
  const count = v.getUint32(60);
  const offset = Number(v.getBigUint64(64));
  const entries: Entry[] = [];
  for (let n = 0, at = offset; n < count; n++) {
    const idSize = v.getUint16(at + 12);
    const nameSize = v.getUint16(at + 14);
    const extraSize = v.getUint32(at + 36);
    const extra = at + 40;
    entries.push({
      fixed: b.slice(at, at + 40),
      extra: b.slice(extra, extra + extraSize),
      id: b.slice(extra + extraSize, extra + extraSize + idSize),
      name: b.slice(
        extra + extraSize + idSize,
        extra + extraSize + idSize + nameSize,
      ),
    });
    const end = extra + extraSize + idSize + nameSize;
    at = end + ((8 - (end % 8)) % 8);
  }
  entries[i] = { ...entries[i], ...change };
  let at = offset;
  for (const e of entries) {
    const fixed = new DataView(e.fixed.buffer);
    fixed.setUint16(12, e.id.length);
    fixed.setUint16(14, e.name.length);
    for (const part of [e.fixed, e.extra, e.id, e.name]) {
      b.set(part, at);
      at += part.length;
    }
    const pad = (8 - (at % 8)) % 8;
    b.fill(0, at, at + pad);
    at += pad;
  }
  // The table must stay in the cluster it had.
  assert(at - offset <= 65536 - (offset % 65536), "snapshot table too long");
  return b;
}

/** The image with the name of bitmap `i` of its directory replaced. */
function patchBitmapName(image: Uint8Array, i: number, name: Uint8Array) {
  // The directory may end the file short of its cluster's end: make room
  // up to it (the cluster is allocated whole).
  const clusterSize = 2 ** new DataView(image.buffer).getUint32(20);
  const b = new Uint8Array(
    Math.ceil(image.length / clusterSize) * clusterSize,
  );
  b.set(image);
  const v = new DataView(b.buffer);
  let at = v.getUint32(100);
  for (;;) {
    const type = v.getUint32(at);
    if (type === 0) throw new Error("no bitmaps extension");
    if (type === BITMAPS) break;
    at += 8 + Math.ceil(v.getUint32(at + 4) / 8) * 8;
  }
  const count = v.getUint32(at + 8);
  const dirSizeAt = at + 16;
  const dirOffset = Number(v.getBigUint64(at + 24));
  const entries: Uint8Array[][] = [];
  for (let n = 0, p = dirOffset; n < count; n++) {
    const extra = v.getUint32(p + 20);
    const nameSize = v.getUint16(p + 18);
    entries.push([
      b.slice(p, p + 24 + extra),
      b.slice(p + 24 + extra, p + 24 + extra + nameSize),
    ]);
    p += Math.ceil((24 + extra + nameSize) / 8) * 8;
  }
  entries[i][1] = name;
  let p = dirOffset;
  for (const [fixed, n] of entries) {
    new DataView(fixed.buffer).setUint16(18, n.length);
    b.set(fixed, p);
    b.set(n, p + fixed.length);
    const end = p + Math.ceil((fixed.length + n.length) / 8) * 8;
    b.fill(0, p + fixed.length + n.length, end);
    p = end;
  }
  v.setBigUint64(dirSizeAt, BigInt(p - dirOffset));
  return b;
}

/** Runs a command; its exit code and output (read as UTF-8). */
async function exec(cmd: string, args: string[], cwd: string) {
  const out = await new Deno.Command(cmd, {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
    env: { NO_COLOR: "1", TZ: "UTC", LC_ALL: "C" },
  }).output();
  const text = new TextDecoder();
  return {
    code: out.code,
    stdout: text.decode(out.stdout),
    stderr: text.decode(out.stderr),
  };
}

const ours = (args: string[], cwd: string) =>
  exec(Deno.execPath(), [
    "run",
    "--no-prompt",
    `--allow-read=${cwd}`,
    `--allow-write=${cwd}`,
    CLI,
    ...args,
  ], cwd);

/** A case: the image's bytes, and what to expect of it. */
interface Case {
  name: string;
  /** The files beside it (the chain's layers, the data file). */
  beside: string[];
  make: () => Promise<Uint8Array>;
  /** Whether qemu-img (and we) can read the image's header at all. */
  opens: boolean;
  /** Whether `convert` succeeds. */
  converts: boolean;
  /**
   * Where our `convert` differs on purpose: it reads no bitmap directory
   * (the disk's data does not need it), so a bad one stops only `info`,
   * where QEMU refuses to open the image at all.
   */
  oursConverts?: boolean;
  /** A line our `info` must show (and qemu-img's, since both are equal). */
  shows?: string;
  /** A line neither shows. */
  hides?: string;
  /** Words both error messages of `info` have, and words neither has. */
  says?: string[];
  saysNot?: string[];
}

const read = (name: string) => Deno.readFile(fixture(name));
const CHAIN = [
  "layouts/chain_mid.qcow2",
  "layouts/chain_base.qcow2",
];
const top = () => read("layouts/chain_top.qcow2");
const ext = () => read("layouts/ext_data.qcow2");

const cases: Case[] = [
  {
    name: "an empty backing file name (offset 7, size 0) is no backing file",
    beside: [],
    make: async () =>
      patchHeader(await read("v3_64k.qcow2"), { backingAt: [7, 0] }),
    opens: true,
    converts: true,
    hides: "backing file:",
  },
  {
    name: "a backing file name of NULs is no backing file",
    beside: [],
    make: async () => patchHeader(await top(), { backing: latin1("\0\0\0") }),
    opens: true,
    converts: true,
    hides: "backing file:",
  },
  {
    name: "a backing file name ends at its first NUL",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), { backing: latin1("chain_mid.qcow2\0junk") }),
    opens: true,
    converts: true,
    shows: "backing file: chain_mid.qcow2",
  },
  {
    name: "a backing file name that is not UTF-8 is listed, not opened",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), { backing: latin1("chain\xffmid.qcow2") }),
    opens: true,
    converts: false,
    shows: "backing file: chain\ufffdmid.qcow2",
  },
  {
    name: "a backing file name of 1023 bytes is read (and cannot be opened)",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), { backing: latin1("a".repeat(1023)) }),
    opens: true,
    converts: false,
    shows: `backing file: ${"a".repeat(1023)}`,
  },
  {
    name: "a backing file name of 1024 bytes is refused",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), { backing: latin1("a".repeat(1024)) }),
    opens: false,
    converts: false,
  },
  {
    name: "an empty backing format is probed",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), {
        extensions: setExtension(BACKING_FORMAT, new Uint8Array()),
      }),
    opens: true,
    converts: true,
    hides: "backing file format:",
  },
  {
    name: "a backing format ends at its first NUL",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), {
        extensions: setExtension(BACKING_FORMAT, latin1("qcow2\0xy")),
      }),
    opens: true,
    converts: true,
    shows: "backing file format: qcow2",
  },
  {
    name: "a backing format that is not UTF-8 is an unknown format",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), {
        extensions: setExtension(BACKING_FORMAT, latin1("qc\xffw2")),
      }),
    opens: true,
    converts: false,
    shows: "backing file format: qc\ufffdw2",
  },
  {
    name: "a backing format of 16 bytes is refused",
    beside: CHAIN,
    make: async () =>
      patchHeader(await top(), {
        extensions: setExtension(BACKING_FORMAT, latin1("q".repeat(16))),
      }),
    opens: false,
    converts: false,
  },
  {
    name: "an empty data file name is listed and cannot be opened",
    beside: ["layouts/ext_data.data"],
    make: async () =>
      patchHeader(await ext(), {
        extensions: setExtension(DATA_FILE, new Uint8Array()),
      }),
    opens: true,
    converts: false,
    shows: "    data file: ",
  },
  {
    name: "a data file name ends at its first NUL",
    beside: ["layouts/ext_data.data"],
    make: async () =>
      patchHeader(await ext(), {
        extensions: setExtension(DATA_FILE, latin1("ext_data.data\0zz")),
      }),
    opens: true,
    converts: true,
    shows: "    data file: ext_data.data",
  },
  {
    name: "a data file name that is not UTF-8 is listed, not opened",
    beside: ["layouts/ext_data.data"],
    make: async () =>
      patchHeader(await ext(), {
        extensions: setExtension(DATA_FILE, latin1("ext\xffdata.data")),
      }),
    opens: true,
    converts: false,
    shows: "    data file: ext\ufffddata.data",
  },
  ...[
    ["an empty snapshot name", { name: new Uint8Array() }],
    ["a snapshot name cut by a NUL", { name: latin1("fi\0rst") }],
    ["a snapshot name that is not UTF-8", { name: latin1("fi\xffrst") }],
    ["a snapshot name over 255 bytes", { name: latin1("n".repeat(300)) }],
    [
      "a UTF-8 snapshot name over 255 bytes",
      { name: new TextEncoder().encode("é".repeat(150)) },
    ],
    ["a short UTF-8 snapshot name", { name: new TextEncoder().encode("é") }],
    ["an empty snapshot ID", { id: new Uint8Array() }],
    ["a snapshot ID cut by a NUL", { id: latin1("1\0x") }],
    ["a snapshot ID over 127 bytes", { id: latin1("7".repeat(200)) }],
  ].map(([name, change]) => ({
    name: name as string,
    beside: [],
    make: async () =>
      patchSnapshot(
        await read("layouts/snap.qcow2"),
        0,
        change as { id?: Uint8Array; name?: Uint8Array },
      ),
    opens: true,
    converts: true,
  })),
  ...[
    ["an empty bitmap name", new Uint8Array(), true],
    ["a bitmap name cut by a NUL", latin1("bi\0tmap"), true],
    ["a bitmap name that is not UTF-8", latin1("bi\xfftmap"), true],
    ["a bitmap name of 1023 bytes", latin1("b".repeat(1023)), true],
    ["a bitmap name of 1024 bytes is refused", latin1("b".repeat(1024)), false],
  ].map(([name, bytes, opens]) => ({
    name: name as string,
    beside: [],
    make: async () =>
      patchBitmapName(
        await read("bitmaps/bitmaps.qcow2"),
        0,
        bytes as Uint8Array,
      ),
    opens: opens as boolean,
    converts: opens as boolean,
    oursConverts: true,
  })),
  ...[
    ["an empty feature name ends the table", ["", "foo"], [], ["foo"]],
    ["a feature name ends at its first NUL", ["ab\0cd", "foo"], [
      " ab",
      "foo",
    ], ["cd"]],
    ["a feature name that is not UTF-8", ["b\xffd", "foo"], [
      "b\ufffdd",
      "foo",
    ], []],
    ["a feature name of 46 bytes", ["x".repeat(46), "foo"], [
      "x".repeat(46),
      "foo",
    ], []],
  ].map(([name, names, says, saysNot]) => ({
    name: name as string,
    beside: [],
    make: async () => {
      const table = new Uint8Array(96);
      (names as string[]).forEach((n, i) => {
        table[i * 48] = 0; // incompatible
        table[i * 48 + 1] = 20 + i; // bits 20 and 21, unknown to both
        table.set(latin1(n), i * 48 + 2);
      });
      return patchHeader(await read("v3_64k.qcow2"), {
        extensions: setExtension(FEATURE_NAMES, table),
        incompatible: (1n << 20n) | (1n << 21n),
      });
    },
    opens: false,
    converts: false,
    says: says as string[],
    saysNot: saysNot as string[],
  })),
];

for (const c of cases) {
  Deno.test({
    name: `names: ${c.name}, as qemu-img 7.2`,
    ignore: !hasQemu,
    fn: async () => {
      const dir = await tempDir();
      try {
        for (const f of c.beside) {
          await Deno.copyFile(fixture(f), `${dir}/${f.split("/").at(-1)}`);
        }
        await Deno.writeFile(`${dir}/image.qcow2`, await c.make());
        const qInfo = await exec("qemu-img", ["info", "image.qcow2"], dir);
        const info = await ours(["info", "image.qcow2"], dir);
        assertEquals(qInfo.code === 0, c.opens, qInfo.stderr);
        assertEquals(info.code === 0, c.opens, info.stderr);
        if (c.opens) assertEquals(info.stdout, qInfo.stdout);
        else assertEquals(info.stderr.split("\n").length, 2, info.stderr);
        for (const word of c.says ?? []) {
          assert(qInfo.stderr.includes(word), qInfo.stderr);
          assert(info.stderr.includes(word), info.stderr);
        }
        for (const word of c.saysNot ?? []) {
          assert(!qInfo.stderr.includes(word), qInfo.stderr);
          assert(!info.stderr.includes(word), info.stderr);
        }
        const lines = info.stdout.split("\n");
        if (c.shows) assert(lines.includes(c.shows), info.stdout);
        if (c.hides) {
          assert(!lines.some((l) => l.startsWith(c.hides!)), info.stdout);
        }
        const qConvert = await exec("qemu-img", [
          "convert",
          "-O",
          "raw",
          "image.qcow2",
          "q.raw",
        ], dir);
        const convert = await ours(["convert", "image.qcow2", "o.raw"], dir);
        assertEquals(qConvert.code === 0, c.converts, qConvert.stderr);
        const converts = c.oursConverts ?? c.converts;
        assertEquals(convert.code, converts ? 0 : 1, convert.stderr);
        if (c.converts) {
          assertEquals(
            await sha256File(`${dir}/o.raw`),
            await sha256File(`${dir}/q.raw`),
          );
        } else if (!converts) {
          // One line, no stack, nothing left under DST's name.
          assertEquals(convert.stderr.split("\n").length, 2, convert.stderr);
          assertEquals(
            await Deno.stat(`${dir}/o.raw`).catch(() => undefined),
            undefined,
          );
        }
      } finally {
        await Deno.remove(dir, { recursive: true });
      }
    },
  });
}

Deno.test("names: imageName, listedName and padName at their edges", () => {
  assertEquals(imageName(new Uint8Array()), { text: "", utf8: true });
  assertEquals(imageName(latin1("\xc3")), { text: "\ufffd", utf8: false });
  assertEquals(imageName(latin1("a\0\xff")), { text: "a", utf8: true });
  assertEquals(imageName(latin1("abc"), 0).text, "");
  assertEquals(listedName("abc", 3), "abc");
  assertEquals(listedName("abcd", 3), "abc");
  assertEquals(listedName("a\ufffdb", 2), "a\ufffd"); // U+FFFD: one byte
  assertEquals(listedName("aé", 2), "a\ufffd"); // é cut after 1 byte
  assertEquals(listedName("\u{1f600}", 4), "\u{1f600}");
  assertEquals(padName("ab", 1), "ab");
  assertEquals(padName("\ufffd", 3), "\ufffd  ");
});

Deno.test({
  name: "names: -l finds a snapshot by its whole name, not the listed one",
  ignore: !hasQemu,
  fn: async () => {
    const dir = await tempDir();
    try {
      const long = "n".repeat(300);
      await Deno.writeFile(
        `${dir}/image.qcow2`,
        patchSnapshot(await read("layouts/snap.qcow2"), 0, {
          name: latin1(long),
        }),
      );
      for (const [name, found] of [[long, true], [long.slice(0, 255), false]]) {
        const q = await exec("qemu-img", [
          "convert",
          "-l",
          name as string,
          "-O",
          "raw",
          "image.qcow2",
          "q.raw",
        ], dir);
        const o = await ours(
          ["convert", "-l", name as string, "image.qcow2", "o.raw"],
          dir,
        );
        assertEquals(q.code === 0, found, q.stderr);
        assertEquals(o.code === 0, found, o.stderr);
        if (found) {
          assertEquals(
            await sha256File(`${dir}/o.raw`),
            await sha256File(`${dir}/q.raw`),
          );
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
