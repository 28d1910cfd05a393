/**
 * `compare` against qemu-img 7.2: every pair of a set of fixtures (chains,
 * raw, qcow v1, compressed, snapshots, extended L2, bitmaps, data files),
 * plain and strict, compared in-process with qemu-img's stdout and exit
 * status; the command's messages and exit statuses for errors; disks of
 * different sizes; and two 1 TiB sparse images compared without reading
 * their holes.
 */
import { assert, assertEquals } from "@std/assert";
import {
  type ByteSource,
  compareImages,
  type CompareOptions,
  type DiskImage,
  openPath,
} from "../mod.ts";
import { compareMessages } from "../cli/compare.ts";
import { HostFiles } from "../cli/_hosts.ts";
import { openInput } from "../cli/_open.ts";
import type { FormatName } from "../cli/_args.ts";
import { cli, fixture, hasQemu, tempDir } from "./_reference.ts";

async function qemuImg(args: string[], cwd?: string) {
  const { code, stdout, stderr } = await new Deno.Command("qemu-img", {
    args,
    cwd,
    stdout: "piped",
    stderr: "piped",
  }).output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr),
  };
}

/** Opens an image as `qcow2 compare` does. */
async function open(path: string, hosts: HostFiles, format?: FormatName) {
  const { image } = await openInput(path, format, {
    openFile: async (p) => {
      const file = await openPath(p);
      hosts.add(file, p);
      return file;
    },
  }, { probeRaw: true });
  const top = (image as { source?: ByteSource }).source;
  if (top) hosts.add(top, path);
  return image;
}

/** Our answer as qemu-img prints it: stdout and exit status. */
async function ours(
  a: string,
  b: string,
  options: CompareOptions & { f?: FormatName; F?: FormatName } = {},
) {
  const hosts = new HostFiles();
  const one = await open(a, hosts, options.f);
  const two = await open(b, hosts, options.F);
  try {
    const result = await compareImages(one, two, {
      ...options,
      allocation: hosts.allocation,
    });
    return {
      code: result.kind === "identical" ? 0 : 1,
      stdout: compareMessages(result).map((l) => l + "\n").join(""),
    };
  } finally {
    one.close();
    two.close();
    hosts.close();
  }
}

const PAIRED = [
  "v3_64k.qcow2",
  "v2_64k.qcow2",
  "c512.qcow2",
  "c2m.qcow2",
  "zlib.qcow2",
  "zstd.qcow2",
  "odd_size.qcow2",
  "odd_size_zlib.qcow2",
  "prealloc_meta.qcow2",
  "layouts/chain_top.qcow2",
  "layouts/chain_mid.qcow2",
  "layouts/over_raw.qcow2",
  "layouts/rawbase.raw",
  "layouts/sub_top.qcow2",
  "layouts/snap.qcow2",
  "layouts/v1.qcow",
  "layouts/v1_comp.qcow",
  "layouts/ext_raw.data",
  "bitmaps/bitmaps.qcow2",
];

Deno.test({
  name: "compare: every pair of fixtures, plain and strict, as qemu-img",
  ignore: !hasQemu,
  async fn() {
    const dir = fixture("");
    let identical = 0;
    let different = 0;
    for (const a of PAIRED) {
      for (const b of PAIRED) {
        for (const strict of [false, true]) {
          const args = [...(strict ? ["-s"] : []), a, b];
          const theirs = await qemuImg(["compare", ...args], dir);
          const got = await ours(dir + a, dir + b, { strict });
          assertEquals(got, {
            code: theirs.code,
            stdout: theirs.stdout,
          }, `compare ${args.join(" ")}`);
          if (got.code === 0) identical++;
          else different++;
        }
      }
    }
    assert(identical > 40 && different > 400, `${identical} ${different}`);
  },
});

Deno.test({
  name: "compare: -f/-F raw, sizes that differ, tails of zeros or data",
  ignore: !hasQemu,
  async fn() {
    const dir = await tempDir();
    try {
      const q = (args: string[]) =>
        new Deno.Command("qemu-img", { args, stdout: "null" }).output();
      const io = (file: string, command: string) =>
        new Deno.Command("qemu-io", {
          args: ["-c", command, file],
          stdout: "null",
        }).output();
      const small = `${dir}/small.qcow2`;
      const big = `${dir}/big.qcow2`;
      const bigData = `${dir}/big_data.qcow2`;
      const bigZero = `${dir}/big_zero.qcow2`;
      await q(["create", "-q", "-f", "qcow2", small, "1M"]);
      await io(small, "write -P 0x61 4k 8k");
      for (const f of [big, bigData, bigZero]) {
        await q(["create", "-q", "-f", "qcow2", f, "3M"]);
        await io(f, "write -P 0x61 4k 8k");
      }
      await io(bigData, "write -P 0x62 2M 1k");
      await io(bigZero, "write -P 0 2M 64k");
      await io(bigZero, "write -z 2560k 64k");
      const raw = `${dir}/small.raw`;
      await q(["convert", "-O", "raw", small, raw]);
      const odd = `${dir}/odd.raw`;
      await Deno.writeFile(
        odd,
        (await Deno.readFile(raw)).subarray(0, 1000000),
      );
      const cases: [string, string, FormatName?, FormatName?][] = [
        [small, big],
        [big, small],
        [small, bigData],
        [bigData, small],
        [small, bigZero],
        [raw, small],
        [small, raw],
        [odd, raw],
        [raw, odd],
        [small, small, "raw"],
        [small, small, undefined, "raw"],
        [small, small, "raw", "raw"],
      ];
      for (const [a, b, f, F] of cases) {
        for (const strict of [false, true]) {
          const args = [
            ...(strict ? ["-s"] : []),
            ...(f ? ["-f", f] : []),
            ...(F ? ["-F", F] : []),
            a,
            b,
          ];
          const theirs = await qemuImg(["compare", ...args]);
          const got = await ours(a, b, { strict, f, F });
          assertEquals(
            got,
            { code: theirs.code, stdout: theirs.stdout },
            args.join(" "),
          );
        }
      }
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "compare: the command's messages and exit statuses (0, 1, 2, usage)",
  ignore: !hasQemu,
  async fn() {
    const zlib = fixture("zlib.qcow2");
    const zstd = fixture("zstd.qcow2");
    const v3 = fixture("v3_64k.qcow2");
    const read = `--allow-read=${fixture("")}`;
    const cases: string[][] = [
      [zlib, zstd],
      [zlib, v3],
      ["-q", zlib, v3],
      ["-s", "-U", zlib, zstd],
      ["-f", "qcow", zlib, zstd],
      [fixture("nope.qcow2"), zstd],
      [zlib],
      ["-Z", zlib, zstd],
    ];
    for (const args of cases) {
      const theirs = await qemuImg(["compare", ...args]);
      const got = await cli([read, "--allow-ffi"], ["compare", ...args]);
      assertEquals(got.code, theirs.code, `${args.join(" ")}: ${got.stderr}`);
      assertEquals(got.stdout, theirs.stdout, args.join(" "));
      if (got.code >= 2) {
        assertEquals(got.stderr.trim().split("\n").length, 1, got.stderr);
      }
    }
    const usage = await cli([read], ["compare", zlib]);
    assertEquals(
      usage.stderr,
      "qcow2: Expecting two image file names\nTry 'qcow2 compare --help'.\n",
    );
    const lacking = await cli([read], ["compare", "-T", "none", zlib, zstd]);
    assertEquals(lacking.code, 1);
    assert(lacking.stderr.startsWith("qcow2: qemu-img's option -T SRC_CACHE"));
  },
});

Deno.test({
  name:
    "compare: two 1 TiB sparse images are compared without reading their holes",
  ignore: !hasQemu,
  async fn() {
    const dir = await tempDir();
    try {
      const a = `${dir}/a.qcow2`;
      const b = `${dir}/b.qcow2`;
      for (const f of [a, b]) {
        await new Deno.Command("qemu-img", {
          args: ["create", "-q", "-f", "qcow2", f, "1T"],
        }).output();
        await new Deno.Command("qemu-io", {
          args: ["-c", "write -P 7 512G 64k", f],
          stdout: "null",
        }).output();
      }
      const hosts = new HostFiles();
      const images = [await open(a, hosts), await open(b, hosts)];
      let bytesRead = 0;
      const counted = images.map((image): DiskImage => ({
        size: image.size,
        extents: (s, e) => image.extents(s, e),
        read: (position, buffer) => {
          bytesRead += buffer.length;
          return image.read(position, buffer);
        },
        close: () => image.close(),
        ...({ source: (image as { source?: ByteSource }).source }),
      }));
      const started = performance.now();
      const result = await compareImages(images[0], images[1], {
        allocation: hosts.allocation,
      });
      const ms = performance.now() - started;
      assertEquals(result, { kind: "identical", sizeMismatch: false });
      assert(ms < 5000, `${ms} ms`);
      // Through a plain DiskImage (extents only): still only the data read.
      const plain = await compareImages(counted[0], counted[1]);
      assertEquals(plain, { kind: "identical", sizeMismatch: false });
      assertEquals(bytesRead, 2 * 65536);
      for (const image of images) image.close();
      hosts.close();
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name:
    "compare and measure open encrypted images with a password, as qemu-img",
  ignore: !hasQemu,
  async fn() {
    const dir = await tempDir();
    try {
      const gz = await Deno.readFile(
        fixture("crypto/luks_aes256_cbc_essiv_sha512.qcow2.gz"),
      );
      const stream = new Blob([gz]).stream().pipeThrough(
        new DecompressionStream("gzip"),
      );
      const luks = `${dir}/luks.qcow2`;
      await Deno.writeFile(
        luks,
        new Uint8Array(await new Response(stream).arrayBuffer()),
      );
      const pw = `${dir}/pw`;
      await Deno.writeTextFile(pw, "fixture-password");
      const plain = `${dir}/plain.qcow2`;
      const opts = `driver=qcow2,file.filename=${luks},encrypt.key-secret=s`;
      await new Deno.Command("qemu-img", {
        args: [
          "convert",
          "--object",
          `secret,id=s,file=${pw}`,
          "--image-opts",
          opts,
          "-O",
          "qcow2",
          plain,
        ],
      }).output();
      const flags = [`--allow-read=${dir}`, "--allow-ffi"];
      const same = await cli(flags, [
        "compare",
        "--password-file",
        pw,
        luks,
        luks,
      ]);
      assertEquals(
        [same.code, same.stdout],
        [0, "Images are identical.\n"],
        same.stderr,
      );
      const objects = await cli(flags, [
        "compare",
        "--object",
        `secret,id=s,file=${pw}`,
        "--image-opts",
        opts,
        `driver=qcow2,file.filename=${plain}`,
      ]);
      assertEquals([objects.code, objects.stdout], [
        0,
        "Images are identical.\n",
      ], objects.stderr);
      const ours = await cli(flags, [
        "measure",
        "--output=json",
        "-O",
        "qcow2",
        "--password-file",
        pw,
        luks,
      ]);
      const theirs = await qemuImg([
        "measure",
        "--output=json",
        "-O",
        "qcow2",
        "--object",
        `secret,id=s,file=${pw}`,
        "--image-opts",
        opts,
      ]);
      assertEquals(ours.code, 0, ours.stderr);
      assertEquals(JSON.parse(ours.stdout), JSON.parse(theirs.stdout));
      const none = await cli(flags, ["compare", luks, plain]);
      assertEquals(none.code, 2);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
