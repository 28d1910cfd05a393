/**
 * What every command shares: the program's name, usage errors and option
 * parsing in qemu-img's spellings.
 *
 * Every command accepts `-h`/`--help`, `-q`/`--quiet`, `-f FMT`/`--format=FMT`
 * (checked by {@linkcode imageFormat}) and `-U`/`--force-share` (accepted and
 * ignored: we never lock an image). A command that prints a report takes
 * `--output=human|json` and its older spelling `--json`
 * ({@linkcode CommandSpec.output}). An option that qemu-img has for the
 * command but we do not support is refused by name
 * ({@linkcode QEMU_IMG_OPTIONS}); anything else is an unknown option.
 *
 * @module
 */

import { parseArgs } from "@std/cli/parse-args";
import { strtosz } from "../src/size.ts";

/** The program's name, as it prints it. */
export const NAME = "qcow2";

/**
 * A usage error: a line naming what is wrong, a pointer to the command's
 * help, and an exit status (2 by default; 1 for the commands that keep
 * qemu-img's, see {@linkcode CommandSpec.usageStatus}).
 */
export class UsageError extends Error {
  /**
   * @param message What is wrong, in one line.
   * @param command The command whose `--help` the user is pointed to.
   * @param status The exit status.
   */
  constructor(
    message: string,
    readonly command?: string,
    readonly status: number = 2,
  ) {
    super(message);
  }
}

/**
 * An error a command reports as qemu-img does: each report after the
 * program's name (a report may go on over more lines, which are printed as
 * they are), no pointer to the help, and `status` (1).
 */
export class CommandError extends Error {
  /** The reports, each printed after the program's name. */
  readonly reports: string[];
  /**
   * @param reports What is wrong: one report, or qemu-img's several.
   * @param status The exit status.
   */
  constructor(reports: string | string[], readonly status: number = 1) {
    const list = typeof reports === "string" ? [reports] : reports;
    super(list.join("\n"));
    this.reports = list;
  }
}

/** The options of a command, as parseArgs gives them. */
export type Flags = ReturnType<typeof parseArgs>;

/** How a command prints its report: `--output=human|json`. */
export type OutputFormat = "human" | "json";

/** The image formats `-f` and `-F` may name: the ones we read. */
export type FormatName = "qcow2" | "qcow" | "raw";

/** What a command takes beyond the options every command takes. */
export interface CommandSpec {
  /** Options without a value (short or long names, without dashes). */
  boolean?: string[];
  /** Options with a value, each given at most once. */
  string?: string[];
  /** Options with a value that may be repeated; values are joined with ",". */
  list?: string[];
  /** Options with a value that may be repeated, kept apart (`--object`). */
  repeat?: string[];
  /** Other names: `{ s: "start-offset" }` makes `-s` a spelling of `--start-offset`. */
  alias?: Record<string, string>;
  /** The command takes `--output=human|json` and `--json`. */
  output?: boolean;
  /**
   * Options with a value whose empty value the command judges itself (`-S
   * ''`: qemu-img's invalid-size message), where others need a value.
   */
  empty?: string[];
  /**
   * The exit status of a usage error: 2 (ours, the default) or 1 (qemu-img's,
   * for the commands whose exit status scripts read, such as `compare`).
   */
  usageStatus?: number;
}

/**
 * qemu-img 7.2's options for each command (from the getopt strings and long
 * option tables in qemu-img.c), each with what it does. An option listed
 * here that a command's {@linkcode CommandSpec} does not take is refused
 * with a line naming it; `--help` lists them ({@linkcode unsupportedHelp}).
 * Keys are the spellings without dashes; a value-taking option has its
 * value's name after a space.
 */
export const QEMU_IMG_OPTIONS: Record<string, Record<string, string>> = {
  info: {
    "f FMT": "image format",
    "output FMT": "human or json",
    "backing-chain": "describe every layer",
    "object OBJECTDEF": "define a QEMU object",
    "image-opts": "IMAGE is an option string",
    "U": "force share",
    "force-share": "force share",
  },
  convert: {
    "f FMT": "source format",
    "O FMT": "output format",
    "B BACKING_FILE": "backing file of the output",
    "F BACKING_FMT": "format of the output's backing file",
    "o OPTIONS": "output format options",
    "l SNAPSHOT_PARAM": "internal snapshot",
    "S SIZE": "sparse size",
    "c": "compress the output",
    "C": "copy offloading",
    "p": "progress",
    "q": "quiet",
    "n": "skip creating the target",
    "m NUM": "coroutines",
    "W": "out-of-order writes",
    "r RATE": "rate limit",
    "t CACHE": "output cache mode",
    "T SRC_CACHE": "source cache mode",
    "U": "force share",
    "force-share": "force share",
    "object OBJECTDEF": "define a QEMU object",
    "image-opts": "SRC is an option string",
    "target-image-opts": "DST is an option string",
    "target-is-zero": "DST reads as zeros",
    "salvage": "go on after read errors",
    "bitmaps": "copy persistent bitmaps",
    "skip-broken-bitmaps": "skip inconsistent bitmaps",
  },
  create: {
    "f FMT": "image format",
    "b BACKING_FILE": "backing file",
    "F BACKING_FMT": "backing file format",
    "o OPTIONS": "format options",
    "u": "do not open the backing file",
    "q": "quiet",
    "object OBJECTDEF": "define a QEMU object",
  },
  check: {
    "f FMT": "image format",
    "output FMT": "human or json",
    "r leaks|all": "repair",
    "repair leaks|all": "repair",
    "T SRC_CACHE": "cache mode",
    "q": "quiet",
    "U": "force share",
    "force-share": "force share",
    "object OBJECTDEF": "define a QEMU object",
    "image-opts": "IMAGE is an option string",
  },
  map: {
    "f FMT": "image format",
    "output FMT": "human or json",
    "s OFFSET": "start offset",
    "start-offset OFFSET": "start offset",
    "l LENGTH": "maximum length",
    "max-length LENGTH": "maximum length",
    "U": "force share",
    "force-share": "force share",
    "object OBJECTDEF": "define a QEMU object",
    "image-opts": "IMAGE is an option string",
  },
  compare: {
    "f FMT": "first image's format",
    "F FMT": "second image's format",
    "T SRC_CACHE": "cache mode",
    "p": "progress",
    "q": "quiet",
    "s": "strict",
    "U": "force share",
    "force-share": "force share",
    "object OBJECTDEF": "define a QEMU object",
    "image-opts": "IMG1 and IMG2 are option strings",
  },
  measure: {
    "f FMT": "image format",
    "O FMT": "output format",
    "o OPTIONS": "output format options",
    "l SNAPSHOT_PARAM": "internal snapshot",
    "size SIZE": "virtual size of a new image",
    "output FMT": "human or json",
    "U": "force share",
    "force-share": "force share",
    "object OBJECTDEF": "define a QEMU object",
    "image-opts": "IMAGE is an option string",
  },
};

/** qemu-img's option `key` of `command`, as "-x VALUE" or "--name VALUE". */
function qemuOption(command: string, key: string): string | undefined {
  for (const spelling of Object.keys(QEMU_IMG_OPTIONS[command] ?? {})) {
    const [name, value] = spelling.split(" ");
    if (name === key) {
      return `${name.length === 1 ? "-" : "--"}${name}${
        value ? ` ${value}` : ""
      }`;
    }
  }
  return undefined;
}

/** The spellings every command takes, and what they stand for. */
const COMMON_BOOLEAN = ["help", "quiet", "force-share"];
const COMMON_ALIAS: Record<string, string> = {
  h: "help",
  q: "quiet",
  U: "force-share",
  f: "format",
};

/**
 * Parses a command's options. `-h`, `-q`, `-f FMT` and `-U` come with all;
 * `--output`/`--json` with a {@linkcode CommandSpec.output} command, where
 * `flags.output` is then "human" or "json" and `flags.json` whether it is
 * json. `flags.f` and `flags.format` are the `-f` value, unchecked (see
 * {@linkcode imageFormat}). A short option's value may be attached
 * (`-fraw`), as getopt allows.
 *
 * @throws {UsageError} for an unknown option (naming qemu-img's options we
 * do not support as such), a string option given twice or empty, and a bad
 * `--output`.
 */
export function parse(
  command: string,
  args: string[],
  spec: CommandSpec,
): Flags {
  const status = spec.usageStatus ?? 2;
  const error = (message: string) => new UsageError(message, command, status);
  const strings = [
    ...(spec.string ?? []),
    ...(spec.list ?? []),
    ...(spec.repeat ?? []),
    "format",
    ...(spec.output ? ["output"] : []),
  ];
  const booleans = [
    ...(spec.boolean ?? []),
    ...COMMON_BOOLEAN,
    ...(spec.output ? ["json"] : []),
  ];
  const alias: Record<string, string> = { ...COMMON_ALIAS, ...spec.alias };
  const known = new Set([
    ...strings,
    ...booleans,
    ...Object.keys(alias),
    ...Object.values(alias),
  ]);
  const shortStrings = new Set(
    [...strings, ...Object.keys(alias)].filter((name) =>
      name.length === 1 &&
      (strings.includes(name) || strings.includes(alias[name]))
    ),
  );
  const flags = parseArgs(splitAttached(args, shortStrings, strings), {
    boolean: booleans,
    // "_": the operands stay as written ("1e3" is not 1000, "0x10" not 16).
    string: [...strings, "_"],
    collect: strings,
    alias,
    unknown: (arg: string, key?: string) => {
      if (key !== undefined && !known.has(key)) {
        const qemu = qemuOption(command, key);
        throw error(
          qemu
            ? `qemu-img's option ${qemu} is not supported by '${NAME} ${command}'`
            : `unknown option '${arg.split("=")[0]}'`,
        );
      }
      return true;
    },
  });
  for (const name of strings) {
    const value: unknown = flags[name];
    if (spec.repeat?.includes(name)) {
      const values = (value ?? []) as string[];
      if (values.some((v) => v === "")) {
        throw error(`${dashed(name)} needs a value`);
      }
      flags[name] = values;
      continue;
    }
    if (spec.list?.includes(name)) {
      const values = (value ?? []) as string[];
      if (values.some((v) => v === "")) {
        throw error(`${dashed(name)} needs a value`);
      }
      flags[name] = values.length > 0 ? values.join(",") : undefined;
      continue;
    }
    const values = (value ?? []) as string[];
    if (values.length > 1) {
      throw error(`${dashed(name)} is given more than once`);
    }
    flags[name] = values[0];
    for (const [short, long] of Object.entries(alias)) {
      if (long === name) flags[short] = values[0];
      if (short === name) flags[long] = values[0];
    }
    if (values[0] === "" && !spec.empty?.includes(name)) {
      throw error(`${dashed(name)} needs a value`);
    }
  }
  if (spec.output) {
    const output = flags.output as string | undefined;
    if (output !== undefined && output !== "human" && output !== "json") {
      // qemu-img's words, without a pointer to the help, as qemu-img.
      throw new CommandError(
        "--output must be used with human or json as argument.",
        status === 2 ? 2 : 1,
      );
    }
    if (output !== undefined && flags.json && output !== "json") {
      throw error("--json and --output=human say two things: choose one");
    }
    flags.output = flags.json ? "json" : output ?? "human";
    flags.json = flags.output === "json";
  }
  return flags;
}

/**
 * The image names of a command that takes `count` of them, as qemu-img
 * checks them (its words; exit status 1, as qemu-img's).
 *
 * @throws {UsageError} for another number of names.
 */
export function imageNames(
  flags: Flags,
  count: 1 | 2,
  command: string,
): string[] {
  const names = flags._.map(String);
  if (names.length !== count) {
    throw new UsageError(
      count === 1
        ? "Expecting one image file name"
        : "Expecting two image file names",
      command,
      1,
    );
  }
  return names;
}

/** `-x` or `--name`. */
function dashed(name: string): string {
  return name.length === 1 ? `-${name}` : `--${name}`;
}

/**
 * Splits `-fraw` into `-f raw` for the short options that take a value, and
 * gives an option that takes a value the next argument even when it starts
 * with `-` (`-S -1`, `--object -x`), as getopt does.
 */
function splitAttached(
  args: string[],
  shortStrings: Set<string>,
  strings: string[],
): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    const arg = args[i];
    if (arg === "--") {
      out.push(...args.slice(i));
      break;
    }
    const next = args[i + 1];
    if (
      next?.startsWith("-") &&
      (/^-[^-]$/.test(arg) && shortStrings.has(arg[1]) ||
        arg.startsWith("--") && strings.includes(arg.slice(2)))
    ) {
      out.push(`${arg}=${next}`);
      i++;
      continue;
    }
    if (/^-[^-]/.test(arg) && arg.length > 2) {
      // A group such as -qfraw: flags up to the first value-taking letter.
      let j = 1;
      while (j < arg.length && !shortStrings.has(arg[j])) j++;
      if (j < arg.length - 1 && arg[j + 1] !== "=") {
        if (j > 1) out.push(arg.slice(0, j));
        out.push(`-${arg[j]}`, arg.slice(j + 1));
        continue;
      }
    }
    out.push(arg);
  }
  return out;
}

/** The formats qemu-img knows that we do not read, to say so by name. */
const QEMU_FORMATS = new Set([
  "blkdebug",
  "blklogwrites",
  "blkverify",
  "bochs",
  "cloop",
  "compress",
  "copy-before-write",
  "copy-on-read",
  "dmg",
  "file",
  "host_cdrom",
  "host_device",
  "luks",
  "nbd",
  "nfs",
  "null-aio",
  "null-co",
  "nvme",
  "parallels",
  "preallocate",
  "qed",
  "quorum",
  "rbd",
  "snapshot-access",
  "ssh",
  "throttle",
  "vdi",
  "vhdx",
  "vmdk",
  "vpc",
  "vvfat",
  "http",
  "https",
  "iscsi",
  "gluster",
]);

/**
 * The format named by `-f` (or another option), checked: qcow2, qcow and raw
 * are read; any other name is a usage error, one that names a format qemu-img
 * has but we do not read as such.
 *
 * @param value The option's value, if given.
 * @param option The option, for the message ("-f", "-F").
 * @param command The command, for the pointer to its help.
 * @param status The exit status of the usage error.
 * @returns The format, or undefined when the option was not given (probe).
 * @throws {UsageError} for a format we do not read.
 */
export function imageFormat(
  value: unknown,
  option: string,
  command: string,
  status = 2,
): FormatName | undefined {
  if (value === undefined) return undefined;
  if (value === "qcow2" || value === "qcow" || value === "raw") return value;
  const name = String(value);
  throw new UsageError(
    QEMU_FORMATS.has(name)
      ? `format '${name}' (${option}) is not supported: qcow2, qcow and raw are`
      : `unknown format '${name}' (${option}): the formats are qcow2, qcow and raw`,
    command,
    status,
  );
}

/**
 * Checks a `-l SNAPSHOT_PARAM` value as qemu-img parses it: a bare ID or
 * name, or `snapshot.id=ID` and/or `snapshot.name=NAME` separated by a comma
 * (a comma inside a value is written `,,`). The value is passed on as it is:
 * the library's `findSnapshot` reads the same forms.
 *
 * @returns The value.
 * @throws {UsageError} for a parameter other than snapshot.id and
 * snapshot.name, or one without a value.
 */
export function snapshotParam(
  value: unknown,
  command: string,
  status = 2,
): string | undefined {
  if (value === undefined) return undefined;
  const text = String(value);
  if (!text.startsWith("snapshot.")) return text;
  for (const part of text.replaceAll(",,", "\0").split(",")) {
    const eq = part.indexOf("=");
    const key = eq < 0 ? part : part.slice(0, eq);
    if (key !== "snapshot.id" && key !== "snapshot.name") {
      throw new UsageError(
        `invalid parameter '${
          key.replaceAll("\0", ",")
        }' in snapshot param '${text}': it takes snapshot.id=ID and snapshot.name=NAME (write a comma in a name as ',,')`,
        command,
        status,
      );
    }
    if (eq < 0 || eq === part.length - 1) {
      throw new UsageError(
        `${key} needs a value in snapshot param '${text}'`,
        command,
        status,
      );
    }
  }
  return text;
}

/**
 * One help paragraph naming qemu-img's options of `command` that `spec`
 * does not take, so that a user who types one knows it at once.
 *
 * @returns The paragraph (ending in a newline), or "" when every option is
 * taken.
 */
export function unsupportedHelp(command: string, spec: CommandSpec): string {
  const taken = new Set([
    ...(spec.boolean ?? []),
    ...(spec.string ?? []),
    ...(spec.list ?? []),
    ...(spec.repeat ?? []),
    ...Object.keys(spec.alias ?? {}),
    ...Object.values(spec.alias ?? {}),
    ...COMMON_BOOLEAN,
    ...Object.keys(COMMON_ALIAS),
    "format",
    ...(spec.output ? ["output", "json"] : []),
  ]);
  const missing = Object.keys(QEMU_IMG_OPTIONS[command] ?? {})
    .filter((spelling) => !taken.has(spelling.split(" ")[0]))
    .map((spelling) => qemuOption(command, spelling.split(" ")[0])!);
  if (missing.length === 0) return "";
  const words = `qemu-img ${command} options not supported here: ${
    missing.join(", ")
  }.`.split(" ");
  const lines: string[] = [];
  let line = "";
  for (const word of words) {
    if (line && line.length + 1 + word.length > 78) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  lines.push(line);
  return lines.join("\n") + "\n";
}

/**
 * Parses a size as QEMU's `qemu_strtosz` does (see `src/size.ts`): decimal
 * digits with an optional fraction when a suffix follows, or `0x` hex, and
 * an optional suffix B, K, M, G, T, P or E (powers of 1024, any case).
 * Leading white space and `+` are skipped.
 *
 * @param text The size as written.
 * @returns The bytes, or `"invalid"` for text that is no size, `"range"`
 * for a size of 2^64 bytes or more.
 */
export function qemuSize(text: string): bigint | "invalid" | "range" {
  return strtosz(text);
}
