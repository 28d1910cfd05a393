/**
 * `qcow2 check`: is this image healthy, like `qemu-img check` (QEMU 7.2's
 * messages, report, JSON and exit statuses; repairs with -r).
 *
 * @module
 */

import {
  type ByteSource,
  checkQcow2,
  type CheckResult,
  fsFileStore,
  Qcow2Error,
} from "../mod.ts";
import { probeSource } from "../src/probe.ts";
import {
  type CommandSpec,
  imageFormat,
  imageNames,
  NAME,
  parse,
  unsupportedHelp,
  UsageError,
} from "./_args.ts";
import { writeStderr } from "./_output.ts";
import { openFile, openInput } from "./_open.ts";
import { namedImages, SECRET_HELP, withSecretFlags } from "./_secrets.ts";
import { atPath } from "../native/fs_errors.ts";

/** One line for the command list of `qcow2 --help`. */
export const summary = "check an image's refcounts and tables";

/** The options `check` takes beyond those of every command. */
const SPEC: CommandSpec = withSecretFlags({
  string: ["repair"],
  alias: { r: "repair" },
  output: true,
  usageStatus: 1,
});

/** The command's help text. */
export const usage =
  `Usage: ${NAME} check [-f FMT] [--output=human|json] [-r leaks|all] [-U] [-q] IMAGE

Check a qcow2 image as 'qemu-img check' does: rebuild the refcount of every
host cluster from everything that references it (header, L1/L2 tables of the
active state and of every snapshot, data and compressed clusters, refcount
table and blocks, snapshot table, bitmaps, the LUKS area) and compare them
with the refcounts on disk, then check the COPIED flags. Problems are listed
on standard error, the report on standard output. Nothing is written
without -r.

Options:
  -f, --format FMT  read IMAGE as FMT instead of probing (qcow2; qcow and raw
                    have nothing to check)
  --output=json     the report as qemu-img's JSON (also --json)
  -r, --repair=leaks  lower refcounts that are too high (leaked clusters)
  -r, --repair=all  also raise refcounts that are too low, rebuild a broken
                    refcount structure, fix COPIED flags; then check again
                    (as qemu-img, which writes the same repairs; the image
                    must fit in one window of 2 Mi host clusters)
  -q, --quiet       print no report (problems still go to standard error)
${SECRET_HELP}
                    (taken as qemu-img takes them; checking needs no key)
  -U, --force-share accepted for qemu-img's sake (images are never locked)
  -h, --help        show this help

Exit status: 0 clean, 2 corruptions, 3 leaked clusters only, 1 errors that
stopped the check (usage errors too), 63 a format without checks (raw, qcow).

Memory: the rebuilt refcounts of 2 Mi host clusters (8 MiB) are held at a
time, whatever the image's size.

Needs: --allow-read=IMAGE (and --allow-write=IMAGE with -r)

${unsupportedHelp("check", SPEC)}`;

/** Runs `qcow2 check ARGS` and resolves to the exit status. */
export function main(args: string[]): Promise<number> {
  return runCheck(args, writeStdout, writeStderr);
}

/**
 * Runs `qcow2 check ARGS` with its standard output and error handed to
 * `out` and `err`.
 *
 * @returns The exit status: 0, 2, 3, 1 (check errors) or 63.
 * @throws {UsageError} for bad arguments, and what opening the image throws.
 */
export async function runCheck(
  args: string[],
  out: (text: string) => void,
  err: (text: string) => void,
): Promise<number> {
  const flags = parse("check", args, SPEC);
  if (flags.help) {
    out(usage + "\n");
    return 0;
  }
  const files = imageNames(flags, 1, "check");
  const given = imageFormat(flags.format, "-f", "check", 1);
  const repair = flags.repair as string | undefined;
  if (repair !== undefined && repair !== "leaks" && repair !== "all") {
    // qemu-img's words.
    throw new UsageError(
      "Unknown option value for -r (expecting 'leaks' or 'all'): " + repair,
      "check",
      1,
    );
  }
  // --image-opts and --object as qemu-img takes them; no key is needed.
  const [{ path }] = await namedImages(flags, files, "check", 1);
  const quiet = Boolean(flags.quiet);
  const json = flags.output === "json";
  const file: ByteSource & { close?(): void | Promise<void> } = repair
    ? fsFileStore(
      await Deno.open(path, { read: true, write: true }).catch((e) =>
        Promise.reject(atPath(e, path, "write"))
      ),
      true,
    )
    : await openFile(path);
  let result: CheckResult;
  try {
    const probed = await probeSource(file);
    const format = given ?? probed;
    if (format !== "qcow2") {
      err(`${NAME}: This image format does not support checks\n`);
      return 63;
    }
    await openNamedFiles(path);
    const onMessage = (line: string) => err(line + "\n");
    result = await checkQcow2(file, { onMessage, repair });
    if (result.failed !== undefined) {
      err(`${NAME}: Check failed: ${result.failed}\n`);
      return 1;
    }
    if (result.corruptionsFixed || result.leaksFixed) {
      if (!json && !quiet) {
        out(
          "The following inconsistencies were found and repaired:\n\n" +
            `    ${result.leaksFixed} leaked clusters\n` +
            `    ${result.corruptionsFixed} corruptions\n\n` +
            "Double checking the fixed image now...\n",
        );
      }
      const { corruptionsFixed, leaksFixed } = result;
      result = {
        ...await checkQcow2(file, { onMessage }),
        corruptionsFixed,
        leaksFixed,
      };
    }
  } finally {
    await file.close?.();
  }
  if (!quiet) {
    out(
      json ? checkJson(result, files[0]) + "\n" : checkText(result),
    );
  }
  if (result.checkErrors) {
    err(`${NAME}: Check failed\n`);
    return 1;
  }
  return result.corruptions ? 2 : result.leaks ? 3 : 0;
}

/**
 * The report as `qemu-img check` prints it (`dump_human_image_check`).
 *
 * @param r The counts.
 * @returns The text, ending in a newline.
 */
export function checkText(r: CheckResult): string {
  let text = "";
  if (!(r.corruptions || r.leaks || r.checkErrors)) {
    text += "No errors were found on the image.\n";
  } else {
    if (r.corruptions) {
      text += `\n${r.corruptions} errors were found on the image.\n` +
        "Data may be corrupted, or further writes to the image may corrupt it.\n";
    }
    if (r.leaks) {
      text += `\n${r.leaks} leaked clusters were found on the image.\n` +
        "This means waste of disk space, but no harm to data.\n";
    }
    if (r.checkErrors) {
      text +=
        `\n${r.checkErrors} internal errors have occurred during the check.\n`;
    }
  }
  if (r.totalClusters !== 0 && r.allocatedClusters !== 0) {
    text += `${r.allocatedClusters}/${r.totalClusters} = ${
      percent(r.allocatedClusters * 100 / r.totalClusters)
    }% allocated, ${
      percent(r.fragmentedClusters * 100 / r.allocatedClusters)
    }% fragmented, ${
      percent(r.compressedClusters * 100 / r.allocatedClusters)
    }% compressed clusters\n`;
  }
  if (r.imageEndOffset) text += `Image end offset: ${r.imageEndOffset}\n`;
  return text;
}

/** C's `%0.2f`: two decimals, ties of the exact binary value to even. */
function percent(value: number): string {
  const exact = value.toFixed(40);
  const dot = exact.indexOf(".");
  if (/^50*$/.test(exact.slice(dot + 3))) {
    const cents = BigInt(exact.slice(0, dot) + exact.slice(dot + 1, dot + 3));
    const even = cents % 2n === 0n ? cents : cents + 1n;
    const s = even.toString().padStart(3, "0");
    return `${s.slice(0, -2)}.${s.slice(-2)}`;
  }
  return value.toFixed(2);
}

/**
 * Hash order of QEMU's QDict (`tdb_hash` modulo 512 buckets, later keys
 * first within a bucket), in which qemu-img prints a JSON object's keys.
 */
function qdictOrder(keys: string[]): string[] {
  const hash = (name: string) => {
    const bytes = new TextEncoder().encode(name);
    let value = Math.imul(0x238f13af, bytes.length) >>> 0;
    for (let i = 0; i < bytes.length; i++) {
      value = (value + ((bytes[i] << ((i * 5) % 24)) >>> 0)) >>> 0;
    }
    return ((Math.imul(1103515243, value) + 12345) >>> 0) % 512;
  };
  return keys.map((k, i) => ({ k, i, b: hash(k) }))
    .sort((a, b) => a.b - b.b || b.i - a.i)
    .map((e) => e.k);
}

/**
 * The report as `qemu-img check --output=json` prints it (QAPI's
 * `ImageCheck`: zero counts left out but `check-errors`), keys in
 * qemu-img's order.
 *
 * @param r The counts.
 * @param filename The image's name as given.
 * @returns The JSON text, without a final newline.
 */
export function checkJson(r: CheckResult, filename: string): string {
  const fields: [string, string | number, boolean][] = [
    ["filename", filename, true],
    ["format", "qcow2", true],
    ["check-errors", r.checkErrors, true],
    ["image-end-offset", r.imageEndOffset, false],
    ["corruptions", r.corruptions, false],
    ["leaks", r.leaks, false],
    ["corruptions-fixed", r.corruptionsFixed, false],
    ["leaks-fixed", r.leaksFixed, false],
    ["total-clusters", r.totalClusters, false],
    ["allocated-clusters", r.allocatedClusters, false],
    ["fragmented-clusters", r.fragmentedClusters, false],
    ["compressed-clusters", r.compressedClusters, false],
  ];
  const present = fields.filter(([, v, always]) => always || v !== 0);
  const value = new Map(present.map(([k, v]) => [k, v]));
  const lines = qdictOrder(present.map(([k]) => k)).map((k) =>
    `    ${JSON.stringify(k)}: ${JSON.stringify(value.get(k))}`
  );
  return `{\n${lines.join(",\n")}\n}`;
}

/**
 * qemu-img opens the image's backing chain and data file before checking,
 * and fails when one cannot be opened: so does `check`. (Other errors of
 * the open are the check's to report.)
 */
async function openNamedFiles(path: string): Promise<void> {
  try {
    const { image } = await openInput(path, "qcow2", {
      // A key is not needed to check, nor asked for.
      password: undefined,
    });
    image.close();
  } catch (e) {
    if (
      e instanceof Qcow2Error &&
      (e.code === "BACKING_FILE" || e.code === "EXTERNAL_DATA_FILE")
    ) {
      throw e;
    }
  }
}

/** Writes text to standard output, whole. */
function writeStdout(text: string): void {
  const bytes = new TextEncoder().encode(text);
  for (let done = 0; done < bytes.length;) {
    done += Deno.stdout.writeSync(bytes.subarray(done));
  }
}
