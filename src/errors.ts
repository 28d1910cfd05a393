/**
 * The one error type the library throws for images it cannot read, and its
 * stable codes.
 *
 * @module
 */

/**
 * Stable machine-readable reasons for a {@linkcode Qcow2Error}. Match on
 * these, never on the message text.
 *
 * @example Telling a missing backing file from a broken image
 * ```ts
 * import { openImage, Qcow2Error, type Qcow2ErrorCode } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../tests/fixtures/layouts/chain_top.qcow2", import.meta.url));
 * let code: Qcow2ErrorCode | undefined;
 * try {
 *   await openImage(bytes); // it names a backing file; no openFile says how to open it
 * } catch (e) {
 *   if (!(e instanceof Qcow2Error)) throw e;
 *   code = e.code;
 * }
 * assertEquals(code, "BACKING_FILE");
 * ```
 */
export type Qcow2ErrorCode =
  /** The file does not start with the qcow2 magic `QFI\xfb`. */
  | "BAD_MAGIC"
  /** The header version is neither 2 nor 3. */
  | "UNSUPPORTED_VERSION"
  /** The file is shorter than its header or a table says. */
  | "TRUNCATED"
  /** A header field holds a value outside what the format allows. */
  | "BAD_HEADER"
  /** A header extension is malformed. */
  | "BAD_EXTENSION"
  /** The image uses an incompatible feature this library does not know. */
  | "UNSUPPORTED_FEATURE"
  /** The image is encrypted and no password was given. */
  | "ENCRYPTED"
  /** No key slot of a LUKS image opens with the password given. */
  | "WRONG_PASSWORD"
  /** The LUKS header is damaged (the message names the field). */
  | "BAD_LUKS_HEADER"
  /** The image is encrypted with a cipher or hash this library lacks. */
  | "UNSUPPORTED_CIPHER"
  /** The image uses a compression type that is unknown or not available. */
  | "UNSUPPORTED_COMPRESSION"
  /** A backing file cannot be opened, loops, or the chain is too deep. */
  | "BACKING_FILE"
  /** The external data file cannot be opened. */
  | "EXTERNAL_DATA_FILE"
  /** No internal snapshot has the requested ID or name. */
  | "NO_SUCH_SNAPSHOT"
  /** An L1 or L2 table entry is invalid for the image (see the message). */
  | "BAD_TABLE_ENTRY"
  /** A table entry points at an offset that is not aligned to a cluster. */
  | "UNALIGNED_OFFSET"
  /** A table entry points past the end of the file. */
  | "OFFSET_PAST_END"
  /** A data cluster lies on the image's own metadata (header, tables). */
  | "METADATA_OVERLAP"
  /** An extended L2 entry has an impossible subcluster bitmap. */
  | "BAD_SUBCLUSTER_BITMAP"
  /** A compressed cluster could not be decompressed to exactly one cluster. */
  | "BAD_COMPRESSED_DATA"
  /** A value is larger than this library can handle safely. */
  | "TOO_LARGE"
  /** The operation was aborted by its `AbortSignal`. */
  | "ABORTED"
  /**
   * An HTTP request failed: an error status or no connection, after the
   * retries (the message has the status and the URL).
   */
  | "HTTP_ERROR"
  /** The server ignores `Range` requests (200 instead of 206). */
  | "HTTP_NO_RANGE"
  /** The remote file's length or ETag changed while it was read. */
  | "HTTP_CHANGED"
  /**
   * The source read differently the second time a conversion read it
   * (it changed while it was read).
   */
  | "SOURCE_CHANGED"
  /**
   * The image cannot be opened for writing: qcow v1, the corrupt bit set,
   * encrypted, or a read-only file.
   */
  | "NOT_WRITABLE"
  /**
   * Corruption found while writing (a write onto metadata, a refcount that
   * would underflow, an invalid entry): the image is marked corrupt, as
   * QEMU's qcow2_signal_corruption does, and no more is written.
   */
  | "CORRUPT"
  /** The persistent dirty bitmap directory breaks the format's constraints. */
  | "BAD_BITMAP_DIRECTORY";

/**
 * Options for {@linkcode Qcow2Error}.
 *
 * @example Raising a Qcow2Error from your own checks
 * ```ts
 * import { Qcow2Error, type Qcow2ErrorOptions } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const cause = new RangeError("entry 3 is out of range");
 * const options: Qcow2ErrorOptions = { cause, offset: 0x30018 };
 * const error = new Qcow2Error("BAD_TABLE_ENTRY", "L2 entry 3 is invalid", options);
 * assertEquals(error.offset, 0x30018);
 * assertEquals(error.cause, cause);
 * ```
 */
export interface Qcow2ErrorOptions extends ErrorOptions {
  /** Byte offset in the image file that the problem concerns, if any. */
  offset?: number;
  /**
   * The file (path or name) the problem is in, when known. The message
   * names it: give it when the detail names it, or set `prefixFile`.
   */
  file?: string;
  /** The header field (spec name, e.g. `l1_size`) that is wrong, if any. */
  field?: string;
  /** The bad value, if any. */
  value?: number | bigint | string;
  /**
   * The message goes on, after `": "`, with the first line of the message
   * of `cause` (what a file system, a hook or a server said).
   */
  quoteCause?: boolean;
  /** The message starts with `file` and `": "`. */
  prefixFile?: boolean;
  /**
   * The error arose in the backing file `file`: the message ends with
   * ` (in backing file 'FILE')`.
   */
  inBackingFile?: boolean;
}

/**
 * An image that cannot be read, or a request that cannot be served. The
 * `code` is stable; the message says what is wrong and where. It is
 * composed in one place, from the `detail` the thrower gives and the
 * options (the file, the cause's own words, the backing file), so that
 * nothing needs to read it: match on `code`, `file`, `offset`, `field` and
 * `value`.
 *
 * @example Telling image errors apart from other failures
 * ```ts
 * import { parseHeader, Qcow2Error } from "@qcow2/qcow2";
 * import { assertEquals, fail } from "@std/assert";
 *
 * try {
 *   parseHeader(new Uint8Array(512));
 *   fail("a zero-filled file is not an image");
 * } catch (e) {
 *   if (!(e instanceof Qcow2Error)) throw e;
 *   assertEquals(e.code, "BAD_MAGIC");
 * }
 * ```
 *
 * @example How the message is composed
 * ```ts
 * import { Qcow2Error } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const cause = new Error("No such file or directory (os error 2)");
 * const e = new Qcow2Error("BACKING_FILE", "Cannot open backing file 'base.qcow2'", { cause, quoteCause: true });
 * assertEquals(e.message, "Cannot open backing file 'base.qcow2': No such file or directory (os error 2)");
 * assertEquals(e.detail, "Cannot open backing file 'base.qcow2'");
 * const located = new Qcow2Error("TRUNCATED", "the file ends early", { file: "disk.qcow2", prefixFile: true });
 * assertEquals(located.message, "disk.qcow2: the file ends early");
 * ```
 */
export class Qcow2Error extends Error {
  /** Why the image could not be read; stable across releases. */
  readonly code: Qcow2ErrorCode;
  /** Byte offset in the image file that the problem concerns, if known. */
  readonly offset?: number;
  /**
   * The file (path or name) the problem is in, when known; the message
   * names it.
   */
  readonly file?: string;
  /** The header field (spec name) that is wrong, if one is. */
  readonly field?: string;
  /** The bad value, if one is named. */
  readonly value?: number | bigint | string;
  /**
   * What the thrower said: the message without the file prefix, the
   * cause's words and the backing file that the options add.
   */
  readonly detail: string;
  /** Whether the message quotes the first line of the cause's message. */
  readonly quotesCause: boolean;
  /** Whether the message starts with `file`. */
  readonly prefixesFile: boolean;
  /** Whether the error arose in the backing file `file` (and says so). */
  readonly inBackingFile: boolean;

  /**
   * Makes an error with a stable code.
   *
   * @param code The stable reason.
   * @param detail What is wrong, where, and what the user can do.
   * @param options The `cause`, and the `file`, file `offset`, header
   * `field` and bad `value` concerned; what the message adds to `detail`.
   */
  constructor(
    code: Qcow2ErrorCode,
    detail: string,
    options?: Qcow2ErrorOptions,
  ) {
    super(composeMessage(detail, options), options);
    this.name = "Qcow2Error";
    this.code = code;
    this.detail = detail;
    this.quotesCause = options?.quoteCause === true;
    this.prefixesFile = options?.prefixFile === true &&
      options.file !== undefined;
    this.inBackingFile = options?.inBackingFile === true &&
      options.file !== undefined;
    if (options?.offset !== undefined) this.offset = options.offset;
    if (options?.file !== undefined) this.file = options.file;
    if (options?.field !== undefined) this.field = options.field;
    if (options?.value !== undefined) this.value = options.value;
  }
}

/**
 * The message of a {@linkcode Qcow2Error}: `detail`, then the cause's own
 * words, then the backing file it arose in, the whole after the file.
 */
function composeMessage(detail: string, options?: Qcow2ErrorOptions): string {
  let text = detail;
  if (options?.quoteCause) text += `: ${firstLine(options.cause)}`;
  const file = options?.file;
  if (file !== undefined && options?.inBackingFile) {
    text += ` (in backing file '${file}')`;
  }
  if (file !== undefined && options?.prefixFile) text = `${file}: ${text}`;
  return text;
}

/** The first line of what an error (or any thrown value) says. */
export function firstLine(e: unknown): string {
  return e instanceof Error ? e.message.split("\n")[0] : String(e);
}

/**
 * `e` located in `file`, if it is a {@linkcode Qcow2Error} that names no
 * file yet: the same code, detail, offset, field and value, the message
 * starting with `file`.
 *
 * @param e What was thrown.
 * @param file The file being worked on.
 * @returns A Qcow2Error naming `file`, or `e` unchanged.
 */
export function inFile(e: unknown, file: string): unknown {
  if (!(e instanceof Qcow2Error) || e.file !== undefined) return e;
  return new Qcow2Error(e.code, e.detail, {
    cause: e.cause,
    offset: e.offset,
    file,
    field: e.field,
    value: e.value,
    quoteCause: e.quotesCause,
    prefixFile: true,
  });
}

/**
 * `e` said as an error of the backing file `file`, if it is a
 * {@linkcode Qcow2Error} that does not already concern that file: the same
 * code, offset, field and value, the message ending with
 * ` (in backing file 'FILE')`, `e` its cause.
 *
 * @param e What was thrown while the backing file was opened.
 * @param file The backing file's path.
 * @returns The error to throw.
 */
export function inBackingFile(e: unknown, file: string): unknown {
  if (!(e instanceof Qcow2Error) || e.file === file) return e;
  return new Qcow2Error(e.code, e.message, {
    cause: e,
    offset: e.offset,
    file,
    field: e.field,
    value: e.value,
    inBackingFile: true,
  });
}

/** Formats a byte offset or value as `0x…` for messages. */
export function hex(n: number | bigint): string {
  return "0x" + n.toString(16);
}
