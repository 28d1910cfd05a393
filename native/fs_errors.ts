/**
 * File-system and permission errors said with structure: the path an
 * operating-system error concerns (as `node:fs` errors carry it), and the
 * access a missing Deno permission is for, so that the CLI's messages never
 * read Deno's message text.
 *
 * @module
 */

/** The kinds of access a Deno permission grants. */
export type Access = "read" | "write" | "net";

/**
 * A Deno permission the program lacks: the access and the path (or host)
 * it is for, in Deno's own wording and with Deno's error name
 * (`NotCapable`). Portable: no `Deno` is needed to load it.
 *
 * @example What the CLI says of it
 * ```ts
 * import { PermissionNeeded } from "./fs_errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const e = new PermissionNeeded("write", "out.raw");
 * assertEquals([e.access, e.target], ["write", "out.raw"]);
 * assertEquals(e.message, 'Requires write access to "out.raw"');
 * assertEquals(e.name, "NotCapable");
 * ```
 */
export class PermissionNeeded extends Error {
  /**
   * Says that `access` to `target` is needed.
   *
   * @param access The kind of access.
   * @param target The path, or the host for net access.
   * @param options The `cause` (Deno's own error), if any.
   */
  constructor(
    readonly access: Access,
    readonly target: string,
    options?: ErrorOptions,
  ) {
    super(`Requires ${access} access to "${target}"`, options);
    this.name = "NotCapable";
  }
}

/**
 * `e`, thrown by a file-system call on `path`, with the path attached: a
 * missing permission becomes a {@linkcode PermissionNeeded} for `access`;
 * any other error gets a `path` property (as `node:fs` errors have), unless
 * it has one.
 *
 * @param e What the call threw.
 * @param path The path the call was given.
 * @param access The access the call needed.
 * @returns The error to throw.
 *
 * @example A missing file
 * ```ts
 * import { atPath } from "./fs_errors.ts";
 * import { assertEquals } from "@std/assert";
 *
 * const e = await Deno.open("no-such-file").catch((e) => atPath(e, "no-such-file"));
 * assertEquals((e as { path?: string }).path, "no-such-file");
 * ```
 */
export function atPath(
  e: unknown,
  path: string,
  access: Access = "read",
): unknown {
  if (e instanceof PermissionNeeded) return e;
  if (e instanceof Error && e.name === "NotCapable") {
    return new PermissionNeeded(access, path, { cause: e });
  }
  if (e instanceof Error && (e as { path?: unknown }).path === undefined) {
    (e as Error & { path?: string }).path = path;
  }
  return e;
}

/** The path an error concerns, if it carries one (see {@linkcode atPath}). */
export function pathOf(e: unknown): string | undefined {
  const path = e instanceof Error ? (e as { path?: unknown }).path : undefined;
  return typeof path === "string" ? path : undefined;
}
