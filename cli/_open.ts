/**
 * Opening a command's input image with qemu-img's `-f`: not probed when
 * given, so `-f raw` reads a qcow2 file as its raw bytes, and `-f qcow2` or
 * `-f qcow` refuses a file of another format.
 *
 * @module
 */

import type { DiskImage } from "../src/disk.ts";
import type { OpenedFile, OpenOptions } from "../src/open.ts";
import { probeSource } from "../src/probe.ts";
import { Qcow2Error } from "../src/errors.ts";
import { openPath } from "../native/open_path.ts";
import { nativeFace } from "../native/face.ts";
import { RawImage } from "../src/raw.ts";
import { requireRead } from "../native/output.ts";
import type { FormatName } from "./_args.ts";

/**
 * Opens a file a command reads: a path, or an `http://`/`https://` URL
 * (read with Range requests). The permission is checked first (read access,
 * or net access to the URL's host), so Deno never stops to prompt.
 *
 * @throws {Deno.errors.NotCapable} Without the permission.
 */
export async function openFile(path: string): Promise<OpenedFile> {
  await requireRead(path);
  return await openPath(path);
}

/**
 * The format of the file at `path`, from its first bytes, as qemu-img probes
 * it (a file without the qcow magic is raw).
 *
 * @param path The file.
 * @param open How to open it (default: {@linkcode openFile}).
 * @returns Its format.
 */
export async function probePath(
  path: string,
  open: (path: string) => Promise<OpenedFile> = openFile,
): Promise<FormatName> {
  const file = await open(path);
  try {
    return await probeSource(file);
  } finally {
    file.close?.();
  }
}

/** An opened input: the disk, and the format it was read as. */
export interface OpenedInput {
  /** The guest view. */
  image: DiskImage;
  /** The format the file was read as. */
  format: FormatName;
}

/** How {@linkcode openInput} opens a file. */
export interface InputOpening {
  /** Opens the image file itself (default: {@linkcode openFile}). */
  openTop?: (path: string) => Promise<OpenedFile>;
  /**
   * Read a file without the qcow magic as raw, as qemu-img does (info and
   * convert refuse it instead).
   */
  probeRaw?: boolean;
}

/**
 * Opens the image at `path` in `format` (probed when undefined), its backing
 * chain and data file through `options.openFile` (default: {@linkcode openFile}),
 * the file itself with `how.openTop` (default: {@linkcode openFile}).
 *
 * @throws {Qcow2Error} `BAD_MAGIC` or `UNSUPPORTED_VERSION` when the file is
 * not of the format asked for, and whatever opening the image throws.
 */
export async function openInput(
  path: string,
  format: FormatName | undefined,
  options: OpenOptions = {},
  how: InputOpening = {},
): Promise<OpenedInput> {
  const file = await (how.openTop ?? openFile)(path);
  try {
    const probed = await probeSource(file);
    if (format === undefined && probed === "raw" && how.probeRaw) {
      format = "raw";
    }
    if (format === "raw") {
      if (options.snapshot !== undefined) {
        throw new Qcow2Error(
          "NO_SUCH_SNAPSHOT",
          `Cannot find snapshot '${options.snapshot}': a raw image has no snapshots`,
        );
      }
      return { image: new RawImage(file, () => file.close?.()), format };
    }
    if (format === undefined && probed === "raw") {
      // (convert to raw: a raw SRC is a copy, not a conversion.)
      throw new Qcow2Error(
        "BAD_MAGIC",
        "Cannot read qcow2 image: the file does not start with the qcow2 magic 'QFI\\xfb'; if it is a raw image, it needs no conversion (-f raw copies it)",
        { offset: 0 },
      );
    }
    if (format !== undefined && probed !== format) {
      // -f names a format the file is not in: say what it reads as.
      const drop = probed !== "raw" || how.probeRaw ? " or leave -f out" : "";
      throw new Qcow2Error(
        probed === "raw" ? "BAD_MAGIC" : "UNSUPPORTED_VERSION",
        `Cannot read ${format} image: it is ${
          probed === "raw"
            ? `not in ${format} format: it has no qcow or qcow2 magic, so it reads as a raw image`
            : `${
              probed === "qcow" ? "qcow version 1" : "qcow2 (version 2 or 3)"
            }, not ${format}`
        }; give -f ${probed}${drop}`,
        { offset: probed === "raw" ? 0 : 4 },
      );
    }
    const image = await nativeFace.openImage(file, {
      openFile,
      path,
      ...options,
    });
    const closeLayers = image.close.bind(image);
    image.close = () => {
      closeLayers();
      file.close?.();
    };
    // A file without the qcow magic is read as qcow2 and fails on it.
    return { image, format: probed === "qcow" ? "qcow" : "qcow2" };
  } catch (e) {
    file.close?.();
    throw e;
  }
}
