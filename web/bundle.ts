/**
 * What the page's bundle (`web/qcow2.js`, `deno task web:build`) holds: the
 * portable entry and the `info` subpath the page shows reports with.
 *
 * @module
 */

export * from "../web.ts";
export * from "../info.ts";
