/**
 * Ctrl-C (SIGINT) while a command writes: the work stops, what was written
 * is removed, and the process exits with status 130 (128 + SIGINT), as a
 * process killed by SIGINT reports to its shell; nothing is printed. SIGTERM
 * (`kill`, `timeout`, a service manager) and SIGHUP (the terminal closed)
 * do the same, with 143 and 129: a temporary file is never left behind.
 *
 * @module
 */

/** The signals that stop a command's work, with their numbers (Linux). */
const SIGNALS = { SIGINT: 2, SIGTERM: 15, SIGHUP: 1 } as const;

/**
 * The reason a command's work stopped: the user pressed Ctrl-C (or the
 * process was sent SIGTERM or SIGHUP).
 */
export class Interrupted extends Error {
  /** The exit status: 128 + the signal's number. */
  readonly status: number;

  /** @param signal The signal that came. */
  constructor(readonly signal: keyof typeof SIGNALS = "SIGINT") {
    super("interrupted");
    this.name = "Interrupted";
    this.status = 128 + SIGNALS[signal];
  }
}

/**
 * Runs `body` with a signal that aborts, with {@linkcode Interrupted} as its
 * reason, on SIGINT, SIGTERM or SIGHUP (the first that comes). While `body`
 * runs, they no longer kill the process: `body` must see the signal (pass
 * it to `convert`, or check it) and clean up. The listeners are removed
 * when `body` settles.
 *
 * @param body The work, given the signal.
 * @returns What `body` returned.
 * @throws {Interrupted} If one of them came while `body` ran (after `body`'s
 * own clean-up), whatever `body` did; else what `body` threw.
 */
export async function interruptible<T>(
  body: (signal: AbortSignal) => Promise<T>,
): Promise<T> {
  const controller = new AbortController();
  // (Windows has SIGINT alone.)
  const signals = (Object.keys(SIGNALS) as (keyof typeof SIGNALS)[])
    .filter((name) => name === "SIGINT" || Deno.build.os !== "windows");
  const listeners = signals.map((name) => {
    const onSignal = () => {
      if (!controller.signal.aborted) controller.abort(new Interrupted(name));
    };
    Deno.addSignalListener(name, onSignal);
    return [name, onSignal] as const;
  });
  try {
    return await body(controller.signal);
  } catch (e) {
    controller.signal.throwIfAborted();
    throw e;
  } finally {
    for (const [name, onSignal] of listeners) {
      Deno.removeSignalListener(name, onSignal);
    }
  }
}
