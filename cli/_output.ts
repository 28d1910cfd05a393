/**
 * Writing to the terminal: standard error without buffering, and its width.
 *
 * @module
 */

/** Writes text to standard error at once, whole. */
export function writeStderr(text: string): void {
  const bytes = new TextEncoder().encode(text);
  for (let done = 0; done < bytes.length;) {
    done += Deno.stderr.writeSync(bytes.subarray(done));
  }
}

/** The terminal's width, or 80 when it cannot be told. */
export function terminalColumns(): number {
  try {
    return Deno.consoleSize().columns || 80;
  } catch {
    return 80;
  }
}
