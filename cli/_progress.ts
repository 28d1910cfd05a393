/**
 * The progress bar of `-p`, as convert and compare show it.
 *
 * @module
 */

import { type ProgressBar, progressBar } from "../src/ops/progress_bar.ts";
import type { Flags } from "./_args.ts";
import { terminalColumns, writeStderr } from "./_output.ts";

/**
 * The progress bar the options ask for: with `-p`, without `-q`, on
 * standard error when it is a terminal (as qemu-img, which draws none
 * into a file or a pipe).
 *
 * @param flags The command's options.
 * @returns The bar, or undefined when none is drawn.
 */
export function progressOf(flags: Flags): ProgressBar | undefined {
  return flags.p && !flags.quiet && Deno.stderr.isTerminal()
    ? progressBar({ write: writeStderr, columns: terminalColumns() })
    : undefined;
}
