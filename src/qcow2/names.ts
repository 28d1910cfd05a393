/**
 * Names read from an image (backing file, backing format, external data
 * file, feature names, snapshot IDs and names), read as QEMU 7.2 reads them.
 *
 * QEMU copies a name's bytes into a C string: **a name ends at its first NUL
 * byte**, and an empty name is no name. Its bytes are used as they are, so
 * a name need not be UTF-8; here such bytes read as U+FFFD, as in
 * `qemu-img info --output=json` (a listing shows the same), and
 * {@linkcode ImageName.utf8} says so, since a file cannot be opened by a
 * name that is not its own. Each kind's own rule (its limit, what an empty
 * name means) is applied where it is read; see `docs/interop/qcow2.txt` and
 * the functions of `block/qcow2.c` named there.
 *
 * @module
 */

import { Qcow2Error } from "../errors.ts";

/** A name read from an image. */
export interface ImageName {
  /**
   * The name up to its first NUL byte, as text; bytes that are not UTF-8
   * read as U+FFFD.
   */
  text: string;
  /** Whether the bytes (up to the first NUL) are valid UTF-8. */
  utf8: boolean;
}

const strict = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });
const lenient = new TextDecoder("utf-8", { ignoreBOM: true });

/**
 * Reads a name stored in an image as QEMU does: up to its first NUL byte
 * (QEMU copies it into a C string), at most `limit` bytes (QEMU's listings
 * copy snapshot IDs and names into fixed buffers of 128 and 256 bytes:
 * `QEMUSnapshotInfo` in `include/block/snapshot.h`).
 *
 * @param bytes The name's bytes as stored (its length field's worth).
 * @param limit Bytes kept at most, after the cut at NUL (default: all).
 * @returns The text, and whether it was UTF-8.
 *
 * @example A name with a NUL, a name that is not UTF-8, an empty name
 * ```ts
 * import { imageName } from "./names.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = (s: string) => new Uint8Array([...s].map((c) => c.charCodeAt(0)));
 * assertEquals(imageName(bytes("base.qcow2\0junk")), { text: "base.qcow2", utf8: true });
 * assertEquals(imageName(bytes("b\xffse")), { text: "b\ufffdse", utf8: false });
 * assertEquals(imageName(bytes("\0\0")), { text: "", utf8: true });
 * assertEquals(imageName(bytes("abcdef"), 3).text, "abc");
 * ```
 */
export function imageName(bytes: Uint8Array, limit?: number): ImageName {
  const nul = bytes.indexOf(0);
  let cut = nul < 0 ? bytes : bytes.subarray(0, nul);
  if (limit !== undefined && cut.length > limit) cut = cut.subarray(0, limit);
  try {
    return { text: strict.decode(cut), utf8: true };
  } catch {
    return { text: lenient.decode(cut), utf8: false };
  }
}

/** Longest snapshot ID QEMU lists (`QEMUSnapshotInfo.id_str`, 128 bytes). */
export const LISTED_ID_BYTES = 127;
/** Longest snapshot name QEMU lists (`QEMUSnapshotInfo.name`, 256 bytes). */
export const LISTED_NAME_BYTES = 255;

/**
 * The bytes a name's character takes in QEMU's output: its UTF-8 length,
 * but 1 for U+FFFD, which stands for a byte that was not UTF-8 (an
 * approximation only when the image held a real U+FFFD or a cut sequence).
 */
function bytesOf(char: string): number {
  const c = char.codePointAt(0)!;
  if (c === 0xfffd) return 1;
  return c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
}

/**
 * A name as QEMU's listings show it: cut to `limit` bytes (`qemu-img info`
 * and `qemu-img snapshot -l` copy snapshot IDs and names into fixed
 * buffers; see {@linkcode LISTED_ID_BYTES}). A character cut in the middle
 * shows as U+FFFD, as its first bytes alone would.
 *
 * @param text A name, as {@linkcode imageName} read it.
 * @param limit The bytes kept at most.
 * @returns The listed text.
 *
 * @example A long snapshot name, listed
 * ```ts
 * import { LISTED_NAME_BYTES, listedName } from "./names.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(listedName("n".repeat(300), LISTED_NAME_BYTES).length, 255);
 * assertEquals(listedName("ééé", 3), "é\ufffd");
 * ```
 */
export function listedName(text: string, limit: number): string {
  let bytes = 0;
  let out = "";
  for (const char of text) {
    const n = bytesOf(char);
    if (bytes + n > limit) return bytes < limit ? out + "\ufffd" : out;
    bytes += n;
    out += char;
  }
  return out;
}

/**
 * `text` padded with spaces to `width` bytes, as C's `%-*s` pads a name
 * (by bytes, not characters).
 *
 * @param text A name.
 * @param width The width in bytes.
 * @returns The padded text.
 *
 * @example Padding counts bytes
 * ```ts
 * import { padName } from "./names.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(padName("é", 4), "é  ");
 * ```
 */
export function padName(text: string, width: number): string {
  let bytes = 0;
  for (const char of text) bytes += bytesOf(char);
  return text + " ".repeat(Math.max(0, width - bytes));
}

/**
 * Checks that a backing or external data file can be opened by the name
 * the image gives: one that is not UTF-8 cannot be expressed as a path here
 * (QEMU opens its bytes as they are), and an empty data file name cannot be
 * opened at all (QEMU: "The 'file' block driver requires a file name").
 *
 * @param kind What the name is of.
 * @param name The name, as {@linkcode imageName} read it.
 * @param utf8 Whether its bytes were UTF-8 (`false` when not).
 * @param from The image that names it, for the message.
 * @throws {Qcow2Error} `BACKING_FILE` or `EXTERNAL_DATA_FILE`.
 *
 * @example A data file name that is not UTF-8
 * ```ts
 * import { checkOpenable } from "./names.ts";
 * import { assertThrows } from "@std/assert";
 *
 * checkOpenable("backing", "base.qcow2", undefined); // fine
 * assertThrows(() => checkOpenable("data-file", "d\ufffd.data", false, "disk.qcow2"));
 * ```
 */
export function checkOpenable(
  kind: "backing" | "data-file",
  name: string,
  utf8: boolean | undefined,
  from?: string,
): void {
  const what = kind === "backing" ? "backing file" : "external data file";
  const by = from !== undefined ? ` (named by '${from}')` : "";
  const fail = (why: string) =>
    new Qcow2Error(
      kind === "backing" ? "BACKING_FILE" : "EXTERNAL_DATA_FILE",
      `Cannot open ${what} '${name}'${by}: ${why}`,
      { file: from },
    );
  if (utf8 === false) {
    throw fail(
      "its name is not valid UTF-8 (shown with U+FFFD), which cannot be opened here; rename the file and fix the name with 'qemu-img rebase -u' or 'qemu-img amend'",
    );
  }
  if (name === "") throw fail("the image names it with an empty name");
}
