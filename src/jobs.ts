/**
 * Promises started while the code goes on awaiting something else.
 *
 * The rule every pipeline follows (reads, decompression, worker jobs,
 * writes): **a promise that is started and not awaited at once has its
 * rejection handled the moment it starts**, and is awaited before the work
 * that started it settles. Otherwise a job that fails while the code awaits
 * something else (the next L2 table, the next file read) is an *unhandled
 * rejection*: Node.js and Bun report it and may exit, before the caller's
 * `catch` ever runs, and Deno fails the test or the program.
 * {@linkcode withJobs} is the one place that does it.
 *
 * @module
 */

/**
 * Runs `body`, which may start jobs with `start` and go on awaiting other
 * things while they run. Each job's rejection is handled the moment it is
 * started, so no job is ever an unhandled rejection; once `body` has
 * returned or thrown, every job is awaited. Then `withJobs` rejects with
 * `body`'s error if it threw, else with the reason of the first job (in
 * the order they were started) that rejected, else resolves to what `body`
 * returned.
 *
 * `start` also tells whether a job has failed so far, so that a body that
 * starts many jobs can stop starting more.
 *
 * @param body The work: starts jobs with `start(job)`.
 * @returns What `body` returned, once every job has settled.
 * @throws Whatever `body` threw, else the first failed job's reason.
 *
 * @example Jobs that fail while the body awaits something else
 * ```ts
 * import { withJobs } from "./jobs.ts";
 * import { assertEquals, assertRejects } from "@std/assert";
 *
 * let unhandled = 0;
 * const count = (e: PromiseRejectionEvent) => {
 *   e.preventDefault();
 *   unhandled++;
 * };
 * globalThis.addEventListener("unhandledrejection", count);
 * const tick = () => new Promise((resolve) => setTimeout(resolve, 1));
 * const error = await assertRejects(() =>
 *   withJobs(async (start) => {
 *     start(Promise.reject(new Error("first")));
 *     await tick(); // the rejection above is handled meanwhile
 *     start(Promise.reject(new Error("second")));
 *     await tick();
 *   })
 * );
 * assertEquals((error as Error).message, "first");
 * globalThis.removeEventListener("unhandledrejection", count);
 * assertEquals(unhandled, 0);
 * ```
 */
export async function withJobs<T>(
  body: (start: StartJob) => T | Promise<T>,
): Promise<T> {
  const jobs: Promise<unknown>[] = [];
  let failed = false;
  const start: StartJob = (job?: Promise<unknown>) => {
    if (job) {
      // Handled now; its reason is taken from `allSettled` below.
      job.catch(() => failed = true);
      jobs.push(job);
    }
    return failed;
  };
  let result: T;
  try {
    result = await body(start);
  } catch (e) {
    // Every job settles before the caller goes on (and, say, closes the
    // file the jobs read or reuses their buffers); body's error wins.
    await Promise.allSettled(jobs);
    throw e;
  }
  const first = (await Promise.allSettled(jobs))
    .find((s) => s.status === "rejected");
  if (first) throw (first as PromiseRejectedResult).reason;
  return result;
}

/**
 * Starts a job under {@linkcode withJobs} (its rejection handled at once)
 * and tells whether any job has failed so far; called without a job, it
 * only tells.
 */
export type StartJob = (job?: Promise<unknown>) => boolean;
