/** The progress bar's text: fixed widths, units, time left, throttling. */
import { assert, assertEquals } from "@std/assert";
import { formatSize } from "../src/ops/format_size.ts";
import {
  formatDuration,
  formatElapsed,
  progressBar,
  renderProgress,
} from "../src/ops/progress_bar.ts";

const GiB = 1024 ** 3;

Deno.test("formatSize, fixed style: binary units, one decimal, at most 10 characters", () => {
  const cases: [number, string][] = [
    [0, "0 B"],
    [1, "1 B"],
    [1023, "1023 B"],
    [1024, "1.0 KiB"],
    [1536, "1.5 KiB"],
    [1024 * 1023.94, "1023.9 KiB"],
    [1024 * 1023.96, "1.0 MiB"], // would round to 1024.0 KiB
    [100 * 1024 ** 2, "100.0 MiB"],
    [4 * GiB, "4.0 GiB"],
    [4 * 1024 ** 4, "4.0 TiB"],
    [2 ** 53, "8.0 PiB"],
  ];
  for (const [bytes, text] of cases) {
    assertEquals(formatSize(bytes, { style: "fixed" }), text, String(bytes));
    assert(formatSize(bytes, { style: "fixed" }).length <= 10);
  }
  for (let bytes = 1; bytes < 2 ** 53; bytes *= 1.7) {
    assert(
      formatSize(bytes, { style: "fixed" }).length <= 10,
      formatSize(bytes, { style: "fixed" }),
    );
  }
});

Deno.test("formatDuration: m:ss, h:mm:ss, unknown, rounded up", () => {
  const cases: [number, string][] = [
    [0, "0:00"],
    [0.2, "0:01"],
    [59, "0:59"],
    [60, "1:00"],
    [3599, "59:59"],
    [3600, "1:00:00"],
    [3723, "1:02:03"],
    [99 * 3600 + 3599, "99:59:59"],
    [100 * 3600, ">99h"],
    [NaN, "--:--"],
    [Infinity, "--:--"],
    [-1, "--:--"],
  ];
  for (const [seconds, text] of cases) {
    assertEquals(formatDuration(seconds), text, String(seconds));
  }
});

Deno.test("formatElapsed: tenths under ten seconds, else m:ss to the nearest second", () => {
  const cases: [number, string][] = [
    [0, "0.0s"],
    [0.04, "0.0s"],
    [0.16, "0.2s"], // an 8 MiB conversion: not "0:01"
    [1, "1.0s"],
    [9.94, "9.9s"],
    [9.96, "0:10"],
    [10.4, "0:10"],
    [10.5, "0:11"],
    [59.6, "1:00"],
    [3599.4, "59:59"],
    [3723.5, "1:02:04"],
    [100 * 3600, ">99h"],
    [NaN, "--:--"],
    [-1, "--:--"],
  ];
  for (const [seconds, text] of cases) {
    assertEquals(formatElapsed(seconds), text, String(seconds));
  }
  // The finished bar shows it; a countdown still rounds up.
  const done = { done: 8 << 20, total: 8 << 20, elapsedMs: 160 };
  assert(renderProgress({ ...done, finished: true }).includes(" in 0.2s"));
  assertEquals(formatDuration(0.16), "0:01");
});

Deno.test("renderProgress: every redraw has the same width", () => {
  for (const columns of [20, 40, 60, 80, 120, 200]) {
    const lengths = new Set<number>();
    for (const total of [0, 1000, 4 * GiB, 4 * 1024 ** 4]) {
      for (const f of [0, 0.001, 0.5, 0.999, 1]) {
        for (const elapsedMs of [0, 150, 1000, 3_600_000, 1e9]) {
          for (const finished of [false, true]) {
            const line = renderProgress(
              { done: total * f, total, elapsedMs, finished },
              columns,
            );
            assert(line.length <= columns - 1, `${columns}: '${line}'`);
            assert(!line.includes("\n") && !line.includes("\r"));
            lengths.add(line.length);
          }
        }
      }
    }
    assertEquals(lengths.size, 1, `${columns} columns: ${[...lengths]}`);
  }
});

Deno.test("renderProgress: bar, percent, sizes, rate and time left", () => {
  const line = renderProgress(
    { done: GiB, total: 4 * GiB, elapsedMs: 4000 },
    100,
  );
  assertEquals(
    line,
    "[##########------------------------------]  25.0%    1.0 GiB /    4.0 GiB  256.0 MiB/s ETA 0:12   ",
  );
  // The bar stops at 40 characters on wide terminals.
  assertEquals(
    renderProgress({ done: GiB, total: 4 * GiB, elapsedMs: 4000 }, 300),
    line,
  );
});

Deno.test("renderProgress: no rate or time left before some time has passed", () => {
  const line = renderProgress({ done: 10, total: 100, elapsedMs: 50 }, 80);
  assert(line.includes("ETA --:--"), line);
  assert(!line.includes("/s"), line);
  assert(
    renderProgress({ done: 0, total: 100, elapsedMs: 5000 }, 80)
      .includes("ETA --:--"),
  );
});

Deno.test("renderProgress: the percent is floored, 100.0% only at the end", () => {
  const at = (done: number) =>
    renderProgress({ done, total: 10000, elapsedMs: 1000 }, 80);
  assert(at(9999).includes(" 99.9%"), at(9999));
  assert(at(10000).includes("100.0%"), at(10000));
  assert(at(20000).includes("100.0%")); // clamped
  assert(
    renderProgress({ done: 0, total: 0, elapsedMs: 0 }, 80).includes("100.0%"),
  );
  assert(
    renderProgress({
      done: 10000,
      total: 10000,
      elapsedMs: 61000,
      finished: true,
    })
      .includes("in 1:01"),
  );
});

Deno.test("renderProgress: narrow terminals drop the bar, then rate, then sizes", () => {
  const snap = { done: GiB, total: 4 * GiB, elapsedMs: 4000 };
  assertEquals(
    renderProgress(snap, 57),
    " 25.0%    1.0 GiB /    4.0 GiB  256.0 MiB/s ETA 0:12   ",
  );
  assertEquals(
    renderProgress(snap, 44),
    " 25.0%    1.0 GiB /    4.0 GiB ETA 0:12   ",
  );
  assertEquals(renderProgress(snap, 30), "[##------]  25.0% ETA 0:12   ");
  assertEquals(renderProgress(snap, 10), " 25.0%");
});

Deno.test("progressBar: redraws at most once per interval, in place", () => {
  let out = "";
  let clock = 1000;
  const bar = progressBar({
    write: (t) => out += t,
    now: () => clock,
    columns: 80,
    intervalMs: 100,
  });
  for (let i = 0; i <= 100; i++) {
    clock = 1000 + i * 10; // 101 updates over 1 s: 11 redraws
    bar.update({ done: i * GiB / 100, total: GiB });
  }
  const draws = out.split("\r").slice(1);
  assertEquals(draws.length, 11);
  assert(!out.includes("\n"));
  bar.end();
  assert(out.endsWith("\n"));
  const last = out.split("\r").at(-1)!;
  assert(last.includes("100.0%") && last.includes("in 1.0s"), last);
});

Deno.test("progressBar: end after a failure keeps the last state, and nothing if never drawn", () => {
  let out = "";
  const bar = progressBar({ write: (t) => out += t, now: () => 0 });
  bar.end();
  assertEquals(out, "");
  bar.update({ done: 50, total: 100 });
  bar.end();
  assert(out.includes(" 50.0%") && out.includes("ETA"), out);
  assert(out.endsWith("\n"));
});
