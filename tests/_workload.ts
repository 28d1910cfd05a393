/**
 * Seeded random workloads of guest writes, zero writes, discards and
 * flushes, runnable through a writable image of ours and, as a script,
 * through `qemu-io`: the differential and crash tests share them.
 */

/** One guest operation. */
export type Op =
  | { op: "write"; offset: number; length: number; pattern: number }
  | { op: "zero"; offset: number; length: number }
  | { op: "discard"; offset: number; length: number }
  | { op: "flush" };

/** A small, fast, seeded PRNG (mulberry32): values in [0, 1). */
export function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** What a workload is made over. */
export interface WorkloadShape {
  /** Virtual size of the image. */
  size: number;
  /** Its cluster size. */
  clusterSize: number;
  /** How many operations. */
  count: number;
  /** Guest bytes the operations touch (default the whole disk). */
  span?: number;
  /** Whether to include zero writes and discards (default true). */
  zeroes?: boolean;
}

/**
 * A seeded workload: writes of mixed sizes (inside one cluster, across
 * clusters, whole clusters, several clusters; aligned and not), zero
 * writes, discards and flushes.
 */
export function workload(seed: number, shape: WorkloadShape): Op[] {
  const random = prng(seed);
  const int = (n: number) => Math.floor(random() * n);
  const cs = shape.clusterSize;
  const span = Math.min(shape.span ?? shape.size, shape.size);
  const ops: Op[] = [];
  for (let k = 0; k < shape.count; k++) {
    const r = random();
    let length: number;
    const kind = int(6);
    if (kind === 0) length = 1 + int(511);
    else if (kind === 1) length = 512 * (1 + int(8));
    else if (kind === 2) length = cs;
    else if (kind === 3) length = cs * (1 + int(3)) + int(2) * 512;
    else if (kind === 4) length = 1 + int(cs * 2);
    else length = 4096;
    length = Math.min(length, span);
    let offset = int(span - length + 1);
    if (random() < 0.5) offset -= offset % 512;
    if (random() < 0.3) offset -= offset % cs;
    if (shape.zeroes !== false && r < 0.12) {
      ops.push({ op: "zero", offset, length });
    } else if (shape.zeroes !== false && r < 0.22) {
      ops.push({ op: "discard", offset, length });
    } else if (r < 0.27) {
      ops.push({ op: "flush" });
    } else {
      ops.push({ op: "write", offset, length, pattern: 1 + int(255) });
    }
  }
  return ops;
}

/** The workload as a `qemu-io` script (one command per line). */
export function qemuIoScript(ops: Op[]): string {
  return ops.map((o) => {
    switch (o.op) {
      case "write":
        return `write -P ${o.pattern} ${o.offset} ${o.length}`;
      case "zero":
        return `write -z ${o.offset} ${o.length}`;
      case "discard":
        return `discard ${o.offset} ${o.length}`;
      case "flush":
        return "flush";
    }
  }).join("\n") + "\n";
}

/** What a workload needs of an image. */
export interface WritableLike {
  write(offset: number, bytes: Uint8Array): Promise<void>;
  writeZeroes(offset: number, length: number): Promise<void>;
  discard(offset: number, length: number): Promise<void>;
  flush(): Promise<void>;
}

/**
 * Runs the workload: every operation started at once, without awaiting
 * the one before (they must take effect in call order).
 */
export async function apply(image: WritableLike, ops: Op[]): Promise<void> {
  await Promise.all(ops.map((o) => {
    switch (o.op) {
      case "write":
        return image.write(o.offset, new Uint8Array(o.length).fill(o.pattern));
      case "zero":
        return image.writeZeroes(o.offset, o.length);
      case "discard":
        return image.discard(o.offset, o.length);
      case "flush":
        return image.flush();
    }
  }));
}
