/**
 * Refcount blocks being filled by a writer: one counter per host cluster,
 * encoded at the image's refcount width (packed LSB first below 8 bits,
 * big-endian from 8 bits; `docs/interop/qcow2.txt` "Host cluster
 * management").
 *
 * @module
 */

/** Refcount blocks in memory, created as clusters are counted. */
export class RefcountBlocks {
  /** The blocks counted so far, by index in the refcount table. */
  readonly blocks: Map<number, Uint8Array> = new Map();
  #clusterSize: number;
  #order: number;
  #perBlock: number;

  /**
   * @param clusterSize Bytes per cluster (and per refcount block).
   * @param refcountOrder log2 of the refcount width in bits (0 to 6).
   */
  constructor(clusterSize: number, refcountOrder: number) {
    this.#clusterSize = clusterSize;
    this.#order = refcountOrder;
    this.#perBlock = clusterSize * 8 / 2 ** refcountOrder;
  }

  /** Refcounts per block. */
  get perBlock(): number {
    return this.#perBlock;
  }

  /** Adds one to the refcount of `hostCluster`. */
  increment(hostCluster: number): void {
    const index = Math.floor(hostCluster / this.#perBlock);
    let block = this.blocks.get(index);
    if (!block) {
      block = new Uint8Array(this.#clusterSize);
      this.blocks.set(index, block);
    }
    const i = hostCluster - index * this.#perBlock;
    const bits = 2 ** this.#order;
    if (bits < 8) {
      const byte = (i * bits) >> 3;
      const shift = (i * bits) & 7;
      const max = (1 << bits) - 1;
      const value = ((block[byte] >> shift) & max) + 1;
      if (value > max) throw refcountOverflow(hostCluster, bits);
      block[byte] = (block[byte] & ~(max << shift)) | (value << shift);
      return;
    }
    const view = new DataView(block.buffer);
    const at = i * (bits >> 3);
    if (bits === 8) {
      if (block[at] === 0xff) throw refcountOverflow(hostCluster, bits);
      block[at]++;
    } else if (bits === 16) {
      const v = view.getUint16(at);
      if (v === 0xffff) throw refcountOverflow(hostCluster, bits);
      view.setUint16(at, v + 1);
    } else if (bits === 32) {
      const v = view.getUint32(at);
      if (v === 0xffffffff) throw refcountOverflow(hostCluster, bits);
      view.setUint32(at, v + 1);
    } else {
      view.setBigUint64(at, view.getBigUint64(at) + 1n);
    }
  }
}

function refcountOverflow(hostCluster: number, bits: number): RangeError {
  return new RangeError(
    `the refcount of host cluster ${hostCluster} would exceed ${bits} bits`,
  );
}
