/**
 * Opening one qcow2 layer, straight down: header (with its feature check)
 * → encryption → snapshot table → L1 table (the active one, or the chosen
 * snapshot's) → external data file → backing file, then the image.
 *
 * The snapshot table comes before the L1 table because the snapshot chosen
 * decides which L1 table is read. Files the layer names are opened through
 * its {@linkcode BackingChain} (`src/chain.ts`).
 *
 * Source: QEMU `qcow2_do_open` (block/qcow2.c).
 *
 * @module
 */

import type { Layer } from "../chain.ts";
import type { DiskImage } from "../disk.ts";
import { hex, Qcow2Error } from "../errors.ts";
import { type ByteSource, readExact } from "../io/source.ts";
import { checkKnownFeatures, readHeader } from "./header.ts";
import { Qcow2Image } from "./image.ts";
import { ENTRY_SIZE, EXTENDED_ENTRY_SIZE } from "./layout.ts";
import { checkOpenable } from "./names.ts";
import {
  checkSnapshotL1,
  findSnapshot,
  readSnapshots,
  type Snapshot,
} from "./snapshots.ts";

/**
 * Opens a qcow2 layer and what it names (data file, backing file).
 *
 * @param layer The layer: its file, path, depth and chain.
 * @returns The image.
 * @throws {Qcow2Error} What `readHeader` throws; `UNSUPPORTED_FEATURE`;
 * `NO_SUCH_SNAPSHOT`; `TRUNCATED` for an L1 table past the end of the file;
 * `EXTERNAL_DATA_FILE`, `BACKING_FILE` and `ENCRYPTED` from the chain.
 *
 * @example Opening the top layer of a chain alone
 * ```ts
 * import { BackingChain } from "../chain.ts";
 * import { OPENERS } from "../open.ts";
 * import { openQcow2 } from "./open.ts";
 * import { bytesSource } from "../io/source.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/chain_top.qcow2", import.meta.url));
 * const chain = new BackingChain({ ignoreBackingFile: true }, OPENERS);
 * const image = await openQcow2(chain.top(bytesSource(bytes)));
 * assertEquals(image.backing, undefined);
 * image.close();
 * ```
 */
export async function openQcow2(layer: Layer): Promise<Qcow2Image> {
  const { source, chain } = layer;
  const header = await readHeader(source);
  checkKnownFeatures(header);
  const encryption = await chain.openEncryption(layer, header, "qcow2");

  const snapshots = header.nbSnapshots > 0
    ? await readSnapshots(source, header)
    : [];
  let snapshot: Snapshot | undefined;
  let l1Offset = header.l1TableOffset;
  let l1Size = header.l1Size;
  let size = Math.floor(header.size / 512) * 512;
  const chosen = chain.snapshotOf(layer);
  if (chosen !== undefined) {
    snapshot = findSnapshot(snapshots, chosen);
    checkSnapshotL1(snapshot, header);
    l1Offset = snapshot.l1TableOffset;
    l1Size = snapshot.l1Size;
    size = Math.floor(snapshot.diskSize / 512) * 512;
  }
  const l1 = await readL1(
    source,
    header.clusterSize,
    header.features.extendedL2,
    {
      l1Offset,
      l1Size,
      size,
      snapshot,
    },
  );

  let dataFile: ByteSource | undefined;
  if (header.features.externalDataFile) {
    const name = header.extensions.externalDataFile;
    if (name === undefined) {
      throw new Qcow2Error(
        "EXTERNAL_DATA_FILE",
        "Cannot read qcow2 image: it keeps its data in an external data file but does not name one",
      );
    }
    checkOpenable(
      "data-file",
      name,
      header.extensions.externalDataFileUtf8,
      layer.path,
    );
    dataFile = await chain.openDataFile(layer, name);
  }

  let backing: DiskImage | undefined;
  if (header.backingFile !== undefined && chain.followsBacking(layer)) {
    checkOpenable(
      "backing",
      header.backingFile,
      header.backingFileUtf8,
      layer.path,
    );
    backing = await chain.openBacking(
      layer,
      header.backingFile,
      header.extensions.backingFormat,
    );
  }

  return new Qcow2Image({
    header,
    source,
    l1,
    size,
    snapshots,
    snapshot,
    backing,
    dataFile,
    codecs: chain.options.codecs,
    l2CacheBytes: chain.options.l2CacheBytes,
    close: chain.closerOf(layer),
    encryption,
  });
}

/**
 * Reads the entries of an L1 table that the virtual size uses (a longer
 * table's tail maps nothing).
 */
async function readL1(
  source: ByteSource,
  clusterSize: number,
  extendedL2: boolean,
  where: {
    l1Offset: number;
    l1Size: number;
    size: number;
    snapshot?: Snapshot;
  },
): Promise<Uint8Array> {
  const { l1Offset, l1Size, size, snapshot } = where;
  const entryBytes = extendedL2 ? EXTENDED_ENTRY_SIZE : ENTRY_SIZE;
  const l1Span = clusterSize * (clusterSize / entryBytes);
  const entries = Math.min(l1Size, Math.ceil(size / l1Span));
  if (entries <= 0) return new Uint8Array(0);
  if (l1Offset + entries * ENTRY_SIZE > source.size) {
    throw new Qcow2Error(
      "TRUNCATED",
      `Cannot read qcow2 image: the ${
        snapshot ? `L1 table of snapshot '${snapshot.name}'` : "L1 table"
      } at ${
        hex(l1Offset)
      } (${entries} entries) runs past the end of the file (${source.size} bytes)`,
      { offset: l1Offset },
    );
  }
  return await readExact(source, l1Offset, entries * ENTRY_SIZE, "L1 table");
}
