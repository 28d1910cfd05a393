/**
 * What every command shares: the program's name, usage errors and option
 * parsing in qemu-img's spellings.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";

/** The program's name, as it prints it. */
export const NAME = "qcow2";

/** A usage error: exit status 2, with a pointer to the right help. */
export class UsageError extends Error {
  /**
   * @param message What is wrong, in one line.
   * @param command The command whose `--help` the user is pointed to.
   */
  constructor(message: string, readonly command?: string) {
    super(message);
  }
}

/** The options of a command, as parseArgs gives them. */
export type Flags = ReturnType<typeof parseArgs>;

/**
 * Parses a command's options; -h/--help and -q/--quiet come with all.
 * An unknown option or a string option given twice or empty is a
 * {@linkcode UsageError}.
 */
export function parse(
  command: string,
  args: string[],
  spec: { boolean?: string[]; string?: string[] },
): Flags {
  const known = new Set([
    ...(spec.boolean ?? []),
    ...(spec.string ?? []),
    "h",
    "help",
    "q",
    "quiet",
  ]);
  const flags = parseArgs(args, {
    boolean: [...(spec.boolean ?? []), "help", "quiet"],
    string: spec.string,
    alias: { h: "help", q: "quiet" },
    unknown: (arg: string, key?: string) => {
      if (key !== undefined && !known.has(key)) {
        throw new UsageError(`unknown option '${arg}'`, command);
      }
      return true;
    },
  });
  for (const name of spec.string ?? []) {
    const value: unknown = flags[name];
    if (Array.isArray(value)) {
      throw new UsageError(`-${name} is given more than once`, command);
    }
    if (value === "") {
      throw new UsageError(`-${name} needs a value`, command);
    }
  }
  return flags;
}

/**
 * Parses a byte count with an optional k/M/G suffix (binary units).
 * Anything else is a {@linkcode UsageError} of `command`.
 */
export function parseBytes(
  text: string,
  option: string,
  command: string,
): number {
  const m = /^(\d+)([kKmMgG]?)[bB]?$/.exec(text);
  if (!m) {
    throw new UsageError(
      `${option} takes a byte count such as 4096, 64k or 1M, not '${text}'`,
      command,
    );
  }
  const scale = {
    "": 1,
    k: 1024,
    m: 1024 ** 2,
    g: 1024 ** 3,
  }[m[2].toLowerCase()]!;
  return Number(m[1]) * scale;
}
