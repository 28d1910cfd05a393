/**
 * Opening one legacy qcow (version 1) layer, straight down: header →
 * encryption → L1 table → backing file, then the image. (qcow has no
 * snapshot table and no data file.)
 *
 * Source: QEMU `qcow_open` (block/qcow.c).
 *
 * @module
 */

import type { Layer } from "../chain.ts";
import type { DiskImage } from "../disk.ts";
import { hex, Qcow2Error } from "../errors.ts";
import { readExact } from "../io/source.ts";
import { checkOpenable } from "../qcow2/names.ts";
import { readQcowHeader } from "./header.ts";
import { QcowImage } from "./image.ts";

/**
 * Opens a qcow version 1 layer and its backing file.
 *
 * @param layer The layer: its file, path, depth and chain.
 * @returns The image.
 * @throws {Qcow2Error} What `readQcowHeader` throws; `TRUNCATED` for an L1
 * table past the end of the file; `BACKING_FILE` and `ENCRYPTED` from the
 * chain.
 *
 * @example Opening a qcow image and its backing file
 * ```ts
 * import { BackingChain } from "../chain.ts";
 * import { OPENERS } from "../open.ts";
 * import { openQcow } from "./open.ts";
 * import type { QcowImage } from "./image.ts";
 * import { bytesSource } from "../io/source.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const dir = new URL("../../tests/fixtures/layouts/", import.meta.url);
 * const openFile = async (path: string) => bytesSource(await Deno.readFile(new URL(path, dir)));
 * const chain = new BackingChain({ openFile }, OPENERS);
 * const image = await openQcow(chain.top(await openFile("v1_over.qcow")));
 * assertEquals((image.backing as QcowImage).header.version, 1);
 * image.close();
 * ```
 */
export async function openQcow(layer: Layer): Promise<QcowImage> {
  const { source, chain } = layer;
  const header = await readQcowHeader(source);
  const encryption = await chain.openEncryption(layer, header, "qcow");

  if (header.l1TableOffset + header.l1Size * 8 > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read qcow image: the L1 table at ${
        hex(header.l1TableOffset)
      } (${header.l1Size} entries) runs past the end of the file (${source.size} bytes)`,
      { offset: header.l1TableOffset },
    );
  }
  const l1 = await readExact(
    source,
    header.l1TableOffset,
    header.l1Size * 8,
    "L1 table",
  );

  let backing: DiskImage | undefined;
  if (header.backingFile !== undefined && chain.followsBacking(layer)) {
    checkOpenable("backing", header.backingFile, header.backingFileUtf8);
    backing = await chain.openBacking(layer, header.backingFile);
  }

  return new QcowImage(header, source, l1, backing, {
    codecs: chain.options.codecs,
    close: chain.closerOf(layer),
    encryption,
  });
}
