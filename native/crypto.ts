/**
 * Native cryptographic primitives from `node:crypto`, which Deno, Node and
 * Bun provide: AES in ECB mode (AES-NI where the machine has it, one call
 * per buffer), PBKDF2 off the main thread, and digests. Kept out of `src/`
 * so the core stays runtime-agnostic; `mod.ts` wires them in. `node:crypto`
 * is loaded on the first encrypted image (see `node_builtin.ts`).
 *
 * @module
 */

import type {
  BlockCipher,
  CryptoProvider,
  HashAlgorithm,
} from "../src/crypto/provider.ts";
import { importNode } from "./node_builtin.ts";

/** The parts of `node:crypto` used here. */
interface NodeCipher {
  update(data: Uint8Array): Uint8Array;
  setAutoPadding(on: boolean): NodeCipher;
}
/** The parts of `node:crypto` used here. */
export interface NodeCryptoModule {
  createCipheriv(alg: string, key: Uint8Array, iv: null): NodeCipher;
  createDecipheriv(alg: string, key: Uint8Array, iv: null): NodeCipher;
  createHash(alg: string): {
    update(data: Uint8Array): { digest(): Uint8Array };
  };
  pbkdf2(
    password: Uint8Array,
    salt: Uint8Array,
    iterations: number,
    length: number,
    digest: string,
    done: (error: Error | null, key: Uint8Array) => void,
  ): void;
}

let loading: Promise<NodeCryptoModule> | undefined;
const load = () => loading ??= importNode<NodeCryptoModule>("crypto");

/**
 * AES-ECB over `node:crypto`: one cipher object per direction, reused for
 * every call (ECB keeps no state between blocks).
 *
 * @param nodeCrypto The loaded `node:crypto` module.
 * @param key A 16, 24 or 32-byte key.
 * @returns The block cipher.
 */
export function nodeAes(
  nodeCrypto: NodeCryptoModule,
  key: Uint8Array,
): BlockCipher {
  const name = `aes-${key.length * 8}-ecb`;
  const enc = nodeCrypto.createCipheriv(name, key, null).setAutoPadding(false);
  const dec = nodeCrypto.createDecipheriv(name, key, null).setAutoPadding(
    false,
  );
  const run = (c: NodeCipher, input: Uint8Array, output?: Uint8Array) => {
    const out = c.update(input);
    if (!output) return out;
    output.set(out);
    return output;
  };
  return {
    encrypt: (input, output) => run(enc, input, output),
    decrypt: (input, output) => run(dec, input, output),
  };
}

/**
 * The primitives of `node:crypto`: AES-ECB blocks (one native call per
 * buffer), PBKDF2 on libuv's thread pool, and synchronous digests.
 *
 * @example A SHA-256 digest
 * ```ts
 * import { nodeCrypto } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const digest = await nodeCrypto.digest("sha256", new Uint8Array(0));
 * assertEquals(digest[0], 0xe3); // e3b0c442...
 * ```
 */
export const nodeCrypto: CryptoProvider = {
  async aes(key: Uint8Array): Promise<BlockCipher> {
    return nodeAes(await load(), key);
  },
  async pbkdf2(
    hash: HashAlgorithm,
    password: Uint8Array,
    salt: Uint8Array,
    iterations: number,
    length: number,
  ): Promise<Uint8Array> {
    const c = await load();
    return await new Promise((resolve, reject) =>
      c.pbkdf2(
        password,
        salt,
        iterations,
        length,
        hash,
        (error, key) => error ? reject(error) : resolve(new Uint8Array(key)),
      )
    );
  },
  async digest(hash: HashAlgorithm, data: Uint8Array): Promise<Uint8Array> {
    return (await load()).createHash(hash).update(data).digest();
  },
};

/**
 * {@linkcode nodeCrypto}, with the sectors of each encrypted image
 * decrypted and encrypted on a pool of workers, one per core
 * (`workerCrypto` of `crypto_pool.ts`, loaded only when an encrypted image
 * is unlocked; its workers start on the first request of 64 KiB or more and
 * stop when the image is closed). The CLI's `convert` and `compare` use it,
 * since they close what they open; on a single core it is `nodeCrypto`.
 */
export const pooledNodeCrypto: CryptoProvider =
  // Node 20 has no navigator global.
  (globalThis.navigator?.hardwareConcurrency ?? 1) < 2 ? nodeCrypto : {
    ...nodeCrypto,
    async encryption(format, spec, key) {
      const { workerCrypto } = await import("./crypto_pool.ts");
      return await workerCrypto().encryption!(format, spec, key);
    },
  };
