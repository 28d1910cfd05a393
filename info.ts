/**
 * What `qcow2 info` prints, for programs that print it too (the CLI, the web
 * page): the human-readable text of a report, the report of a qcow v1
 * image, sizes as qemu-img writes them, and the format probe.
 *
 * The reports themselves (`imageInfo`, `readInfo`) are in the main
 * entry; this subpath holds what only a program that shows them needs.
 *
 * ```ts
 * import { formatInfo, formatSize, probeFormat } from "@qcow2/qcow2/info";
 * import { imageInfo, readHeader } from "@qcow2/qcow2";
 * import { assertEquals, assertStringIncludes } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("./tests/fixtures/v3_64k.qcow2", import.meta.url));
 * assertEquals(probeFormat(bytes.subarray(0, 8)), "qcow2");
 * const text = formatInfo(imageInfo(await readHeader(bytes), "v3_64k.qcow2"));
 * assertStringIncludes(text, `virtual size: ${formatSize(4 * 1024 ** 2)} (4194304 bytes)\n`);
 * ```
 *
 * @module
 */

export { formatInfo, qcowInfo } from "./src/ops/info.ts";
export { formatSize, type FormatSizeOptions } from "./src/ops/format_size.ts";
export { probeFormat } from "./src/probe.ts";
