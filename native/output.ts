/**
 * A safe destination file for the CLI (Deno): written beside the destination
 * and renamed over it only when the conversion succeeded, never one of the
 * inputs, and never a permission prompt.
 *
 * @module
 */

import { atPath, PermissionNeeded } from "./fs_errors.ts";

/** An output file being written, to be committed or discarded. */
export interface OutputFile {
  /** The file to write. */
  file: Deno.FsFile;
  /** Its path: the temporary file's, or the destination's. */
  path: string;
  /** Whether `file` is a temporary file beside the destination. */
  temporary: boolean;
  /** Closes the file and puts it under the destination's name. */
  commit(): Promise<void>;
  /** Closes the file and removes what was written. */
  discard(): Promise<void>;
}

/**
 * A file the conversion reads, for {@linkcode openOutput}: its path, and
 * what it is to the input, said when DST is that file ("the backing file of
 * the input 'top.qcow2'"). A bare path is the input itself.
 */
export type InputFile = string | { path: string; what: string };

/**
 * Writes `dst` whole or not at all: opens it ({@linkcode openOutput}), runs
 * `write` on the file, and puts it under `dst`'s name; if `write` fails, or
 * `signal` is aborted by the time it ends (Ctrl-C just as it ended), removes
 * what was written and throws the failure, passed through `blame`.
 *
 * @param dst The destination's path.
 * @param inputs The files being read, which `dst` must be none of.
 * @param write What writes the file; its result is returned.
 * @param options The signal, and how a failure is said (default: as it is).
 * @returns What `write` returned.
 * @throws What {@linkcode openOutput} throws, and `write`'s failure.
 */
export async function writeOutput<T>(
  dst: string,
  inputs: InputFile[],
  write: (file: Deno.FsFile, path: string) => Promise<T>,
  options: { signal?: AbortSignal; blame?: (e: unknown) => unknown } = {},
): Promise<T> {
  const output = await openOutput(dst, inputs);
  let done: T;
  try {
    done = await write(output.file, output.path);
    options.signal?.throwIfAborted();
  } catch (e) {
    // Leave nothing partial under the destination's name.
    await output.discard();
    const located = atDestination(e, dst);
    throw options.blame ? options.blame(located) : located;
  }
  await output.commit();
  return done;
}

/** The codes of a write refused for want of room: it concerns DST. */
const NO_ROOM = new Set(["ENOSPC", "EDQUOT", "EFBIG"]);

/**
 * `e` with the destination named, if it is (or is caused by) a write that
 * failed for want of room (ENOSPC, EDQUOT, EFBIG) and names no file: the
 * runtime's error carries no path, and its message none.
 *
 * @param e What writing threw.
 * @param dst The destination as the user named it (`-`: standard output).
 * @returns `e`, its error of that kind given `dst` as its `path`.
 *
 * @example A full disk names the file
 * ```ts
 * import { atDestination } from "./output.ts";
 * import { pathOf } from "./fs_errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const full = Object.assign(new Error("No space left on device (os error 28)"), { code: "ENOSPC" });
 * assertEquals(pathOf(atDestination(full, "out.raw")), "out.raw");
 * ```
 */
export function atDestination(e: unknown, dst: string): unknown {
  for (let c = e, depth = 0; c instanceof Error && depth < 16; depth++) {
    const code = (c as { code?: unknown }).code;
    if (typeof code === "string" && NO_ROOM.has(code)) {
      atPath(c, dst, "write");
      break;
    }
    c = c.cause;
  }
  return e;
}

/**
 * Opens the output for `dst`. With read and write access to the
 * directory of the file `dst` names (Deno's rename needs both), output goes
 * to a temporary file there, given the old file's mode (and owner, where
 * the system allows), and is renamed over that file on commit, so a failure
 * leaves a previous `dst` untouched. A symbolic link is written through, as
 * qemu-img writes: the file it points at is replaced, the link stays. With
 * write access to `dst` alone, or a directory the system will not let us
 * write in (an existing file there that we may write), `dst` is written in
 * place, as qemu-img writes it, and on failure removed (emptied, if it is
 * reached through a link).
 *
 * @param dst The destination path.
 * @param inputs Every file the conversion reads: `dst` must be none of them.
 * @returns The output.
 * @throws {PermissionNeeded} Without write access (no prompt is shown).
 * @throws {RangeError} If `dst` is empty, a directory (or a name ending in
 * `/`), a device, a FIFO or a socket, or one of the inputs; or, written in place (no read access to
 * it), if it exists with the size of one of the inputs.
 */
export async function openOutput(
  dst: string,
  inputs: InputFile[],
): Promise<OutputFile> {
  if (dst === "") {
    throw new RangeError(
      "Cannot write '': the file name is empty; give a file name, such as 'disk.raw'",
    );
  }
  await refuseInputs(dst, inputs);
  const readable = await granted("read", dst);
  const link = readable
    ? await Deno.lstat(dst).catch(() => undefined)
    : undefined;
  // The file written: DST, or the file a link at DST points at.
  const path = link?.isSymlink ? await linkTarget(dst) : dst;
  const slash = path.lastIndexOf("/");
  const dir = slash < 0 ? "." : path.slice(0, slash) || "/";
  const base = path.slice(slash + 1);
  const existing = readable
    ? await Deno.stat(path).catch(() => undefined)
    : undefined;
  if (base === "" && !existing?.isDirectory) throw await notADirectory(dst);
  if (
    base === "" || base === "." || base === ".." || existing?.isDirectory
  ) {
    throw new RangeError(
      `Cannot write '${dst}': it is a directory; give DST a file name, such as '${
        dst.replace(/\/*$/, "")
      }/disk.raw'`,
    );
  }
  // A device or a FIFO would be replaced by a regular file (or removed).
  if (existing && !existing.isFile) throw notRegular(dst);
  // (getRandomValues: the first randomUUID costs Deno about 8 ms.)
  const tag = Array.from(
    crypto.getRandomValues(new Uint8Array(4)),
    (b) => b.toString(16).padStart(2, "0"),
  ).join("");
  const temp = `${dir}/${temporaryName(base, tag)}`;
  // Deno's rename needs read access to the temporary file as well.
  const beside = await granted("write", temp) && await granted("read", temp);
  let file: Deno.FsFile | undefined;
  try {
    file = beside
      ? await Deno.open(temp, { write: true, createNew: true })
      : undefined;
  } catch (e) {
    // A directory we may not write in, holding a file we may: written in
    // place, as qemu-img writes it.
    const inPlace = e instanceof Deno.errors.PermissionDenied &&
      existing !== undefined && await granted("write", dst);
    if (!inPlace) throw cannotWrite(dst, dir, e);
  }
  if (file) {
    const opened = file;
    if (existing) {
      await keepModeAndOwner(temp, existing).catch(async (e) => {
        opened.close();
        await Deno.remove(temp).catch(() => {});
        throw cannotWrite(dst, dir, e);
      });
    }
    return {
      file: opened,
      path: temp,
      temporary: true,
      async commit() {
        opened.close();
        try {
          await Deno.rename(temp, path);
        } catch (e) {
          await Deno.remove(temp).catch(() => {});
          throw e;
        }
      },
      async discard() {
        opened.close();
        await Deno.remove(temp).catch(() => {});
      },
    };
  }
  if (!(await granted("write", dst))) {
    throw new PermissionNeeded("write", dst);
  }
  return await writeInPlace(dst, dir, inputs, link?.isSymlink === true);
}

/**
 * Opens `dst` to be written in place (through a link at `dst`, if
 * `throughLink`): emptied now, and on failure removed, or emptied if it is
 * reached through a link (the link is not ours to remove, nor its target
 * ours to reach).
 */
async function writeInPlace(
  dst: string,
  dir: string,
  inputs: InputFile[],
  throughLink: boolean,
): Promise<OutputFile> {
  let file: Deno.FsFile;
  try {
    file = await Deno.open(dst, { write: true, create: true });
  } catch (e) {
    throw cannotWrite(dst, dir, e);
  }
  try {
    // Without read access DST cannot be compared with the inputs (a link
    // to one would be emptied): one of the inputs' size is too close.
    const size = await file.seek(0, Deno.SeekMode.End);
    const twin = size > 0 ? await inputOfSize(inputs, size) : undefined;
    if (twin !== undefined) {
      throw new RangeError(
        `refusing to write '${dst}': without read access to it, it cannot be told from the input '${twin}', which has its size (a link to it?); allow reading it too (--allow-read=${dst}) or remove it first`,
      );
    }
    // Emptied now (it is written from the start): this fails on a device,
    // which the failure's clean-up would then remove.
    await file.truncate(0);
  } catch (e) {
    file.close();
    if (e instanceof RangeError) throw e;
    if ((e as { code?: string }).code === "EINVAL") throw notRegular(dst);
    throw new Error(
      `Cannot write '${dst}': ${(e as Error)?.message ?? String(e)}`,
      { cause: e },
    );
  }
  return {
    file,
    path: dst,
    temporary: false,
    commit() {
      file.close();
      return Promise.resolve();
    },
    async discard() {
      if (throughLink) await file.truncate(0).catch(() => {});
      file.close();
      if (!throughLink) await Deno.remove(dst).catch(() => {});
    },
  };
}

/**
 * The file the symbolic link `link` points at, followed to the end: its
 * real path, or for a dangling link the path it names (created there, as
 * `open` through the link would create it).
 */
async function linkTarget(link: string): Promise<string> {
  const real = await Deno.realPath(link).catch(() => undefined);
  if (real !== undefined) return real;
  let path = link;
  // A chain of links ending nowhere: followed as far as the system would
  // (40 links, Linux's limit), then the last name is the file.
  for (let i = 0; i < 40; i++) {
    const stat = await Deno.lstat(path).catch(() => undefined);
    if (!stat?.isSymlink) break;
    const to = await Deno.readLink(path);
    const slash = path.lastIndexOf("/");
    path = to.startsWith("/") || slash < 0
      ? to
      : `${path.slice(0, slash + 1)}${to}`;
  }
  return path;
}

/**
 * Gives the temporary file `temp` the mode and owner of the file it
 * replaces, as qemu-img, writing in place, keeps them. The owner only where
 * the system allows (as root, or the same owner): otherwise it becomes ours.
 */
async function keepModeAndOwner(
  temp: string,
  existing: Deno.FileInfo,
): Promise<void> {
  if (existing.mode !== null) await Deno.chmod(temp, existing.mode & 0o777);
  if (existing.uid === null || existing.gid === null) return;
  const made = await Deno.stat(temp);
  if (made.uid !== existing.uid || made.gid !== existing.gid) {
    await Deno.chown(temp, existing.uid, existing.gid).catch(() => {});
  }
}

/**
 * The temporary file's name beside `base`: `.BASE.TAG.partial`, with BASE
 * cut short (by characters) to fit the 255 bytes a file name may have.
 */
function temporaryName(base: string, tag: string): string {
  const bytes = (text: string) => new TextEncoder().encode(text).length;
  const chars = Array.from(base);
  let name = `.${base}.${tag}.partial`;
  while (bytes(name) > 255 && chars.length > 0) {
    chars.pop();
    name = `.${chars.join("")}.${tag}.partial`;
  }
  return name;
}

/** The first of `files` that is `size` bytes long, if one is. */
async function inputOfSize(
  files: InputFile[],
  size: number,
): Promise<string | undefined> {
  for (const file of files) {
    const path = typeof file === "string" ? file : file.path;
    if ((await Deno.stat(path).catch(() => undefined))?.size === size) {
      return path;
    }
  }
  return undefined;
}

/**
 * The refusal of `dst`, a name ending in `/` that is no directory: what is
 * there, when it can be seen (nothing, or a file).
 */
async function notADirectory(dst: string): Promise<RangeError> {
  const named = dst.replace(/\/+$/, "");
  const there = await granted("read", named)
    ? await Deno.stat(named).then(
      (s) => s.isDirectory ? "a directory" : "a file",
      (e) => e instanceof Deno.errors.NotFound ? "nothing" : undefined,
    )
    : undefined;
  const why = there === "nothing"
    ? `there is no directory '${named}' (the name ends in '/'); create it, or give DST a file name such as '${named}'`
    : there === "a file"
    ? `'${named}' is a file, not a directory (the name ends in '/')`
    : "the name ends in '/', a directory's; give DST a file name";
  return new RangeError(`Cannot write '${dst}': ${why}`);
}

/** The refusal of a destination that is not a regular file. */
function notRegular(dst: string): RangeError {
  return new RangeError(
    `Cannot write '${dst}': it is not a regular file (a device, a FIFO or a socket); give DST a file name`,
  );
}

/**
 * The failure to open DST (or its temporary file) for writing, said about
 * the destination, not the temporary name.
 */
function cannotWrite(dst: string, dir: string, e: unknown): Error {
  const why = e instanceof Deno.errors.NotFound
    ? `its directory '${dir}' does not exist; create it first`
    : e instanceof Deno.errors.PermissionDenied
    ? `the system denies writing in '${dir}': check its owner and mode`
    : e instanceof Deno.errors.IsADirectory
    ? "it is a directory; give DST a file name"
    : (e as Error)?.message ?? String(e);
  return new Error(`Cannot write '${dst}': ${why}`, { cause: e });
}

/** Whether a permission is granted now (never prompts). */
export async function granted(
  name: "read" | "write",
  path: string,
): Promise<boolean> {
  return (await Deno.permissions.query({ name, path })).state === "granted";
}

/**
 * Throws unless read access to `path` (net access to its host, for an
 * http(s) URL) is granted, naming the flag, so that Deno never stops to
 * prompt.
 */
export async function requireRead(path: string): Promise<void> {
  if (/^https?:\/\//i.test(path)) {
    // A URL: net access to its host (never a prompt).
    const { host } = new URL(path);
    const { state } = await Deno.permissions.query({ name: "net", host });
    if (state !== "granted") {
      throw new PermissionNeeded("net", host);
    }
    return;
  }
  if (!(await granted("read", path))) {
    throw new PermissionNeeded("read", path);
  }
}

/** Refuses a destination that is one of the inputs, whatever the path. */
async function refuseInputs(
  dst: string,
  files: InputFile[],
): Promise<void> {
  const fail = (file: InputFile) =>
    new RangeError(
      `refusing to write '${dst}': it is ${
        typeof file === "string"
          ? `the same file as the input '${file}'`
          : file.what
      }`,
    );
  // With read access to DST, compare device and inode (links, symlinks).
  const target = await granted("read", dst)
    ? await Deno.stat(dst).catch(() => undefined)
    : undefined;
  for (const file of files) {
    const input = typeof file === "string" ? file : file.path;
    const stat = await Deno.stat(input).catch(() => undefined);
    if (target && stat && target.ino !== null && stat.ino !== null) {
      if (target.dev === stat.dev && target.ino === stat.ino) throw fail(file);
      continue;
    }
    const real = await Deno.realPath(input).catch(() => input);
    if (absolute(dst) === absolute(real) || absolute(dst) === absolute(input)) {
      throw fail(file);
    }
  }
}

/** An absolute path with `.` and `..` folded. */
function absolute(path: string): string {
  const abs = path.startsWith("/") ? path : `${Deno.cwd()}/${path}`;
  const parts: string[] = [];
  for (const part of abs.split("/")) {
    if (part === "" || part === ".") continue;
    if (part === "..") parts.pop();
    else parts.push(part);
  }
  return "/" + parts.join("/");
}
