/**
 * `qcow2 info`: what an image is, like `qemu-img info`.
 *
 * @module
 */

import { fileSource } from "../src/io/source.ts";
import { formatInfo, type ImageInfo } from "../src/ops/info.ts";
import { type InfoFile, readInfo } from "../src/ops/read_info.ts";
import { Qcow2Error } from "../src/errors.ts";
import { openPath } from "../native/open_path.ts";
import { InFile } from "../native/explain.ts";
import { qemuJson } from "./_json.ts";
import { requireRead } from "../native/output.ts";
import {
  type CommandSpec,
  imageFormat,
  NAME,
  parse,
  unsupportedHelp,
  UsageError,
} from "./_args.ts";
import { namedImages, SECRET_HELP, withSecretFlags } from "./_secrets.ts";
import { atPath } from "../native/fs_errors.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "show what an image is";

/** The options `info` takes beyond those of every command. */
const SPEC: CommandSpec = withSecretFlags({
  boolean: ["backing-chain"],
  output: true,
});

/** The command's help text. */
export const usage =
  `Usage: ${NAME} info [-f FMT] [--output=human|json] [--backing-chain] [-U] [-q] IMAGE

Show an image's format, sizes, backing file, snapshots and qcow2 details,
like 'qemu-img info'. IMAGE is qcow2 or legacy qcow.

Options:
  -f, --format FMT  read IMAGE as FMT (qcow2, qcow or raw) instead of probing:
                    -f raw describes any file as a raw disk
  --output=json     print JSON with the key names of 'qemu-img info
                    --output=json' (also --json); --output=human is the default
  --backing-chain   show every layer of the backing chain (JSON: an array)
  -q, --quiet       print nothing: only check that the header can be read
                    (the exit status says whether it could)
  -U, --force-share accepted for qemu-img's sake (images are never locked)
  -h, --help        show this help
An encrypted image's info needs no password; these are taken as qemu-img
takes them, and not used:
${SECRET_HELP}

Needs: --allow-read=IMAGE (and each backing file, with --backing-chain)

${unsupportedHelp("info", SPEC)}`;

/** Runs `qcow2 info ARGS` and resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  const flags = parse("info", args, SPEC);
  if (flags.help) {
    console.log(usage);
    return 0;
  }
  if (flags.quiet && flags.json) {
    throw new UsageError(
      "-q prints nothing and --json prints JSON: choose one",
      "info",
    );
  }
  const format = imageFormat(flags.format, "-f", "info");
  const names = flags._.map(String);
  if (names.length !== 1) {
    throw new UsageError(
      `info takes exactly one IMAGE (${names.length} given)`,
      "info",
    );
  }
  const files = (await namedImages(flags, names, "info")).map((i) => i.path);
  let reports: ImageInfo[];
  try {
    reports = await readInfo(files[0], {
      format,
      backingChain: flags["backing-chain"] === true,
      openFile: openInfoFile,
    });
  } catch (e) {
    // readInfo's errors name the layer they concern.
    if (!(e instanceof Qcow2Error)) throw new InFile(files[0], e);
    throw e;
  }
  if (flags.quiet) return 0;
  if (flags.json) {
    const value = flags["backing-chain"] ? reports : reports[0];
    console.log(qemuJson(value));
  } else {
    const text = reports.map(formatInfo).join("\n");
    await Deno.stdout.write(new TextEncoder().encode(text));
  }
  return 0;
}

/** Opens a layer for `readInfo`: its bytes and the space it takes on disk. */
async function openInfoFile(path: string): Promise<InfoFile> {
  await requireRead(path);
  if (/^https?:\/\//i.test(path)) {
    // A URL: read with Range requests; its disk size is unavailable, as in
    // qemu-img.
    const remote = await openPath(path);
    return { source: remote, close: () => remote.close?.() };
  }
  const file = await Deno.open(path).catch((e) =>
    Promise.reject(atPath(e, path))
  );
  try {
    const source = await fileSource(file);
    const blocks = (await file.stat()).blocks;
    return {
      source,
      actualSize: blocks === null ? undefined : blocks * 512,
      close: () => file.close(),
    };
  } catch (e) {
    file.close();
    throw e;
  }
}
