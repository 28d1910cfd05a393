/**
 * Building extents from a cluster map: adjacent clusters of one kind merge
 * into one run (data runs only where their file offsets are contiguous too),
 * clipped to the range asked for.
 *
 * @module
 */

import type { Extent, ExtentKind } from "./disk.ts";

/** Collects runs of guest bytes, merged and clipped to `[start, end)`. */
export class ExtentRuns {
  #start: number;
  #end: number;
  #done: Extent[] = [];
  #kind: ExtentKind | undefined;
  #from = 0;
  #to = 0;
  #host = 0;

  /**
   * @param start First guest byte of the range.
   * @param end Guest byte after the last.
   */
  constructor(start: number, end: number) {
    this.#start = start;
    this.#end = end;
  }

  /** Adds guest bytes `[from, to)` of `kind` (for `data`, at file offset `host`). */
  add(kind: ExtentKind, from: number, to: number, host = 0): void {
    if (
      this.#kind === kind && this.#to === from &&
      (kind !== "data" || this.#host + (from - this.#from) === host)
    ) {
      this.#to = to;
      return;
    }
    this.#close();
    this.#kind = kind;
    this.#from = from;
    this.#to = to;
    this.#host = host;
  }

  /** Adds a compressed cluster, which never merges with its neighbours. */
  addCompressed(
    from: number,
    to: number,
    host: number,
    compressedLength: number,
  ): void {
    this.#close();
    const s = Math.max(from, this.#start);
    const e = Math.min(to, this.#end);
    if (s < e) {
      this.#done.push({
        start: s,
        length: e - s,
        kind: "compressed",
        hostOffset: host,
        compressedLength,
        depth: 0,
      });
    }
  }

  /** The runs finished so far, handed over and forgotten. */
  take(): Extent[] {
    return this.#done.splice(0);
  }

  /** Finishes the open run and hands over everything left. */
  finish(): Extent[] {
    this.#close();
    return this.take();
  }

  #close(): void {
    const kind = this.#kind;
    if (kind === undefined) return;
    this.#kind = undefined;
    const s = Math.max(this.#from, this.#start);
    const e = Math.min(this.#to, this.#end);
    if (s >= e) return;
    const extent: Extent = { start: s, length: e - s, kind, depth: 0 };
    if (kind === "data") extent.hostOffset = this.#host + (s - this.#from);
    this.#done.push(extent);
  }
}
