/**
 * A raw disk image: guest byte N is file byte N. Used as a backing file.
 *
 * @module
 */

import { checkRange, type DiskImage, type Extent } from "./disk.ts";
import type { ByteSource } from "./io/source.ts";
import type { Layer } from "./chain.ts";

/** A raw file seen as a virtual disk of the file's size. */
export class RawImage implements DiskImage {
  /** Tells a raw image from the qcow2 and qcow images. */
  readonly format = "raw" as const;
  /** The file. */
  readonly source: ByteSource;
  /** Virtual size: the file size. */
  readonly size: number;
  #close?: () => void;

  /**
   * @param source The raw file.
   * @param close Closes the file, if this image owns it.
   */
  constructor(source: ByteSource, close?: () => void) {
    this.source = source;
    this.size = source.size;
    this.#close = close;
  }

  /** One data extent over the range: a raw file has no holes it can name. */
  async *extents(start = 0, end: number = this.size): AsyncGenerator<Extent> {
    checkRange(start, end - start, this.size);
    if (start < end) {
      yield {
        start,
        length: end - start,
        kind: "data",
        hostOffset: start,
        depth: 0,
      };
    }
  }

  /** Reads file bytes; a file that shrank reads as zeros past its end. */
  async read(position: number, buffer: Uint8Array): Promise<void> {
    checkRange(position, buffer.length, this.size);
    const n = await this.source.readAt(position, buffer);
    buffer.fill(0, n);
  }

  /** Closes the file if this image owns it. */
  close(): void {
    this.#close?.();
    this.#close = undefined;
  }
}

/**
 * Opens a raw layer (a backing file): the file itself, nothing to read.
 *
 * @param layer The layer.
 * @returns The image (closed with the chain, not by itself).
 */
export function openRaw(layer: Layer): Promise<RawImage> {
  return Promise.resolve(new RawImage(layer.source));
}
