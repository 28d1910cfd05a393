/**
 * `qcow2 map`: where an image's guest bytes live, like `qemu-img map`
 * (QEMU 7.2's output, exit statuses and messages).
 *
 * @module
 */

import { type ByteSource, type MapEntry, mapImage } from "../mod.ts";
import { type HostFile, hostFile } from "../native/holes.ts";
import {
  type CommandSpec,
  imageFormat,
  imageNames,
  NAME,
  parse,
  unsupportedHelp,
} from "./_args.ts";
import { openFile, openInput, probePath } from "./_open.ts";
import { namedImages, SECRET_HELP, withSecretFlags } from "./_secrets.ts";
import { parseOffset } from "./_size.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "show where an image's data lies";

/** The options `map` takes beyond those of every command. */
const SPEC: CommandSpec = withSecretFlags({
  string: ["start-offset", "max-length"],
  alias: { s: "start-offset", l: "max-length" },
  output: true,
  usageStatus: 1,
});

/** The command's help text. */
export const usage =
  `Usage: ${NAME} map [-f FMT] [--output=human|json] [-s|--start-offset=OFFSET] [-l|--max-length=LENGTH] [-U] IMAGE

Show which guest byte ranges of IMAGE hold data, zeros or nothing, in which
layer of the backing chain and where in which file, as 'qemu-img map' does
(same output, both forms). Only metadata is read.

Options:
  -f, --format FMT         read IMAGE as FMT (qcow2, qcow or raw) instead of
                           probing
  --output=json            one JSON object per run: start, length, depth,
                           present, zero, data, offset (also --json);
                           --output=human (the default) lists the data runs
  -s, --start-offset=OFFSET  start there (k, M, G, T, P, E suffixes)
  -l, --max-length=LENGTH  map at most this many bytes
  -U, --force-share        accepted for qemu-img's sake (images are never locked)
${SECRET_HELP}
  -h, --help               show this help

Holes in the host files (raw images, and qcow2 images whose clusters QEMU
checks against the file) are found with lseek(SEEK_DATA/SEEK_HOLE), as QEMU
finds them, only when run with --allow-ffi (Linux); without it every byte
of a file counts as data, where qemu-img may report zeros.

Exit status: 0 success, 1 error (usage errors too, as qemu-img's).

Needs: --allow-read=IMAGE and its backing and data files; --allow-ffi for holes

${unsupportedHelp("map", SPEC)}`;

/** Runs `qcow2 map ARGS` and resolves to the exit status. */
export function main(args: string[]): Promise<number> {
  return runMap(args, writeStdout);
}

/**
 * Runs `qcow2 map ARGS`, handing its standard output to `write` in pieces.
 *
 * @returns The exit status (0).
 * @throws {UsageError} for bad arguments, {@linkcode Qcow2Error} and
 * file errors for what cannot be read, `Error` for a compressed cluster in
 * the human form (whose message is qemu-img's).
 */
export async function runMap(
  args: string[],
  write: (text: string) => void,
): Promise<number> {
  const flags = parse("map", args, SPEC);
  if (flags.help) {
    console.log(usage);
    return 0;
  }
  const [{ path, password }] = await namedImages(
    flags,
    imageNames(flags, 1, "map"),
    "map",
    1,
  );
  const files = [path];
  // qemu-img probes a file without the qcow magic as raw.
  const format = imageFormat(flags.format, "-f", "map", 1) ??
    await probePath(files[0]);
  const start = flags["start-offset"] === undefined
    ? 0
    : parseOffset(String(flags["start-offset"]), "start offset");
  const maxLength = flags["max-length"] === undefined
    ? undefined
    : parseOffset(String(flags["max-length"]), "max length");
  const json = flags.output === "json";

  // Each file's name as qemu-img prints it, and its path for the host's
  // allocation.
  const names = new WeakMap<ByteSource, { name: string; path: string }>();
  const hosts: HostFile[] = [];
  const hostOf = new WeakMap<ByteSource, HostFile>();
  const { image } = await openInput(files[0], format, {
    password,
    openFile: async (path, request) => {
      const file = await openFile(path);
      // QEMU 7.2 opens a data file by its stored name.
      names.set(file, {
        name: request.kind === "data-file" ? request.name : path,
        path,
      });
      return file;
    },
    // (A file without the qcow magic is probed as raw, as qemu-img does.)
  }, { probeRaw: true });
  const out = new Output(write);
  try {
    const top = (image as { source?: ByteSource }).source;
    if (top) names.set(top, { name: files[0], path: files[0] });
    const allocation = (file: ByteSource) => {
      let host = hostOf.get(file);
      const known = names.get(file);
      // A remote file's allocation is unknown, as in QEMU's curl driver.
      if (!host && known && !/^https?:\/\//i.test(known.path)) {
        host = hostFile(known.path);
        hosts.push(host);
        hostOf.set(file, host);
      }
      return host;
    };
    if (json) out.write("[");
    else {
      out.write(
        `${"Offset".padEnd(16)}${"Length".padEnd(16)}${
          "Mapped to".padEnd(16)
        }File\n`,
      );
    }
    let first = true;
    const entries = mapImage(image, { start, length: maxLength, allocation });
    for await (const e of entries) {
      if (json) {
        out.write(`${first ? "" : ",\n"}${jsonEntry(e)}`);
      } else if (e.data && e.offset === undefined) {
        out.flush();
        throw new Error(
          "File contains external, encrypted or compressed clusters.",
        );
      } else if (e.data && !e.zero) {
        out.write(
          `${hex(e.start)}${hex(e.length)}${hex(e.offset!)}${
            names.get(e.file!)?.name ?? ""
          }\n`,
        );
      }
      first = false;
    }
    if (json) {
      if (first) {
        // qemu-img prints the empty run it starts from.
        out.write(jsonEntry({
          start,
          length: 0,
          depth: 0,
          present: false,
          zero: false,
          data: false,
        }));
      }
      out.write("]\n");
    }
    out.flush();
    return 0;
  } finally {
    out.flush();
    for (const host of hosts) host.close();
    image.close();
  }
}

function jsonEntry(e: MapEntry): string {
  return `{ "start": ${e.start}, "length": ${e.length}, "depth": ${e.depth}, "present": ${e.present}, "zero": ${e.zero}, "data": ${e.data}${
    e.offset === undefined ? "" : `, "offset": ${e.offset}`
  }}`;
}

/** C's `%#-16x`: 0x-prefixed hex (plain 0 for zero), padded to 16. */
function hex(n: number): string {
  return (n === 0 ? "0" : `0x${n.toString(16)}`).padEnd(16);
}

/** Writes text to standard output, whole. */
function writeStdout(text: string): void {
  const bytes = new TextEncoder().encode(text);
  for (let done = 0; done < bytes.length;) {
    done += Deno.stdout.writeSync(bytes.subarray(done));
  }
}

/** Output gathered into blocks of about 64 KiB. */
class Output {
  #write: (text: string) => void;
  #parts: string[] = [];
  #length = 0;

  constructor(write: (text: string) => void) {
    this.#write = write;
  }

  write(text: string): void {
    this.#parts.push(text);
    this.#length += text.length;
    if (this.#length >= 65536) this.flush();
  }

  flush(): void {
    if (this.#parts.length === 0) return;
    const text = this.#parts.join("");
    this.#parts = [];
    this.#length = 0;
    this.#write(text);
  }
}
