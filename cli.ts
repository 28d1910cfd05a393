/**
 * `qcow2`: inspect and convert qcow2 disk images from the command line, in the
 * spirit of `qemu-img`.
 *
 * Run it with permissions scoped to the files it names:
 *
 * ```sh
 * deno run --allow-read=disk.qcow2 jsr:@qcow2/qcow2/cli info disk.qcow2
 * deno run --allow-read=disk.qcow2 --allow-write=disk.raw jsr:@qcow2/qcow2/cli convert -p disk.qcow2 disk.raw
 * ```
 *
 * Or install it as a `qcow2` command, or compile it to one binary:
 *
 * ```sh
 * deno install --global --name qcow2 --allow-read --allow-write jsr:@qcow2/qcow2/cli
 * deno compile --allow-read --allow-write --output qcow2 jsr:@qcow2/qcow2/cli
 * ```
 *
 * @module
 */

import denoJson from "./deno.json" with { type: "json" };
import { explain } from "./native/explain.ts";
import { CommandError, NAME, UsageError } from "./cli/_args.ts";
import { Interrupted } from "./cli/_interrupt.ts";

/** A command: its `main`, its help text and its line in the command list. */
interface Command {
  main(args: string[]): Promise<number>;
  usage: string;
  summary: string;
}

/**
 * Every command, by name: one line each. Each is imported when it runs, so
 * that a command loads only its own code (start-up time: bench/README.md).
 */
const COMMANDS: Record<string, () => Promise<Command>> = {
  info: () => import("./cli/info.ts"),
  convert: () => import("./cli/convert.ts"),
  create: () => import("./cli/create.ts"),
  map: () => import("./cli/map.ts"),
  check: () => import("./cli/check.ts"),
  measure: () => import("./cli/measure.ts"),
  compare: () => import("./cli/compare.ts"),
};

/** The text of `qcow2 --help` (it loads every command for its line). */
async function help(): Promise<string> {
  const commands = await Promise.all(
    Object.values(COMMANDS).map((load) => load()),
  );
  return `${NAME} ${denoJson.version}: inspect and convert qcow2 disk images

Usage: ${NAME} <command> [options]

Commands:
${
    commands.map((c) =>
      `  ${c.usage.split("\n")[0].slice(`Usage: ${NAME} `.length)}\n` +
      `                                   ${c.summary}`
    ).join("\n")
  }

Options:
  -h, --help      show help (also after a command: '${NAME} convert --help')
  -V, --version   show the version

Every command takes -q (--quiet: print nothing but errors), -f FMT (read the
image as qcow2, qcow or raw instead of probing) and -U/--force-share (accepted:
images are never locked); a command that prints a report takes
--output=human|json. The options are qemu-img's spellings: an option of
qemu-img's that a command does not support is refused by name, and its --help
ends with the list of them. Data and JSON go to standard output; progress and
errors to standard error.

Exit status: 0 success, 1 image or I/O error, 2 usage error (1 for map,
check, measure and compare, whose statuses are qemu-img's: see their --help);
130 after Ctrl-C (the output removed) and 141 when the reader of standard
output goes away, as for a process killed by SIGINT or SIGPIPE.
`;
}

/**
 * Runs the command line and resolves to the exit status.
 *
 * @param args The arguments after the program name.
 * @returns 0 on success, 1 on an image or I/O error, 2 on a usage error,
 * 130 after Ctrl-C (SIGINT), 141 when the reader of standard output went
 * away (as after SIGPIPE).
 *
 * @example Running a command in-process
 * ```ts
 * import { main } from "./cli.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(await main(["--version"]), 0);
 * ```
 */
export async function main(args: string[]): Promise<number> {
  try {
    return await run(args);
  } catch (e) {
    if (e instanceof UsageError) {
      const help = e.command ? `${NAME} ${e.command} --help` : `${NAME} --help`;
      console.error(`${NAME}: ${e.message}\nTry '${help}'.`);
      return e.status;
    }
    if (e instanceof CommandError) {
      for (const line of e.message.split("\n")) {
        console.error(`${NAME}: ${line}`);
      }
      return e.status;
    }
    // The reader of DST '-' went away (`| head`): stop quietly, with the
    // status of a process killed by SIGPIPE, as `cat` would.
    if (e instanceof Deno.errors.BrokenPipe) return 141;
    // Ctrl-C (or SIGTERM, SIGHUP): the command cleaned up; exit as a
    // process killed by that signal.
    if (e instanceof Interrupted) return e.status;
    console.error(`${NAME}: ${explain(e, args[0])}`);
    return 1;
  }
}

async function run(args: string[]): Promise<number> {
  const [command, ...rest] = args;
  if (command === undefined) {
    console.error(await help());
    return 2;
  }
  if (command === "-h" || command === "--help" || command === "help") {
    console.log(await help());
    return 0;
  }
  if (command === "-V" || command === "--version") {
    console.log(`${NAME} ${denoJson.version}`);
    return 0;
  }
  const load = Object.hasOwn(COMMANDS, command) ? COMMANDS[command] : null;
  if (load) return await (await load()).main(rest);
  throw new UsageError(
    `unknown command '${command}'; the commands are ${
      Object.keys(COMMANDS).map((c) => `'${c}'`).join(", ")
    }`,
  );
}

if (import.meta.main) {
  Deno.exit(await main(Deno.args));
}
