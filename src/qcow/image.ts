/**
 * The guest view of a legacy qcow (version 1) image: its L1 and L2 entry
 * decoding (uncompressed and zlib-compressed clusters). The walk, the L2
 * cache, the reads and backing-file handling are qcow2's
 * (`src/qcow2/walk.ts`); the header is in `header.ts`, opening in
 * `open.ts`.
 *
 * @module
 */

import type { DiskImage } from "../disk.ts";
import type { ExtentRuns } from "../extent_runs.ts";
import {
  type L2Span,
  TwoLevelImage,
  type TwoLevelParts,
} from "../qcow2/walk.ts";
import { hex, Qcow2Error } from "../errors.ts";
import type { ByteSource } from "../io/source.ts";
import type { QcowHeader } from "./header.ts";

/**
 * An open qcow version 1 image. Obtain one with `openImage`.
 *
 * @example Reading a compressed qcow image
 * ```ts
 * import { openImage, type QcowImage } from "@qcow2/qcow2";
 * import { assertEquals } from "@std/assert";
 *
 * const bytes = await Deno.readFile(new URL("../../tests/fixtures/layouts/v1_comp.qcow", import.meta.url));
 * const image = await openImage(bytes) as QcowImage;
 * assertEquals(image.header.version, 1);
 * const first = new Uint8Array(512);
 * await image.read(0, first);
 * ```
 */
export class QcowImage extends TwoLevelImage {
  /** Tells a qcow image from the other formats `openImage` returns. */
  readonly format = "qcow" as const;
  /** The parsed header. */
  readonly header: QcowHeader;
  #l1: DataView;

  /** @internal Use `openImage`. */
  constructor(
    header: QcowHeader,
    source: ByteSource,
    l1: Uint8Array,
    backing: DiskImage | undefined,
    options: Pick<TwoLevelParts, "codecs" | "close" | "encryption">,
  ) {
    super({
      source,
      // Rounded down to 512, as QEMU does.
      size: Math.floor(header.size / 512) * 512,
      clusterBits: header.clusterBits,
      l2Entries: 2 ** header.l2Bits,
      l2TableBytes: 8 * 2 ** header.l2Bits,
      cachedTables: 64,
      l1TableOffset: header.l1TableOffset,
      backing,
      compressionType: "zlib",
      codecs: options.codecs,
      close: options.close,
      encryption: options.encryption,
    });
    this.header = header;
    this.#l1 = new DataView(l1.buffer, l1.byteOffset, l1.byteLength);
  }

  /**
   * The L2 table offset in L1 entry `l1Index`, or 0.
   * @ignore
   */
  protected l2TableOffset(l1Index: number): number {
    return l1Index < this.header.l1Size
      ? this.#safe(
        this.#l1.getBigUint64(l1Index * 8),
        this.header.l1TableOffset + l1Index * 8,
      )
      : 0;
  }

  /**
   * Adds L2 entries `[first, last)`: data, compressed or unallocated.
   * @ignore
   */
  protected addEntries(runs: ExtentRuns, view: DataView, span: L2Span): void {
    const { l2Offset, spanStart, first, last } = span;
    const bits = this.header.clusterBits;
    const cs = this.clusterSize;
    for (let i = first; i < last; i++) {
      const g = spanStart + i * cs;
      const raw = view.getBigUint64(i * 8);
      if (raw >> 63n) {
        // Compressed: the byte count above bit 63 - cluster_bits, the
        // offset below it.
        const shift = BigInt(63 - bits);
        const length = Number((raw >> shift) & BigInt(cs - 1));
        const host = this.#safe(raw & ((1n << shift) - 1n), l2Offset + i * 8);
        runs.addCompressed(g, g + cs, host, length);
      } else if (raw === 0n) {
        runs.add("unallocated", g, g + cs);
      } else {
        runs.add("data", g, g + cs, this.#safe(raw, l2Offset + i * 8));
      }
    }
  }

  #safe(value: bigint, at: number): number {
    if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw new Qcow2Error(
        "BAD_TABLE_ENTRY",
        `Cannot read qcow image: table entry at ${hex(at)} points to ${
          hex(value)
        }, past any file`,
        {
          offset: at,
        },
      );
    }
    return Number(value);
  }
}
