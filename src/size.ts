/**
 * Byte counts as QEMU 7.2 reads them (`qemu_strtosz` in util/cutils.c), the
 * one reading behind every size the command line and `-o` take.
 *
 * @module
 */

/** Powers of 1024 by suffix (`suffix_mul`): B, K, M, G, T, P, E, any case. */
const SUFFIXES = "bkmgtpe";

/** 2^64: a count of this or more is out of range. */
const LIMIT = 1n << 64n;

/**
 * Reads a byte count as QEMU's `qemu_strtosz`: optional leading white space
 * and `+`; decimal digits, or `0x` and hex digits; after decimal digits, an
 * optional fraction (`.5`; no exponent); an optional suffix B, K, M, G, T,
 * P or E (powers of 1024, either case); then the end. A fraction needs a
 * suffix other than B (`1.0` is 1, `1.5` is refused), and is rounded to the
 * nearest byte (half up) as QEMU's 64.64 fixed point does; hex takes no
 * fraction. A sign `-` anywhere in the digits is refused, as is trailing
 * white space.
 *
 * @param text The count as written.
 * @returns The count, `"invalid"` for text that is no count, or `"range"`
 * for a count of 2^64 or more.
 *
 * @example
 * ```ts
 * import { strtosz } from "./size.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(strtosz("1.5k"), 1536n);
 * assertEquals(strtosz("+5M"), 5242880n);
 * assertEquals(strtosz("0x1k"), 1024n);
 * assertEquals(strtosz("1e3"), "invalid");
 * assertEquals(strtosz("16E"), "range");
 * ```
 */
export function strtosz(text: string): bigint | "invalid" | "range" {
  const m =
    /^[ \t\n\v\f\r]*\+?(?:0[xX]([0-9a-fA-F]+)|(\d+)(\.\d*)?)([bBkKmMgGtTpPeE]?)$/
      .exec(text);
  if (!m) return "invalid";
  const [, hexDigits, whole, fraction, suffix] = m;
  const scale = 1024n **
    BigInt(Math.max(0, SUFFIXES.indexOf(suffix.toLowerCase())));
  let value = BigInt(hexDigits === undefined ? whole : `0x${hexDigits}`);
  // strtoull's own limit comes first.
  if (value >= LIMIT) return "range";
  // The fraction as QEMU takes it: a double, as a 64-bit binary fraction.
  const binary = fraction === undefined
    ? 0n
    : BigInt(Math.min(Number(`0${fraction}`) * 2 ** 64, 2 ** 64 - 2048));
  if (scale === 1n && binary !== 0n) return "invalid";
  const product = binary * scale;
  value = value * scale + (product >> 64n) + ((product >> 63n) & 1n);
  return value >= LIMIT ? "range" : value;
}

/** The largest byte count QEMU's `cvtnum` takes: 2^63 - 1 (`INT64_MAX`). */
export const INT64_MAX: bigint = (1n << 63n) - 1n;
