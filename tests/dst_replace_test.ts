/**
 * An existing DST is replaced as qemu-img writes it (found by a newcomer's
 * trial, 2026-12-06), but atomically where we can: a symbolic link is
 * written through (the file it points at gets the image, the link stays),
 * the old file's mode and owner are kept, and a file we may write in a
 * directory we may not is written in place. A failure leaves the old file
 * as it was wherever a temporary file could be used.
 */

import { assert, assertEquals } from "@std/assert";
import { cli, fixture, tempDir } from "./_reference.ts";

/** What writes `dst` in each of the three writers. */
const WRITES = (src: string, dst: string): string[][] => [
  ["convert", "-O", "qcow2", src, dst],
  ["convert", src, dst],
  ["create", "-q", "-f", "qcow2", dst, "1M"],
];

/** A qcow2 whose first compressed cluster is damaged: convert fails midway. */
async function damaged(dir: string): Promise<string> {
  const bad = new Uint8Array(await Deno.readFile(fixture("zlib.qcow2")));
  bad.fill(0xff, 0x50000, 0x50000 + 512);
  await Deno.writeFile(`${dir}/bad.qcow2`, bad);
  return `${dir}/bad.qcow2`;
}

/** The names in `dir`, sorted. */
function names(dir: string): string[] {
  return [...Deno.readDirSync(dir)].map((e) => e.name).sort();
}

/** Asserts `path` holds what `args` should have written there. */
async function holdsImage(
  flags: string[],
  args: string[],
  path: string,
): Promise<void> {
  if (args[0] === "create") {
    const info = await cli(flags, ["info", "--output=json", path]);
    assertEquals(info.code, 0, info.stderr);
    assertEquals(JSON.parse(info.stdout)["virtual-size"], 2 ** 20);
  } else {
    const src = args.at(-2)!;
    const compared = await cli(flags, ["compare", src, path]);
    assertEquals(compared.code, 0, `${args.join(" ")}: ${compared.stdout}`);
  }
}

Deno.test("cli convert and create: a symlink DST is written through, the link kept, the target's mode kept", async () => {
  const dir = await tempDir();
  try {
    await Deno.mkdir(`${dir}/links`);
    await Deno.mkdir(`${dir}/images`);
    const src = fixture("v3_64k.qcow2");
    const flags = [`--allow-read=${src},${dir}`, `--allow-write=${dir}`];
    for (const args of WRITES(src, `${dir}/links/disk`)) {
      const target = `${dir}/images/disk.img`;
      await Deno.writeTextFile(target, "an earlier image", { mode: 0o600 });
      await Deno.chmod(target, 0o600);
      await Deno.symlink("../images/disk.img", `${dir}/links/disk`);
      const r = await cli(flags, args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      assertEquals(
        await Deno.readLink(`${dir}/links/disk`),
        "../images/disk.img",
      );
      await holdsImage(flags, args, target);
      assertEquals((await Deno.stat(target)).mode! & 0o777, 0o600);
      assertEquals(names(`${dir}/images`), ["disk.img"]);
      assertEquals(names(`${dir}/links`), ["disk"]);
      await Deno.remove(`${dir}/links/disk`);
      await Deno.remove(target);
    }
    // A link to nothing: the file it names is made, as open(2) makes it.
    for (const args of WRITES(src, `${dir}/links/dangling`)) {
      await Deno.symlink("../images/new.img", `${dir}/links/dangling`);
      const r = await cli(flags, args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      assert((await Deno.lstat(`${dir}/links/dangling`)).isSymlink);
      await holdsImage(flags, args, `${dir}/images/new.img`);
      await Deno.remove(`${dir}/links/dangling`);
      await Deno.remove(`${dir}/images/new.img`);
    }
    // A failure leaves the target as it was, and no temporary file.
    await Deno.writeTextFile(`${dir}/images/disk.img`, "keep me");
    await Deno.symlink("../images/disk.img", `${dir}/links/disk`);
    const bad = await damaged(dir);
    for (const args of WRITES(bad, `${dir}/links/disk`).slice(0, 2)) {
      const r = await cli(flags, args);
      assertEquals(r.code, 1, `${args.join(" ")}: ${r.stderr}`);
      assertEquals(
        await Deno.readTextFile(`${dir}/images/disk.img`),
        "keep me",
      );
      assertEquals(names(`${dir}/images`), ["disk.img"]);
      assertEquals(names(`${dir}/links`), ["disk"]);
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert and create: a symlink DST with write access to the link alone is written in place through it", async () => {
  const dir = await tempDir();
  try {
    await Deno.mkdir(`${dir}/links`);
    await Deno.mkdir(`${dir}/images`);
    const src = fixture("v3_64k.qcow2");
    const link = `${dir}/links/disk`;
    const target = `${dir}/images/disk.img`;
    await Deno.symlink("../images/disk.img", link);
    // Deno checks the path named, not where the link leads.
    const flags = [`--allow-read=${src},${link}`, `--allow-write=${link}`];
    for (const args of WRITES(src, link)) {
      await Deno.writeTextFile(target, "an earlier image");
      const r = await cli(flags, args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      assert((await Deno.lstat(link)).isSymlink);
      await holdsImage([`--allow-read=${src},${dir}`], args, target);
    }
    // Written in place, a failure empties the target (the link stays).
    const bad = await damaged(dir);
    const r = await cli([
      `--allow-read=${bad},${link}`,
      `--allow-write=${link}`,
    ], [
      "convert",
      "-O",
      "qcow2",
      bad,
      link,
    ]);
    assertEquals(r.code, 1, r.stderr);
    assert((await Deno.lstat(link)).isSymlink);
    assertEquals((await Deno.stat(target)).size, 0);
    assertEquals(names(`${dir}/images`), ["disk.img"]);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert and create: an existing DST keeps its mode and owner", async () => {
  const dir = await tempDir();
  try {
    const src = fixture("v3_64k.qcow2");
    const dst = `${dir}/private.img`;
    const flags = [`--allow-read=${src},${dir}`, `--allow-write=${dir}`];
    // As root the owner can be given away (and must be kept); otherwise
    // the file is ours already.
    const root = Deno.uid() === 0;
    for (const args of WRITES(src, dst)) {
      await Deno.writeTextFile(dst, "an earlier image");
      await Deno.chmod(dst, 0o640);
      if (root) await Deno.chown(dst, 1234, 5678);
      const before = await Deno.stat(dst);
      const r = await cli(flags, args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      const after = await Deno.stat(dst);
      assertEquals(after.mode! & 0o777, 0o640);
      assertEquals([after.uid, after.gid], [before.uid, before.gid]);
      if (root) assertEquals([after.uid, after.gid], [1234, 5678]);
      await holdsImage(flags, args, dst);
      await Deno.remove(dst);
    }
    // A new DST: the usual mode of a new file (0644 under umask 022).
    const r = await cli(flags, ["convert", "-O", "qcow2", src, dst]);
    assertEquals(r.code, 0, r.stderr);
    assertEquals((await Deno.stat(dst)).mode! & 0o777, 0o666 & ~umask());
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("cli convert and create: an existing DST we may write, in a directory we may not, is written in place", async () => {
  const dir = await tempDir();
  const locked = `${dir}/locked`;
  await Deno.mkdir(locked);
  const dst = `${locked}/disk.img`;
  await Deno.writeTextFile(dst, "an earlier image");
  // Not root: a directory without write permission. Root writes anywhere
  // but in an immutable directory (chattr +i; ext4, as here).
  const root = Deno.uid() === 0;
  const lock = async (on: boolean) => {
    const { code, stderr } = await new Deno.Command(
      root ? "chattr" : "chmod",
      { args: [root ? (on ? "+i" : "-i") : (on ? "555" : "755"), locked] },
    ).output();
    assertEquals(code, 0, new TextDecoder().decode(stderr));
  };
  await lock(true);
  try {
    const src = fixture("v3_64k.qcow2");
    const flags = [`--allow-read=${src},${dir}`, `--allow-write=${dir}`];
    for (const args of WRITES(src, dst)) {
      const r = await cli(flags, args);
      assertEquals(r.code, 0, `${args.join(" ")}: ${r.stderr}`);
      await holdsImage(flags, args, dst);
      assertEquals(names(locked), ["disk.img"]);
    }
    // A new file there cannot be made: one line naming the directory.
    const r = await cli(flags, [
      "convert",
      "-O",
      "qcow2",
      src,
      `${locked}/new`,
    ]);
    assertEquals(r.code, 1);
    assertEquals(
      r.stderr,
      `qcow2: Cannot write '${locked}/new': the system denies writing in '${locked}': check its owner and mode\n`,
    );
  } finally {
    await lock(false);
    await Deno.remove(dir, { recursive: true });
  }
});

/** The umask a child process inherits from this one. */
function umask(): number {
  const line = new Deno.Command("sh", { args: ["-c", "umask"] }).outputSync();
  return parseInt(new TextDecoder().decode(line.stdout).trim(), 8);
}
