/**
 * Byte counts in qemu-img's spelling (`cvtnum` over `qemu_strtosz`): a
 * decimal number, with a fraction only before a suffix, or a 0x hex number,
 * then an optional unit B, k, M, G, T, P or E (either case; binary units).
 *
 * @module
 */

import { UsageError } from "./_args.ts";

const UNITS: Record<string, number> = {
  b: 1,
  k: 2 ** 10,
  m: 2 ** 20,
  g: 2 ** 30,
  t: 2 ** 40,
  p: 2 ** 50,
  e: 2 ** 60,
};

/**
 * Parses a byte count as qemu-img's `cvtnum` does.
 *
 * @param text The option's value.
 * @param what What it is, in qemu-img's message ("start offset").
 * @param command The command, for the pointer to its help.
 * @returns The count in bytes (at most 2^53 - 1).
 * @throws {UsageError} (exit status 1, as qemu-img) for anything else.
 */
export function parseOffset(
  text: string,
  what: string,
  command: string,
): number {
  const m = /^\s*(?:0[xX]([0-9a-fA-F]+)|(\d+)(\.\d*)?)([bBkKmMgGtTpPeE]?)$/
    .exec(text);
  const bad = () =>
    new UsageError(
      `Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
      command,
      1,
    );
  if (!m) throw bad();
  const [, hexDigits, whole, fraction, unit] = m;
  const scale = UNITS[(unit || "b").toLowerCase()];
  // A fraction needs a unit to scale it, and hex takes none.
  if (fraction !== undefined && scale === 1) throw bad();
  const value = hexDigits !== undefined
    ? parseInt(hexDigits, 16) * scale
    : Math.floor(Number(`${whole}${fraction ?? ""}`) * scale);
  if (!Number.isSafeInteger(value)) throw bad();
  return value;
}
