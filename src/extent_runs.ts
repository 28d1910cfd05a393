/**
 * Building extents from a cluster map: adjacent clusters of one kind merge
 * into one run (runs with a file offset only where the offsets are
 * contiguous too, and never with runs without one), clipped to the range
 * asked for.
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
  #host = -1;

  /**
   * @param start First guest byte of the range.
   * @param end Guest byte after the last.
   */
  constructor(start: number, end: number) {
    this.#start = start;
    this.#end = end;
  }

  /**
   * Adds guest bytes `[from, to)` of `kind`, at file offset `host` (-1 for
   * none): always for `data`; for `zero`, a cluster that keeps its
   * allocation; for `unallocated`, subclusters of an allocated cluster.
   */
  add(kind: ExtentKind, from: number, to: number, host = -1): void {
    if (
      this.#kind === kind && this.#to === from &&
      (host < 0
        ? this.#host < 0
        : this.#host >= 0 && this.#host + (from - this.#from) === host)
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
    if (this.#host >= 0) extent.hostOffset = this.#host + (s - this.#from);
    this.#done.push(extent);
  }
}
