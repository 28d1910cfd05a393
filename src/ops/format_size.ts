/**
 * Byte counts as text, in binary units: the one formatter of the package
 * (`info`, the web page, the progress bar).
 *
 * @module
 */

const UNITS = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];

/** Options for {@linkcode formatSize}. */
export interface FormatSizeOptions {
  /**
   * `"qemu"` (the default): as QEMU's `size_to_str` prints sizes, three
   * significant digits, switching unit at 1000 (`"456 KiB"`,
   * `"0.977 MiB"`). `"fixed"`: one decimal, switching unit where it would
   * read 1024.0 (`"1.5 KiB"`, `"1023.9 MiB"`), at most 10 characters, so
   * the columns of a progress bar stay put as it grows.
   */
  style?: "qemu" | "fixed";
}

/**
 * A byte count in binary units (B, KiB, MiB, GiB, TiB, PiB, EiB).
 *
 * Source of the `"qemu"` style: `size_to_str` in QEMU's `util/cutils.c`,
 * which `qemu-img info` prints sizes with.
 *
 * @param bytes A byte count.
 * @param options The style.
 * @returns The text.
 *
 * @example Sizes as qemu-img prints them, and as the progress bar does
 * ```ts
 * import { formatSize } from "@qcow2/qcow2/info";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(formatSize(512), "512 B");
 * assertEquals(formatSize(456 * 1024), "456 KiB");
 * assertEquals(formatSize(1000 * 1024), "0.977 MiB");
 * assertEquals(formatSize(4 * 1024 ** 4), "4 TiB");
 * assertEquals(formatSize(1536, { style: "fixed" }), "1.5 KiB");
 * assertEquals(formatSize(4 * 1024 ** 4, { style: "fixed" }), "4.0 TiB");
 * ```
 */
export function formatSize(
  bytes: number,
  options: FormatSizeOptions = {},
): string {
  if (options.style === "fixed") {
    if (!Number.isFinite(bytes) || bytes < 1024) {
      return `${Math.max(0, Math.round(bytes)) || 0} B`;
    }
    let i = 0;
    let value = bytes;
    // Move up while one decimal would round to 1024.0.
    while (i < UNITS.length - 1 && value >= 1023.95) {
      value /= 1024;
      i++;
    }
    return `${value.toFixed(1)} ${UNITS[i]}`;
  }
  let i = 0;
  while (i < UNITS.length - 1 && bytes * 1.024 >= 1024 ** (i + 1)) i++;
  return `${Number((bytes / 1024 ** i).toPrecision(3))} ${UNITS[i]}`;
}
