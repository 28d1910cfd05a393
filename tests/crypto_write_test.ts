/**
 * Writing LUKS images: `createLuks` with the writer (library), `create` and
 * `convert -O qcow2` with `-o encrypt.*` (CLI). qemu-img opens what we
 * write with the same password: `check` clean, `compare` identical to the
 * source, `info` showing the cipher asked for.
 */
import { assert, assertEquals, assertStringIncludes } from "@std/assert";
import {
  convertToQcow2,
  createLuks,
  type LuksCreateOptions,
  memoryTarget,
  nodeCrypto,
  openImage,
} from "../mod.ts";
import { cli, tempDir } from "./_reference.ts";

const PASSWORD = "write-password";

async function qemu(args: string[]) {
  const { code, stdout, stderr } = await new Deno.Command("qemu-img", { args })
    .output();
  return {
    code,
    stdout: new TextDecoder().decode(stdout),
    stderr: new TextDecoder().decode(stderr),
  };
}

function opts(path: string, id = "s") {
  return [
    "--object",
    `secret,id=${id},data=${PASSWORD}`,
    "--image-opts",
    `driver=qcow2,file.filename=${path},encrypt.key-secret=${id}`,
  ];
}

/** 1 MiB + 3 sectors: random, then text, then zeros, then random. */
function source(): Uint8Array {
  const bytes = new Uint8Array(1024 * 1024 + 1536);
  for (let at = 0; at < 256 * 1024; at += 65536) {
    crypto.getRandomValues(bytes.subarray(at, at + 65536));
  }
  new TextEncoder().encodeInto(
    "hello ".repeat(50000),
    bytes.subarray(256 * 1024, 512 * 1024),
  );
  crypto.getRandomValues(bytes.subarray(bytes.length - 4096));
  return bytes;
}

const CASES: [string, LuksCreateOptions, string][] = [
  ["aes-256-xts-plain64 (defaults)", {}, "aes-256 xts plain64 sha256"],
  ["aes-128-cbc-essiv:sha256, sha1", {
    cipherAlg: "aes-128",
    cipherMode: "cbc",
    ivgenAlg: "essiv",
    hashAlg: "sha1",
  }, "aes-128 cbc essiv sha1"],
  [
    "aes-256-ctr-plain64, sha512",
    { cipherMode: "ctr", hashAlg: "sha512" },
    "aes-256 ctr plain64 sha512",
  ],
  [
    "aes-128-ecb",
    { cipherAlg: "aes-128", cipherMode: "ecb" },
    "aes-128 ecb plain64 sha256",
  ],
  ["aes-192-xts-plain, sha384", {
    cipherAlg: "aes-192",
    ivgenAlg: "plain",
    hashAlg: "sha384",
  }, "aes-192 xts plain sha384"],
];

for (const [label, options, expected] of CASES) {
  Deno.test(`convertToQcow2 with LUKS ${label}: qemu-img reads it`, async () => {
    const dir = await tempDir();
    try {
      const raw = source();
      await Deno.writeFile(`${dir}/src.raw`, raw);
      const luks = await createLuks(
        nodeCrypto,
        { iterTime: 10, ...options },
        PASSWORD,
      );
      const target = memoryTarget();
      await convertToQcow2(raw, target, { luks, clusterSize: 4096 });
      luks.encryption.close();
      const path = `${dir}/out.qcow2`;
      await Deno.writeFile(path, target.bytes());
      const check = await qemu(["check", ...opts(path)]);
      assertEquals(check.code, 0, check.stdout + check.stderr);
      assertStringIncludes(check.stdout, "No errors were found");
      const compare = await qemu([
        "compare",
        ...opts(path),
        `driver=raw,file.filename=${dir}/src.raw`,
      ]);
      assertEquals(compare.code, 0, compare.stdout + compare.stderr);
      const info = JSON.parse(
        (await qemu(["info", "--output=json", path])).stdout,
      )["format-specific"].data.encrypt;
      assertEquals(
        [
          info["cipher-alg"],
          info["cipher-mode"],
          info["ivgen-alg"],
          info["hash-alg"],
        ].join(" "),
        expected,
      );
      // And we read it back.
      const image = await openImage(path, { password: PASSWORD });
      const back = new Uint8Array(image.size);
      await image.read(0, back);
      image.close();
      assertEquals(back.subarray(0, raw.length), raw);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  });
}

Deno.test("cli create and convert -O qcow2 -o encrypt.format=luks: qemu-img agrees", async () => {
  const dir = await tempDir();
  try {
    const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    await Deno.writeFile(`${dir}/src.raw`, source());
    await Deno.writeTextFile(`${dir}/pw`, PASSWORD);
    // create, the password from --object/key-secret
    const made = await cli(flags, [
      "create",
      "--object",
      `secret,id=sec0,file=${dir}/pw`,
      "-o",
      "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
      `${dir}/new.qcow2`,
      "4M",
    ]);
    assertEquals(made.code, 0, made.stderr);
    assertStringIncludes(
      made.stdout,
      "fmt=qcow2 encrypt.format=luks encrypt.key-secret=sec0 encrypt.iter-time=10 cluster_size=65536",
    );
    const check = await qemu(["check", ...opts(`${dir}/new.qcow2`)]);
    assertEquals(check.code, 0, check.stdout + check.stderr);
    const ours = await cli(flags, [
      "info",
      "--output=json",
      `${dir}/new.qcow2`,
    ]);
    const theirs = await qemu(["info", "--output=json", `${dir}/new.qcow2`]);
    const a = JSON.parse(ours.stdout);
    delete a["qcow2-header"];
    assertEquals(a, JSON.parse(theirs.stdout));
    assertEquals(a["format-specific"].data.encrypt["cipher-alg"], "aes-256");
    // convert, the password from --password-file
    const converted = await cli(flags, [
      "convert",
      "-O",
      "qcow2",
      "-o",
      "encrypt.format=luks,encrypt.cipher-alg=aes-128,encrypt.cipher-mode=cbc,encrypt.ivgen-alg=essiv,encrypt.iter-time=10",
      "--password-file",
      `${dir}/pw`,
      `${dir}/src.raw`,
      `${dir}/conv.qcow2`,
    ]);
    assertEquals(converted.code, 0, converted.stderr);
    const compare = await qemu([
      "compare",
      ...opts(`${dir}/conv.qcow2`),
      `driver=raw,file.filename=${dir}/src.raw`,
    ]);
    assertEquals(compare.code, 0, compare.stdout + compare.stderr);
    const check2 = await qemu(["check", ...opts(`${dir}/conv.qcow2`)]);
    assertEquals(check2.code, 0, check2.stdout + check2.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("createLuks refuses AES-192 outside XTS, which QEMU cannot open", async () => {
  const error = await createLuks(nodeCrypto, {
    cipherAlg: "aes-192",
    cipherMode: "cbc",
    iterTime: 1,
  }, PASSWORD).then(() => undefined, (e) => e);
  assert(error instanceof RangeError);
  assertStringIncludes(error.message, "QEMU cannot open");
});

Deno.test("refused: legacy AES (QEMU discourages it), twofish, no password", async () => {
  const dir = await tempDir();
  try {
    const flags = [`--allow-read=${dir}`, `--allow-write=${dir}`];
    const cases: [string, string][] = [
      ["encrypt.format=aes,encrypt.key-secret=s", "QEMU discourages"],
      [
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-alg=twofish-256",
        "twofish-256",
      ],
      ["encrypt.format=luks", "encrypt.key-secret"],
      [
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.cipher-mode=gcm",
        "encrypt.cipher-mode",
      ],
    ];
    for (const [o, message] of cases) {
      const r = await cli(flags, [
        "create",
        "--object",
        `secret,id=s,data=${PASSWORD}`,
        "-o",
        o,
        `${dir}/x.qcow2`,
        "1M",
      ]);
      assertEquals(r.code, 1, r.stderr);
      assertStringIncludes(r.stderr, message);
      assertEquals(r.stderr.trim().split("\n").length, 1, r.stderr);
      assert(!(await Deno.stat(`${dir}/x.qcow2`).catch(() => null)));
    }
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("a writable LUKS image encrypts what it writes: qemu-img reads the same bytes", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/rw.qcow2`;
    // qemu-img makes the image (4 KiB clusters, over a backing file), we write.
    const base = `${dir}/base.raw`;
    const baseBytes = source().subarray(0, 512 * 1024);
    await Deno.writeFile(base, baseBytes);
    let made;
    for (let attempt = 0; attempt < 8; attempt++) {
      made = await qemu([
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        base,
        "-F",
        "raw",
        "--object",
        `secret,id=s,data=${PASSWORD}`,
        "-o",
        "encrypt.format=luks,encrypt.key-secret=s,encrypt.iter-time=10,cluster_size=4096",
        path,
        "1M",
      ]);
      if (made.code === 0) break; // its PBKDF2 calibration fails now and then
    }
    assertEquals(made!.code, 0, made!.stderr);
    const expected = new Uint8Array(1024 * 1024);
    expected.set(baseBytes);
    const image = await openImage(path, { writable: true, password: PASSWORD });
    const ops: [number, number, number][] = [
      [0, 512, 0x11], // a sector
      [1000, 3000, 0x22], // inside a cluster, not on sectors
      [8192 + 100, 9000, 0x33], // across clusters, over the backing file
      [600 * 1024, 70000, 0x44], // past the backing file
      [1024 * 1024 - 300, 300, 0x55], // the end
    ];
    for (const [at, length, value] of ops) {
      const bytes = new Uint8Array(length).fill(value);
      await image.write(at, bytes);
      expected.set(bytes, at);
    }
    await image.writeZeroes(2048, 1024);
    expected.fill(0, 2048, 3072);
    const back = new Uint8Array(expected.length);
    await image.read(0, back);
    assertEquals(back, expected);
    await image.close();
    await Deno.writeFile(`${dir}/expected.raw`, expected);
    const compare = await qemu([
      "compare",
      ...opts(path),
      `driver=raw,file.filename=${dir}/expected.raw`,
    ]);
    assertEquals(compare.code, 0, compare.stdout + compare.stderr);
    const check = await qemu(["check", ...opts(path)]);
    assertEquals(check.code, 0, check.stdout + check.stderr);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("legacy AES images are not opened for writing", async () => {
  const dir = await tempDir();
  try {
    const path = `${dir}/aes.qcow2`;
    const made = await qemu([
      "create",
      "-q",
      "-f",
      "qcow2",
      "--object",
      `secret,id=s,data=${PASSWORD}`,
      "-o",
      "encrypt.format=aes,encrypt.key-secret=s",
      path,
      "1M",
    ]);
    assertEquals(made.code, 0, made.stderr);
    const error = await openImage(path, { writable: true, password: PASSWORD })
      .then(() => undefined, (e) => e);
    assertEquals(error?.code, "NOT_WRITABLE");
    assertStringIncludes(error.message, "QEMU discourages");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});
