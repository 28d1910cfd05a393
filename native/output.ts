/**
 * A safe destination file for the CLI (Deno): written beside the destination
 * and renamed over it only when the conversion succeeded, never one of the
 * inputs, and never a permission prompt.
 *
 * @module
 */

import { PermissionNeeded } from "./fs_errors.ts";

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
    throw options.blame ? options.blame(e) : e;
  }
  await output.commit();
  return done;
}

/**
 * Opens the output for `dst`. With read and write access to the
 * destination's directory (Deno's rename needs both), output goes to a
 * temporary file there and is renamed over `dst` on commit, so a failure
 * leaves a previous `dst` untouched. With write
 * access to `dst` alone, `dst` is written in place and removed on failure.
 *
 * @param dst The destination path.
 * @param inputs Every file the conversion reads: `dst` must be none of them.
 * @returns The output.
 * @throws {PermissionNeeded} Without write access (no prompt is shown).
 * @throws {RangeError} If `dst` is a directory, a device, a FIFO or a
 * socket, or one of the inputs; or, written in place (no read access to
 * it), if it exists with the size of one of the inputs.
 */
export async function openOutput(
  dst: string,
  inputs: InputFile[],
): Promise<OutputFile> {
  await refuseInputs(dst, inputs);
  const slash = dst.lastIndexOf("/");
  const dir = slash < 0 ? "." : dst.slice(0, slash) || "/";
  const base = dst.slice(slash + 1);
  const existing = await granted("read", dst)
    ? await Deno.stat(dst).catch(() => undefined)
    : undefined;
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
  if (await granted("write", temp) && await granted("read", temp)) {
    const file = await create(dst, dir, temp, { createNew: true });
    return {
      file,
      path: temp,
      temporary: true,
      async commit() {
        file.close();
        try {
          await Deno.rename(temp, dst);
        } catch (e) {
          await Deno.remove(temp).catch(() => {});
          throw e;
        }
      },
      async discard() {
        file.close();
        await Deno.remove(temp).catch(() => {});
      },
    };
  }
  if (!(await granted("write", dst))) {
    throw new PermissionNeeded("write", dst);
  }
  const file = await create(dst, dir, dst, { create: true });
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
      file.close();
      await Deno.remove(dst).catch(() => {});
    },
  };
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

/** The refusal of a destination that is not a regular file. */
function notRegular(dst: string): RangeError {
  return new RangeError(
    `Cannot write '${dst}': it is not a regular file (a device, a FIFO or a socket); give DST a file name`,
  );
}

/**
 * Opens `path` for writing (the destination or its temporary file), or
 * fails with a message about the destination, not the temporary name.
 */
async function create(
  dst: string,
  dir: string,
  path: string,
  options: Deno.OpenOptions,
): Promise<Deno.FsFile> {
  try {
    return await Deno.open(path, { write: true, ...options });
  } catch (e) {
    const why = e instanceof Deno.errors.NotFound
      ? `its directory '${dir}' does not exist; create it first`
      : e instanceof Deno.errors.PermissionDenied
      ? `the system denies writing in '${dir}': check its owner and mode`
      : e instanceof Deno.errors.IsADirectory
      ? "it is a directory; give DST a file name"
      : (e as Error)?.message ?? String(e);
    throw new Error(`Cannot write '${dst}': ${why}`, { cause: e });
  }
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
