/**
 * Encrypted images on the command line and in `info`: qemu-img's text and
 * JSON without a password, `--password-file`, `--object secret` with
 * `--image-opts`, and one-line errors that leave nothing behind; damaged
 * LUKS headers named by field, where qemu-img fails too.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import { readHeader } from "../mod.ts";
import { cli } from "./_reference.ts";
import {
  CRYPTO_FIXTURES,
  cryptoDir,
  cryptoFixture,
  PASSWORD,
  qemuDecrypt,
} from "./_crypto.ts";

async function qemu(args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command("qemu-img", { args })
    .output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr),
  };
}

for (const { name } of CRYPTO_FIXTURES) {
  Deno.test(`info of ${name} without a password is qemu-img's`, async () => {
    const dir = await cryptoDir();
    const path = `${dir}/${name}`;
    const flags = [`--allow-read=${dir}`];
    const text = await cli(flags, ["info", path]);
    assertEquals(text.code, 0, text.stderr);
    assertEquals(text.stdout, (await qemu(["info", path])).stdout);
    const json = await cli(flags, ["info", "--json", path]);
    assertEquals(json.code, 0, json.stderr);
    const ours = JSON.parse(json.stdout);
    delete ours["qcow2-header"];
    const theirs = (await qemu(["info", "--output=json", path])).stdout;
    assertEquals(JSON.stringify(ours, null, 4) + "\n", theirs);
    assertEquals(ours.encrypted, true);
  });
}

Deno.test("convert with --password-file and with --object/--image-opts", async () => {
  const dir = await cryptoDir();
  const src = await cryptoFixture("luks_default.qcow2");
  const pw = `${dir}/pw.txt`;
  await Deno.writeTextFile(pw, PASSWORD);
  const expected = await qemuDecrypt(src, PASSWORD);
  const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
  const a = await cli(flags, [
    "convert",
    "--password-file",
    pw,
    src,
    `${dir}/a.raw`,
  ]);
  assertEquals([a.code, a.stderr], [0, ""]);
  assertEquals(await Deno.readFile(`${dir}/a.raw`), expected);
  const b = await cli(flags, [
    "convert",
    "--object",
    `secret,id=sec0,file=${pw}`,
    "--image-opts",
    `driver=qcow2,file.filename=${src},encrypt.key-secret=sec0`,
    `${dir}/b.raw`,
  ]);
  assertEquals([b.code, b.stderr], [0, ""]);
  assertEquals(await Deno.readFile(`${dir}/b.raw`), expected);
  const base64 = btoa(PASSWORD);
  const c = await cli(flags, [
    "convert",
    "--object",
    `secret,id=s,data=${base64},format=base64`,
    "--image-opts",
    `driver=qcow2,file.filename=${src},encrypt.key-secret=s`,
    "-",
  ]);
  assertEquals(c.code, 0, c.stderr);
  assertEquals(c.bytes, expected);
  for (const f of ["a.raw", "b.raw", "pw.txt"]) {
    await Deno.remove(`${dir}/${f}`);
  }
});

Deno.test("convert errors are one line and leave no output", async () => {
  const dir = await cryptoDir();
  const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
  const wrong = `${dir}/wrong.txt`;
  await Deno.writeTextFile(wrong, "not-the-password");
  const pw = `${dir}/pw2.txt`;
  await Deno.writeTextFile(pw, PASSWORD);
  const cases: [string[], string][] = [
    [["luks_default.qcow2"], "give --password-file"],
    [["aes.qcow"], "give --password-file"],
    [
      ["--password-file", wrong, "luks_default.qcow2"],
      "no key slot opens with this password",
    ],
    [["--password-file", pw, "luks_twofish.qcow2"], "twofish-128"],
  ];
  for (const [args, message] of cases) {
    const src = `${dir}/${args.at(-1)}`;
    const out = `${dir}/out.raw`;
    const r = await cli(flags, ["convert", ...args.slice(0, -1), src, out]);
    assertEquals(r.code, 1, r.stderr);
    assertStringIncludes(r.stderr, message);
    assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    assertEquals(await Deno.stat(out).catch(() => null), null);
  }
  await Deno.remove(wrong);
  await Deno.remove(pw);
});

/** Patches of the LUKS header, the field we name, and QEMU's refusal. */
const DAMAGES: [string, (v: DataView) => void, string][] = [
  ["magic", (v) => v.setUint8(0, 0x6c), "magic"],
  ["version", (v) => v.setUint16(6, 2), "version"],
  ["stripes", (v) => v.setUint32(208 + 48 * 3 + 44, 0), "key slot 3 stripes"],
  ["state", (v) => v.setUint32(208 + 48 * 2, 0x1234), "key slot 2 active"],
  [
    "payload overlap",
    (v) => v.setUint32(104, 8),
    "key slot 0 key_offset",
  ],
  [
    "slots overlap",
    (v) => v.setUint32(208 + 48 * 1 + 40, v.getUint32(208 + 40)),
    "key slot 0 key_offset",
  ],
  ["mode format", (v) => setText(v, 40, "xtsplain64"), "cipher_mode"],
  ["mode", (v) => setText(v, 40, "gcm-plain64"), "cipher_mode"],
  ["ivgen", (v) => setText(v, 40, "xts-random"), "cipher_mode"],
  ["essiv hash", (v) => setText(v, 40, "xts-essiv"), "cipher_mode"],
  ["essiv size", (v) => setText(v, 40, "xts-essiv:sha1"), "cipher_mode"],
  ["ivgen hash", (v) => setText(v, 40, "xts-plain64:whirlpool"), "cipher_mode"],
  ["cipher", (v) => setText(v, 8, "blowfish"), "cipher_name"],
  ["key size", (v) => v.setUint32(108, 40), "key_bytes"],
  ["hash", (v) => setText(v, 72, "sha3"), "hash_spec"],
];

function setText(view: DataView, at: number, text: string) {
  for (let i = 0; i < 32; i++) view.setUint8(at + i, 0);
  new TextEncoder().encode(text).forEach((b, i) => view.setUint8(at + i, b));
}

Deno.test("damaged LUKS headers: the field is named, and qemu-img refuses them too", async () => {
  const dir = await cryptoDir();
  const good = await Deno.readFile(await cryptoFixture("luks_default.qcow2"));
  const at = (await readHeader(good)).extensions.encryption!.offset;
  const pw = `${dir}/pw3.txt`;
  await Deno.writeTextFile(pw, PASSWORD);
  for (const [label, patch, field] of DAMAGES) {
    const bytes = good.slice();
    patch(new DataView(bytes.buffer, at));
    const path = `${dir}/damaged.qcow2`;
    await Deno.writeFile(path, bytes);
    const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    for (
      const args of [["info", path], [
        "convert",
        "--password-file",
        pw,
        path,
        `${dir}/d.raw`,
      ]]
    ) {
      const r = await cli(flags, args);
      assertEquals(r.code, 1, `${label}: ${r.stdout}`);
      assertStringIncludes(r.stderr, `field ${field}`, label);
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
    }
    const theirs = await qemu(["info", path]);
    assert(theirs.code !== 0, `qemu-img info accepts the damaged ${label}`);
  }
  await Deno.remove(pw);
  await Deno.remove(`${dir}/damaged.qcow2`);
});

Deno.test("map of encrypted images: qemu-img's JSON (no offsets), with a password", async () => {
  const dir = await cryptoDir();
  const pw = `${dir}/pw4.txt`;
  await Deno.writeTextFile(pw, PASSWORD);
  for (const name of ["luks_aes128_cbc_essiv_sha256.qcow2", "aes.qcow2"]) {
    const path = `${dir}/${name}`;
    const ours = await cli([`--allow-read=${dir}`], [
      "map",
      "--output=json",
      "--password-file",
      pw,
      path,
    ]);
    assertEquals(ours.code, 0, ours.stderr);
    const theirs = await qemu([
      "map",
      "--output=json",
      "--object",
      `secret,id=s,data=${PASSWORD}`,
      "--image-opts",
      `driver=qcow2,file.filename=${path},encrypt.key-secret=s`,
    ]);
    assertEquals(ours.stdout, theirs.stdout);
    const none = await cli([`--allow-read=${dir}`], ["map", path]);
    assertEquals(none.code, 1);
    assertStringIncludes(none.stderr, "--password-file");
  }
  await Deno.remove(pw);
});
