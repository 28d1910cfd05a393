/**
 * Ctrl-C (SIGINT) while a command writes: the work stops, what was written
 * is removed, and the process exits with status 130 (128 + SIGINT), as a
 * process killed by SIGINT reports to its shell; nothing is printed.
 *
 * @module
 */

/** The exit status after Ctrl-C: 128 + SIGINT (2). */
export const INTERRUPTED_STATUS = 130;

/** The reason a command's work stopped: the user pressed Ctrl-C. */
export class Interrupted extends Error {
  constructor() {
    super("interrupted");
    this.name = "Interrupted";
  }
}

/**
 * Runs `body` with a signal that aborts, with {@linkcode Interrupted} as its
 * reason, on SIGINT. While `body` runs, SIGINT no longer kills the process:
 * `body` must see the signal (pass it to `convert`, or check it) and clean
 * up. The listener is removed when `body` settles.
 *
 * @param body The work, given the signal.
 * @returns What `body` returned.
 * @throws {Interrupted} If SIGINT came while `body` ran (after `body`'s
 * own clean-up), whatever `body` did; else what `body` threw.
 */
export async function interruptible<T>(
  body: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  const onSignal = () => controller.abort(new Interrupted());
  Deno.addSignalListener("SIGINT", onSignal);
  try {
    return await body(controller.signal);
  } catch (e) {
    controller.signal.throwIfAborted();
    throw e;
  } finally {
    Deno.removeSignalListener("SIGINT", onSignal);
  }
}
