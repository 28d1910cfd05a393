/**
 * Probing a file's format, once, from its first bytes.
 *
 * Source: QEMU `qcow_probe` and `qcow2_probe` (block/qcow.c, block/qcow2.c).
 *
 * @module
 */

import type { ByteSource } from "./io/source.ts";
import { MAGIC } from "./qcow2/layout.ts";

/**
 * The disk image formats this library reads.
 *
 * @example Probing the format of three files
 * ```ts
 * import type { ImageFormat } from "@qcow2/qcow2";
 * import { probeFormat } from "@qcow2/qcow2/info";
 * import { assertEquals } from "@std/assert";
 *
 * const formats: ImageFormat[] = [];
 * for (const name of ["v1.qcow", "over_raw.qcow2", "rawbase.raw"]) {
 *   const bytes = await Deno.readFile(new URL(`../tests/fixtures/layouts/${name}`, import.meta.url));
 *   formats.push(probeFormat(bytes.subarray(0, 8)));
 * }
 * assertEquals(formats, ["qcow", "qcow2", "raw"]);
 * ```
 */
export type ImageFormat = "qcow2" | "qcow" | "raw";

/**
 * Probes a file's format from its first 8 bytes (see {@linkcode probeFormat}):
 * the one probe an opening makes.
 *
 * @param source The file.
 * @returns The format.
 *
 * @example Probing a file
 * ```ts
 * import { probeSource } from "./probe.ts";
 * import { bytesSource } from "./io/source.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../tests/fixtures/layouts/v1.qcow", import.meta.url));
 * assertEquals(await probeSource(bytesSource(bytes)), "qcow");
 * ```
 */
export async function probeSource(source: ByteSource): Promise<ImageFormat> {
  const start = new Uint8Array(Math.min(8, source.size));
  await source.readAt(0, start);
  return probeFormat(start);
}

/**
 * Probes a file's format from its first bytes, as QEMU does: the qcow magic
 * with version 1 is qcow, with another version qcow2; anything else is raw.
 *
 * @param start At least the first 8 bytes of the file.
 * @returns The format.
 *
 * @example Telling qcow2 from raw
 * ```ts
 * import { probeFormat } from "@qcow2/qcow2/info";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(probeFormat(new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 3])), "qcow2");
 * assertEquals(probeFormat(new Uint8Array([0x51, 0x46, 0x49, 0xfb, 0, 0, 0, 1])), "qcow");
 * assertEquals(probeFormat(new Uint8Array(512)), "raw");
 * ```
 */
export function probeFormat(start: Uint8Array): ImageFormat {
  if (start.length < 8) return "raw";
  const v = new DataView(start.buffer, start.byteOffset, start.byteLength);
  if (v.getUint32(0) !== MAGIC) return "raw";
  return v.getUint32(4) === 1 ? "qcow" : "qcow2";
}
