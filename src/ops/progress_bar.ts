/**
 * A one-line progress bar for terminals: the text of each redraw (bar,
 * percent, bytes done and total, rate, time left), and a throttle that
 * redraws it in place with `\r`. Pure: the caller supplies where text goes
 * and the clock, so it runs in any runtime and is tested without a terminal.
 *
 * @module
 */

import { formatSize } from "./format_size.ts";

/** What one redraw of the bar shows. */
export interface ProgressSnapshot {
  /** Bytes processed so far. */
  done: number;
  /** Bytes to process in all. */
  total: number;
  /** Time since the start, in milliseconds. */
  elapsedMs: number;
  /** Whether the work is over: show the time taken instead of the time left. */
  finished?: boolean;
}

/** A byte count in the bar's fixed-width style (at most 10 characters). */
function fixed(bytes: number): string {
  return formatSize(bytes, { style: "fixed" });
}

/** Below this much elapsed time, rate and time left are not yet shown. */
const SETTLE_MS = 200;

/**
 * A duration as `m:ss`, or `h:mm:ss` from an hour on; `--:--` when unknown
 * (not finite or negative). Seconds are rounded up, so a countdown reaches
 * `0:00` only at the end; beyond 99 hours it shows `>99h`.
 *
 * @param seconds The duration in seconds.
 * @returns The text.
 *
 * @example Short and long durations
 * ```ts
 * import { formatDuration } from "./progress_bar.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(formatDuration(9.2), "0:10");
 * assertEquals(formatDuration(3723), "1:02:03");
 * assertEquals(formatDuration(Infinity), "--:--");
 * ```
 */
export function formatDuration(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  return clock(Math.ceil(seconds));
}

/**
 * A time taken, as the finished bar shows it (`in 0.2s`): tenths of a
 * second under ten seconds, else `m:ss` (or `h:mm:ss`) rounded to the
 * nearest second; `--:--` when unknown (not finite or negative).
 *
 * @param seconds The duration in seconds.
 * @returns The text.
 *
 * @example A short conversion and a long one
 * ```ts
 * import { formatElapsed } from "./progress_bar.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(formatElapsed(0.16), "0.2s");
 * assertEquals(formatElapsed(9.94), "9.9s");
 * assertEquals(formatElapsed(9.96), "0:10");
 * assertEquals(formatElapsed(70.4), "1:10");
 * ```
 */
export function formatElapsed(seconds: number): string {
  if (!Number.isFinite(seconds) || seconds < 0) return "--:--";
  const tenths = Math.round(seconds * 10);
  if (tenths < 100) return `${(tenths / 10).toFixed(1)}s`;
  return clock(Math.round(seconds));
}

/** Whole seconds as `m:ss` or `h:mm:ss`; `>99h` from 100 hours on. */
function clock(s: number): string {
  if (s >= 100 * 3600) return ">99h";
  const two = (n: number) => String(n).padStart(2, "0");
  const h = Math.floor(s / 3600);
  const m = Math.floor((s % 3600) / 60);
  return h > 0 ? `${h}:${two(m)}:${two(s % 60)}` : `${m}:${two(s % 60)}`;
}

/**
 * The text of one redraw, at most `columns - 1` characters (the last column
 * is left free, so the line never wraps):
 *
 * ```text
 * [##########-----------]  50.0%    2.0 GiB /    4.0 GiB  256.0 MiB/s ETA 0:08
 * ```
 *
 * Every field has a fixed width, so each redraw overwrites the last one
 * exactly; the bar takes the room left (up to 40 characters). On a narrow
 * terminal the bar goes first, then the rate, then the sizes. Rate and time
 * left are averages since the start, shown once some time has passed; when
 * `finished`, the time taken (`in 0.2s`, `in 1:12`) replaces the time left.
 *
 * @param snapshot What to show.
 * @param columns The terminal's width (default 80).
 * @returns The line, without `\r` or newline.
 *
 * @example Half way through 4 GiB after 8 seconds, on 80 columns
 * ```ts
 * import { renderProgress } from "./progress_bar.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const line = renderProgress({
 *   done: 2 * 1024 ** 3,
 *   total: 4 * 1024 ** 3,
 *   elapsedMs: 8000,
 * });
 * assertEquals(line.length, 79);
 * assertEquals(
 *   line.trimEnd(),
 *   "[##########-----------]  50.0%    2.0 GiB /    4.0 GiB  256.0 MiB/s ETA 0:08",
 * );
 * ```
 */
export function renderProgress(
  snapshot: ProgressSnapshot,
  columns = 80,
): string {
  const { done, total, elapsedMs, finished } = snapshot;
  const fraction = total > 0 ? Math.min(1, Math.max(0, done / total)) : 1;
  // Floor the percent: 100.0% only when all is done.
  const percent = `${(Math.floor(fraction * 1000) / 10).toFixed(1)}%`;
  const settled = elapsedMs >= SETTLE_MS && done > 0;
  const rate = settled ? done / (elapsedMs / 1000) : NaN;
  const time = finished
    ? `in ${formatElapsed(elapsedMs / 1000)}`
    : `ETA ${formatDuration(settled ? (total - done) / rate : NaN)}`;
  const pct = percent.padStart(6);
  const sizes = `${fixed(done).padStart(10)} / ${fixed(total).padStart(10)}`;
  const speed = `${settled ? `${fixed(rate)}/s` : ""}`.padStart(12);
  const left = time.padEnd(11);
  // On a narrow terminal, the bar goes first, then rate, then sizes.
  const choices = [
    [pct, sizes, speed, left],
    [pct, sizes, left],
    [pct, left],
    [pct],
  ];
  const fields = choices.map((c) => c.join(" "))
    .find((text) => text.length <= columns - 1) ?? "";
  const width = Math.min(40, columns - 1 - fields.length - 3);
  if (width < 5) return fields;
  const filled = Math.floor(fraction * width);
  return `[${"#".repeat(filled)}${"-".repeat(width - filled)}] ${fields}`;
}

/** Where a {@linkcode progressBar} draws, and its clock. */
export interface ProgressBarOptions {
  /** Writes text to the terminal (the bar sends `\r` to redraw in place). */
  write: (text: string) => void;
  /** The current time in milliseconds (default `performance.now`). */
  now?: () => number;
  /** The terminal's width (default 80). */
  columns?: number;
  /** The least time between redraws, in milliseconds (default 100). */
  intervalMs?: number;
}

/** A progress bar being drawn. */
export interface ProgressBar {
  /** Records progress; redraws unless the last redraw was too recent. */
  update(progress: { done: number; total: number }): void;
  /**
   * Redraws the last progress (with the time taken, if all is done) and ends
   * the line. Writes nothing if no progress was ever recorded.
   */
  end(): void;
}

/**
 * A progress bar redrawn in place at most once per `intervalMs`, for
 * `convert`'s `onProgress`.
 *
 * @param options Where to write, the clock, the width, the redraw interval.
 * @returns The bar.
 *
 * @example Redraws are throttled; the end shows the time taken
 * ```ts
 * import { progressBar } from "./progress_bar.ts";
 * import { assertEquals } from "@std/assert";
 *
 * let out = "";
 * let clock = 0;
 * const bar = progressBar({ write: (t) => out += t, now: () => clock, columns: 60 });
 * bar.update({ done: 0, total: 100 });
 * clock = 50;
 * bar.update({ done: 50, total: 100 }); // too soon: not drawn
 * clock = 1000;
 * bar.update({ done: 100, total: 100 });
 * bar.end();
 * const draws = out.split("\r").slice(1); // three draws, the last ended
 * assertEquals(draws.length, 3);
 * assertEquals(draws[2].endsWith("\n"), true);
 * assertEquals(draws[2].trimEnd(), "100.0%      100 B /      100 B      100 B/s in 1.0s");
 * ```
 */
export function progressBar(options: ProgressBarOptions): ProgressBar {
  const now = options.now ?? (() => performance.now());
  const interval = options.intervalMs ?? 100;
  const start = now();
  let lastDraw = -Infinity;
  let latest: { done: number; total: number } | undefined;
  const draw = (finished: boolean) => {
    if (!latest) return;
    const line = renderProgress(
      { ...latest, elapsedMs: now() - start, finished },
      options.columns ?? 80,
    );
    options.write(`\r${line}`);
  };
  return {
    update(progress) {
      latest = { done: progress.done, total: progress.total };
      const t = now();
      if (t - lastDraw < interval) return;
      lastDraw = t;
      draw(false);
    },
    end() {
      if (!latest) return;
      draw(latest.done >= latest.total);
      options.write("\n");
    },
  };
}
