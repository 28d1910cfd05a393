/**
 * `qcow2 compare`: whether two images hold the same disk, like
 * `qemu-img compare`.
 *
 * @module
 */

import {
  type ByteSource,
  compareImages,
  type CompareResult,
  type DiskImage,
  openPath,
  Qcow2Error,
} from "../mod.ts";
import { fastByteTests } from "../native/bytes.ts";
import { pooledNodeCrypto } from "../native/crypto.ts";
import { explain, InFile } from "../native/explain.ts";
import { requireRead } from "../native/output.ts";
import { mapSize } from "../src/ops/map.ts";
import {
  type CommandSpec,
  imageFormat,
  imageNames,
  NAME,
  parse,
  unsupportedHelp,
} from "./_args.ts";
import { HostFiles } from "./_hosts.ts";
import { namedImages, SECRET_HELP, withSecretFlags } from "./_secrets.ts";
import { openInput } from "./_open.ts";
import { progressOf } from "./_progress.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "check whether two images hold the same disk";

/** The options `compare` takes beyond those of every command. */
const SPEC: CommandSpec = withSecretFlags({
  boolean: ["s", "p"],
  string: ["F"],
  usageStatus: 1,
});

/** The command's help text. */
export const usage =
  `Usage: ${NAME} compare [-f FMT] [-F FMT] [-s] [-q] [-p] IMG1 IMG2

Check whether two images hold the same disk, through their backing chains,
as 'qemu-img compare' does: "Images are identical." or "Content mismatch at
offset N!" (N: the first 512-byte sector that differs). Disks of different
sizes are identical when the larger one holds only zeros past the smaller
one's end ("Warning: Image size mismatch!" first). What both images know to
be zeros is skipped without reading it.

Options:
  -f FMT          read IMG1 as FMT (qcow2, qcow or raw) instead of probing
  -F FMT          read IMG2 as FMT
  -s              strict: images of different sizes differ, and so do runs
                  of different allocation ("Strict mode: ..." messages)
  -q, --quiet     print nothing; the exit status says it
  -p              show a progress bar on standard error, if it is a terminal
  -U, --force-share  accepted for qemu-img's sake (images are never locked)
${SECRET_HELP}
                  (--password-file gives both images the same password)
  -h, --help      show this help

Exit status: 0 identical, 1 different (or a usage error, as qemu-img),
2 an image could not be opened, 3 its allocation could not be read,
4 its data could not be read.

Needs: --allow-read=IMG1,IMG2 (and their backing and data files); with
--allow-ffi, holes of sparse files count as zeros without reading, as in
qemu-img.

${unsupportedHelp("compare", SPEC)}`;

/** Qcow2Error codes met while walking tables: qemu-img's exit status 3. */
const TABLE_ERRORS = new Set([
  "BAD_TABLE_ENTRY",
  "UNALIGNED_OFFSET",
  "OFFSET_PAST_END",
  "METADATA_OVERLAP",
  "BAD_SUBCLUSTER_BITMAP",
]);

/** Runs `qcow2 compare ARGS` and resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  const flags = parse("compare", args, SPEC);
  if (flags.help) {
    console.log(usage);
    return 0;
  }
  const files = imageNames(flags, 2, "compare");
  const named = await namedImages(flags, files, "compare", 1);
  const formats = [
    imageFormat(flags.format, "-f", "compare", 2),
    imageFormat(flags.F, "-F", "compare", 2),
  ];
  const hosts = new HostFiles();
  const images: DiskImage[] = [];
  const say = (line: string) => {
    if (!flags.quiet) console.log(line);
  };
  try {
    for (const [i, { path: file, password }] of named.entries()) {
      try {
        await requireRead(file);
        const { image } = await openInput(file, formats[i], {
          password,
          // Sectors decrypted on every core.
          crypto: pooledNodeCrypto,
          openFile: async (path) => {
            await requireRead(path);
            const opened = await openPath(path);
            hosts.add(opened, path);
            return opened;
          },
        }, { probeRaw: true });
        const top = (image as { source?: ByteSource }).source;
        if (top) hosts.add(top, file);
        images.push(image);
      } catch (e) {
        return fail(new InFile(file, e), 2);
      }
    }
    const [a, b] = images;
    const bar = progressOf(flags);
    let result: CompareResult;
    try {
      result = await compareImages(a, b, {
        strict: flags.s,
        allocation: hosts.allocation,
        bytes: fastByteTests(Math.min(mapSize(a), mapSize(b))),
        onProgress: bar
          ? (done, total) => bar.update({ done, total })
          : undefined,
      });
    } catch (e) {
      const status = e instanceof Qcow2Error && TABLE_ERRORS.has(e.code)
        ? 3
        : 4;
      return fail(e, status);
    } finally {
      bar?.end();
    }
    for (const line of compareMessages(result)) say(line);
    return result.kind === "identical" ? 0 : 1;
  } finally {
    for (const image of images) image.close();
    hosts.close();
  }
}

/** Says `e` in one line, as every command does, and returns `status`. */
function fail(e: unknown, status: number): number {
  console.error(`${NAME}: ${explain(e, "compare")}`);
  return status;
}

/**
 * What `qemu-img compare` prints for a result, line by line.
 *
 * @param result What {@linkcode compareImages} found.
 * @returns The lines, without their newlines.
 */
export function compareMessages(result: CompareResult): string[] {
  switch (result.kind) {
    case "size":
      return ["Strict mode: Image size mismatch!"];
    case "status":
      return [`Strict mode: Offset ${result.offset} block status mismatch!`];
    case "content":
      return [
        ...(result.sizeMismatch ? ["Warning: Image size mismatch!"] : []),
        `Content mismatch at offset ${result.offset}!`,
      ];
    default:
      return [
        ...(result.sizeMismatch ? ["Warning: Image size mismatch!"] : []),
        "Images are identical.",
      ];
  }
}
