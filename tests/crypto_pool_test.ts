/**
 * The worker pool of `workerCrypto` (native/crypto_pool.ts): many requests
 * in flight at once, of different lengths (its shared buffers are reused
 * and grown), encrypt and decrypt exactly as the calling thread's sector
 * cipher does, whether a worker or the calling thread (taking queued
 * requests while it waits) does each; after `close()`
 * requests still work, on the calling thread.
 */
import { assert, assertEquals, assertNotEquals } from "@std/assert";
import {
  type CipherSpec,
  nodeCrypto,
  sectorEncryption,
  workerCrypto,
} from "../mod.ts";

const SPECS: CipherSpec[] = [
  { algorithm: "aes-256", mode: "xts", ivgen: "plain64" },
  { algorithm: "aes-128", mode: "cbc", ivgen: "essiv", ivgenHash: "sha256" },
];

/** Pseudo-random bytes (getRandomValues gives at most 64 KiB a call). */
function noise(length: number, seed: number): Uint8Array {
  const out = new Uint8Array(length);
  let x = seed | 1;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    out[i] = x;
  }
  return out;
}

for (
  const [spec, workers] of [[SPECS[0], 2], [SPECS[1], 2], [
    SPECS[0],
    1,
  ]] as const
) {
  Deno.test(`workerCrypto ${spec.algorithm}-${spec.mode}, ${workers} worker(s): many requests in flight match the calling thread`, async () => {
    const key = noise(spec.mode === "xts" ? 64 : 16, 7);
    const local = await sectorEncryption(nodeCrypto, "luks", spec, key);
    const pool = await workerCrypto({ workers }).encryption!(
      "luks",
      spec,
      key,
    );
    try {
      // Lengths under and over the 64 KiB threshold, growing and shrinking,
      // at sector offsets far apart (IVs past 32 bits of sectors).
      const lengths = [
        1 << 20,
        4096,
        65536,
        200 * 1024,
        3 << 20,
        512,
        1 << 20,
        70_144,
      ];
      const plain = lengths.map((n, i) => noise(n, i + 1));
      const offsets = lengths.map((_, i) => (i * 5 + 1) * 2 ** 41);
      const expected = plain.map((p) => p.slice());
      for (let i = 0; i < lengths.length; i++) {
        await local.encrypt(offsets[i], expected[i]);
      }
      const sealed = plain.map((p) => p.slice());
      await Promise.all(sealed.map((s, i) => pool.encrypt(offsets[i], s)));
      for (let i = 0; i < lengths.length; i++) {
        assertNotEquals(sealed[i], plain[i]);
        assert(
          sealed[i].every((b, j) => b === expected[i][j]),
          `request ${i} (${lengths[i]} bytes) encrypted differently`,
        );
      }
      // Decrypting through the pool, from views into one buffer (not at
      // its start) gives the plain text back.
      const whole = new Uint8Array(
        16 + sealed.reduce((n, s) => n + s.length, 0),
      );
      const views = sealed.map((s, i) => {
        const at = 16 + sealed.slice(0, i).reduce((n, t) => n + t.length, 0);
        whole.set(s, at);
        return whole.subarray(at, at + s.length);
      });
      await Promise.all(views.map((v, i) => pool.decrypt(offsets[i], v)));
      for (let i = 0; i < lengths.length; i++) {
        assertEquals(views[i], plain[i], `request ${i} decrypted wrongly`);
      }
      // Closed: requests run on the calling thread, with the same result.
      pool.close();
      const again = noise(1 << 17, 99);
      const copy = again.slice();
      await pool.encrypt(0, again);
      await local.encrypt(0, copy);
      assertNotEquals(again, noise(1 << 17, 99));
      assertEquals(again, copy);
    } finally {
      pool.close();
      local.close();
    }
  });
}
