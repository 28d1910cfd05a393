/**
 * Byte comparisons at memcmp speed through Node's `Buffer` (about 20 times
 * the portable 32-bit loop on this machine: 512 MiB in ~20 ms against
 * ~400 ms), for `compare`. Node's compatibility layer costs Deno 5-45 ms to
 * start, so it is loaded only for comparisons large enough to repay it.
 *
 * @module
 */

import { portableByteTests } from "../src/ops/compare.ts";
import type { ByteTests } from "../src/ops/compare.ts";
import { importNode } from "./node_builtin.ts";

interface BufferModule {
  Buffer: {
    from(buffer: ArrayBufferLike, offset: number, length: number): {
      equals(other: unknown): boolean;
    };
  };
}

/**
 * Byte tests that start portable and switch to `Buffer.equals` once Node's
 * buffer module has loaded; the load starts at once when `bytes` (the data
 * to compare) is large, else never.
 *
 * @param bytes How many bytes the comparison may read from each disk.
 * @returns The tests.
 */
export function fastByteTests(bytes: number): ByteTests {
  let native: ByteTests | undefined;
  if (bytes >= 64 * 1024 * 1024) {
    importNode<BufferModule>("buffer").then(({ Buffer }) => {
      const view = (a: Uint8Array) =>
        Buffer.from(a.buffer, a.byteOffset, a.byteLength);
      let zeros = new Uint8Array(0);
      native = {
        equal: (a, b) => view(a).equals(view(b)),
        isZero(a) {
          if (zeros.length < a.length) zeros = new Uint8Array(a.length);
          return view(a).equals(view(zeros.subarray(0, a.length)));
        },
      };
    }, () => {/* stay portable */});
  }
  return {
    equal: (a, b) => (native ?? portableByteTests).equal(a, b),
    isZero: (a) => (native ?? portableByteTests).isZero(a),
  };
}
