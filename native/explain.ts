/**
 * The CLI's error messages (Deno): one line that says what is wrong and,
 * where it can, what to do, for the errors a user meets (a missing
 * permission, a missing file, a file that is not an image, a damaged image).
 *
 * @module
 */

import {
  firstLine,
  inFile,
  Qcow2Error,
  type Qcow2ErrorCode,
} from "../src/errors.ts";
import { pathOf, PermissionNeeded } from "./fs_errors.ts";

/**
 * An error met while working on one file, so that the message can name the
 * file when the error itself does not.
 *
 * @example Naming the image in the message
 * ```ts
 * import { explain, InFile } from "./explain.ts";
 * import { Qcow2Error } from "../src/errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const e = new InFile("a.txt", new Qcow2Error("BAD_MAGIC", "Cannot read qcow2 image: no magic"));
 * assertEquals(explain(e).startsWith("a.txt: Cannot read qcow2 image: no magic"), true);
 * ```
 */
export class InFile extends Error {
  /**
   * Wraps `cause`, met while working on `path`.
   *
   * @param path The file being worked on.
   * @param cause What went wrong.
   */
  constructor(readonly path: string, cause: unknown) {
    super(firstLine(cause), { cause });
  }
}

/**
 * What the CLI says when the backing file given with `-b`/`-B` cannot be
 * opened, in qemu-img's words: "Could not open backing image: " and why.
 *
 * @param path The backing file.
 * @param cause What opening it threw.
 * @returns The error to throw.
 *
 * @example A backing file that is not there
 * ```ts
 * import { backingImageError, explain } from "./explain.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const e = backingImageError("base.qcow2", new Error("the header is cut short"));
 * assertEquals(explain(e), "base.qcow2: Could not open backing image: the header is cut short");
 * ```
 */
export function backingImageError(path: string, cause: unknown): InFile {
  return new InFile(
    path,
    new Error(
      `Could not open backing image: ${(cause as Error)?.message ?? cause}`,
      { cause },
    ),
  );
}

const DAMAGED = "the image is damaged; 'qemu-img check' reports what is wrong";

/** What to do, after the library's own message, by error code. */
const HINTS: Partial<Record<Qcow2ErrorCode, string>> = {
  BAD_TABLE_ENTRY: DAMAGED,
  UNALIGNED_OFFSET: DAMAGED,
  OFFSET_PAST_END: DAMAGED,
  METADATA_OVERLAP: DAMAGED,
  BAD_SUBCLUSTER_BITMAP: DAMAGED,
  BAD_COMPRESSED_DATA: DAMAGED,
  TRUNCATED: "the file is cut short (an incomplete copy or download?)",
};

/**
 * One line that says what went wrong and, where it can, what to do.
 *
 * @param e What was thrown.
 * @param command The command that was running, for command-specific hints.
 * @returns The message, without the program name.
 *
 * @example A missing permission names the flag
 * ```ts
 * import { explain } from "./explain.ts";
 * import { PermissionNeeded } from "./fs_errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const e = new PermissionNeeded("read", "disk.qcow2");
 * assertEquals(explain(e), "no permission for 'disk.qcow2': run deno with --allow-read=disk.qcow2");
 * ```
 */
export function explain(e: unknown, command?: string): string {
  if (e instanceof InFile) {
    if (names(e.cause, e.path)) return explain(e.cause, command);
    // An image error that names no file is located by the library's own
    // composition (the message then starts with the file).
    if (e.cause instanceof Qcow2Error && e.cause.file === undefined) {
      return explain(inFile(e.cause, e.path), command);
    }
    return `${e.path}: ${explain(e.cause, command)}`;
  }
  // A permission error may sit under a Qcow2Error about a backing file.
  const denied = causes(e).find((c) => c instanceof PermissionNeeded);
  if (denied instanceof PermissionNeeded) {
    const { access, target } = denied;
    return `${
      context(e, denied)
    }no permission for '${target}': run deno with --allow-${access}=${target}`;
  }
  const os = causes(e).find((c) => systemError(c) !== undefined);
  if (os && (os === e || e instanceof Qcow2Error)) {
    const backing = command === "convert" && e instanceof Qcow2Error &&
        e.code === "BACKING_FILE"
      ? "; --top converts the top layer alone"
      : "";
    return `${context(e, os)}${systemError(os)}${backing}`;
  }
  if (e instanceof Qcow2Error && HINTS[e.code]) {
    return `${firstLine(e)}; ${HINTS[e.code]}`;
  }
  return firstLine(e);
}

/** `e` and its causes, outermost first. */
function causes(e: unknown): unknown[] {
  const chain = [e];
  while (chain.length < 16) {
    const last = chain[chain.length - 1];
    if (!(last instanceof Error) || last.cause === undefined) break;
    chain.push(last.cause);
  }
  return chain;
}

/**
 * Whether what {@linkcode explain} says of `e` names the file `path`
 * already: an error of the chain is about it (a Qcow2Error's `file`, a
 * file-system error's `path`, a missing permission's target, an InFile).
 */
function names(e: unknown, path: string): boolean {
  return causes(e).some((c) =>
    (c instanceof InFile && c.path === path) ||
    (c instanceof Qcow2Error && c.file === path) ||
    (c instanceof PermissionNeeded && c.target === path) ||
    pathOf(c) === path
  );
}

/**
 * What `outer` says before `inner`'s words ("disk.qcow2: ", "Cannot open
 * backing file 'x' (named by 'y'): "): the file prefixes and the details of
 * the Qcow2Errors between them that quote their cause; nothing when `outer`
 * is `inner`.
 */
function context(outer: unknown, inner: unknown): string {
  if (outer === inner || !(outer instanceof Qcow2Error)) return "";
  const file = outer.prefixesFile ? `${outer.file}: ` : "";
  return outer.quotesCause
    ? `${file}${outer.detail}: ${context(outer.cause, inner)}`
    : file;
}

/**
 * A file-system error, from `Deno.*` or `node:fs`, said plainly with the
 * path it carries (see `atPath`); undefined for any other error.
 */
function systemError(e: unknown): string | undefined {
  if (!(e instanceof Error)) return undefined;
  const code = (e as { code?: unknown }).code;
  const path = pathOf(e);
  const file = path === "-"
    ? "standard output"
    : path !== undefined
    ? `'${path}'`
    : "it";
  if (e instanceof Deno.errors.NotFound || code === "ENOENT") {
    return `${file} does not exist`;
  }
  if (e instanceof Deno.errors.IsADirectory || code === "EISDIR") {
    return `${file} is a directory, not an image file`;
  }
  if (e instanceof Deno.errors.NotADirectory || code === "ENOTDIR") {
    return `${file} is not in a directory (a part of its path is a file)`;
  }
  if (
    e instanceof Deno.errors.PermissionDenied || code === "EACCES" ||
    code === "EPERM"
  ) {
    return `the system denies access to ${file}: check its owner and mode`;
  }
  // A full disk: said of the file being written, when it is known.
  if (path !== undefined && code === "ENOSPC") {
    return `Cannot write ${file}: no space left on the device`;
  }
  if (path !== undefined && code === "EDQUOT") {
    return `Cannot write ${file}: the disk quota is exceeded`;
  }
  if (path !== undefined && code === "EFBIG") {
    return `Cannot write ${file}: it would be larger than the file system allows`;
  }
  return undefined;
}
