/**
 * Byte counts of options in qemu-img's spelling and with its refusals
 * (`cvtnum` over `qemu_strtosz`, see `src/size.ts`): a decimal number, with
 * a fraction only before a suffix, or a 0x hex number, then an optional unit
 * B, k, M, G, T, P or E (either case; binary units).
 *
 * @module
 */

import { CommandError } from "./_args.ts";
import { INT64_MAX, strtosz } from "../src/size.ts";

/**
 * Parses a byte count as qemu-img's `cvtnum` does, with its messages.
 *
 * @param text The option's value.
 * @param what What it is, in qemu-img's message ("start offset").
 * @returns The count in bytes, from 0 to 2^63 - 1.
 * @throws {CommandError} (one line, exit status 1, as qemu-img) for text
 * that is no count, or a count of 2^63 or more.
 */
export function cvtnum(text: string, what: string): bigint {
  const value = strtosz(text);
  if (value === "invalid") {
    throw new CommandError(
      `Invalid ${what} specified. You may use k, M, G, T, P or E suffixes for kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.`,
    );
  }
  if (value === "range" || value > INT64_MAX) {
    throw new CommandError(
      `Invalid ${what} specified. Must be between 0 and ${INT64_MAX}.`,
    );
  }
  return value;
}

/**
 * Parses an offset or a length as qemu-img's `cvtnum` does. One of 2^53
 * or more is taken as 2^53 - 1: past the end of any image, as it is past
 * the end of the images qemu-img reads.
 *
 * @param text The option's value.
 * @param what What it is, in qemu-img's message ("start offset").
 * @returns The count in bytes (at most 2^53 - 1).
 * @throws {CommandError} As {@linkcode cvtnum}.
 */
export function parseOffset(text: string, what: string): number {
  const value = cvtnum(text, what);
  return Number(
    value > BigInt(Number.MAX_SAFE_INTEGER)
      ? BigInt(Number.MAX_SAFE_INTEGER)
      : value,
  );
}
