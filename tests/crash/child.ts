/**
 * The crash test's child: opens an image read-write and runs a seeded
 * workload on it, groups of operations started at once, each group
 * followed by a flush; after each completed flush it prints `F <n>`: the
 * first n operations are durable. The parent kills it with SIGKILL.
 *
 * Usage: deno run -A tests/crash/child.ts IMAGE SEED SIZE CLUSTER_SIZE COUNT
 */
import { openImage } from "../../mod.ts";
import { apply, workload } from "../_workload.ts";

const [path, seed, size, clusterSize, count] = Deno.args;
const ops = workload(Number(seed), {
  size: Number(size),
  clusterSize: Number(clusterSize),
  count: Number(count),
}).filter((o) => o.op !== "flush");
const image = await openImage(path, { writable: true });
const out = (line: string) =>
  Deno.stdout.writeSync(new TextEncoder().encode(line + "\n"));
out("R");
for (let i = 0; i < ops.length; i += 8) {
  await apply(image, ops.slice(i, i + 8));
  await image.flush();
  out(`F ${Math.min(i + 8, ops.length)}`);
}
await image.close();
out("D");
