/**
 * Reading encrypted images: every fixture qemu-img made (LUKS in each AES
 * mode, IV generator and hash; legacy AES in qcow2 and qcow) reads as the
 * bytes `qemu-img convert` decrypts, with node:crypto and with the portable
 * primitives; no password, a wrong password and refused ciphers fail with
 * their codes.
 */
import { assert, assertEquals, assertRejects } from "@std/assert";
import {
  nodeCrypto,
  openImage,
  Qcow2Error,
  webCrypto,
  workerCrypto,
} from "../mod.ts";
import {
  CRYPTO_FIXTURES,
  cryptoFixture,
  PASSWORD,
  qemuDecrypt,
} from "./_crypto.ts";

const readable = CRYPTO_FIXTURES.filter((f) =>
  !/twofish|serpent|cast5/.test(f.name)
);

async function readAll(
  path: string,
  options: Parameters<typeof openImage>[1],
): Promise<Uint8Array> {
  const image = await openImage(path, options);
  try {
    const out = new Uint8Array(image.size);
    // Odd pieces: reads that start and end inside sectors and clusters.
    for (let at = 0; at < out.length;) {
      const n = Math.min(out.length - at, 70_000 + (at % 3) * 333);
      await image.read(at, out.subarray(at, at + n));
      at += n;
    }
    return out;
  } finally {
    image.close();
  }
}

Deno.test("the encrypted fixture set is complete", () => {
  assertEquals(CRYPTO_FIXTURES.map((f) => f.name), [
    "aes.qcow",
    "aes.qcow2",
    "aes_v2.qcow2",
    "luks_aes128_cbc_essiv_sha256.qcow2",
    "luks_aes128_cbc_plain64_sha1.qcow2",
    "luks_aes128_ecb.qcow2",
    "luks_aes128_xts_sha1.qcow2",
    "luks_aes192_xts_plain_sha384.qcow2",
    "luks_aes256_cbc_essiv_sha512.qcow2",
    "luks_aes256_ctr_plain64.qcow2",
    "luks_aes256_xts_essiv.qcow2",
    "luks_cast5.qcow2",
    "luks_default.qcow2",
    "luks_serpent.qcow2",
    "luks_two_slots.qcow2",
    "luks_twofish.qcow2",
  ]);
});

for (const { name, password } of readable) {
  Deno.test(`${name} reads as qemu-img decrypts it`, async () => {
    const path = await cryptoFixture(name);
    const expected = await qemuDecrypt(path, password);
    // The test can fail: the written patterns are there.
    assertEquals(expected[0], 0x11);
    assertEquals(expected[9 * 1024], 0x22);
    assertEquals(expected.at(-1), 0x33);
    const ours = await readAll(path, { password });
    assert(ours.every((b, i) => b === expected[i]), "node:crypto read differs");
    const portable = await readAll(path, { password, crypto: webCrypto });
    assert(
      portable.every((b, i) => b === expected[i]),
      "webCrypto read differs",
    );
    const pool = await readAll(path, {
      password,
      crypto: workerCrypto({ workers: 2, minWorkerBytes: 0 }),
    });
    assert(
      pool.every((b, i) => b === expected[i]),
      "workerCrypto read differs",
    );
  });
}

Deno.test("a second key slot opens with its own password", async () => {
  const path = await cryptoFixture("luks_two_slots.qcow2");
  const one = await readAll(path, { password: PASSWORD });
  const two = await readAll(path, { password: "second-password" });
  assertEquals(two, one);
});

Deno.test("a password given as bytes is used as it is", async () => {
  const path = await cryptoFixture("luks_aes128_xts_sha1.qcow2");
  const text = await readAll(path, { password: "pässwörd ✓" });
  const bytes = await readAll(path, {
    password: new TextEncoder().encode("pässwörd ✓"),
  });
  assertEquals(bytes, text);
  // A trailing newline is part of a secret file's password, as in qemu-img.
  const error = await assertRejects(
    () =>
      openImage(path, { password: new TextEncoder().encode("pässwörd ✓\n") }),
    Qcow2Error,
  );
  assertEquals(error.code, "WRONG_PASSWORD");
});

Deno.test("no password: ENCRYPTED, saying how to give one", async () => {
  for (const name of ["luks_default.qcow2", "aes.qcow2", "aes.qcow"]) {
    const error = await assertRejects(
      async () => openImage(await cryptoFixture(name)),
      Qcow2Error,
    );
    assertEquals(error.code, "ENCRYPTED");
    assert(error.message.includes("--password-file"), error.message);
  }
});

Deno.test("a wrong password: WRONG_PASSWORD", async () => {
  for (const provider of [undefined, webCrypto]) {
    const error = await assertRejects(
      async () =>
        openImage(await cryptoFixture("luks_default.qcow2"), {
          password: "wrong",
          crypto: provider,
        }),
      Qcow2Error,
    );
    assertEquals(error.code, "WRONG_PASSWORD");
    assert(
      error.message.includes("no key slot opens with this password"),
      error.message,
    );
  }
});

Deno.test("a wrong legacy AES password reads garbage, as in QEMU", async () => {
  const path = await cryptoFixture("aes.qcow2");
  const good = await readAll(path, { password: PASSWORD });
  const bad = await readAll(path, { password: "wrong" });
  assertEquals(good[0], 0x11);
  assert(bad[0] !== 0x11 || bad[1] !== 0x11);
});

for (
  const [name, cipher] of [
    ["luks_twofish.qcow2", "twofish-128"],
    ["luks_serpent.qcow2", "serpent-128"],
    ["luks_cast5.qcow2", "cast5-128"],
  ]
) {
  Deno.test(`${cipher} is refused by name`, async () => {
    for (const password of [undefined, PASSWORD]) {
      const error = await assertRejects(
        async () => openImage(await cryptoFixture(name), { password }),
        Qcow2Error,
      );
      assertEquals(error.code, "UNSUPPORTED_CIPHER");
      assert(error.message.includes(cipher), error.message);
    }
  });
}

Deno.test("openImage in mod.ts unlocks with node:crypto by default", async () => {
  const original = nodeCrypto.pbkdf2;
  let calls = 0;
  nodeCrypto.pbkdf2 = (...args) => (calls++, original(...args));
  try {
    const image = await openImage(await cryptoFixture("luks_default.qcow2"), {
      password: PASSWORD,
    });
    image.close();
  } finally {
    nodeCrypto.pbkdf2 = original;
  }
  assert(calls >= 2, `node:crypto's PBKDF2 ran ${calls} times`);
});
