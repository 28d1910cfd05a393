/**
 * Loading Node's built-in modules only when they are needed.
 *
 * A `node:` specifier anywhere in Deno's module graph, even in a dynamic
 * `import()` that never runs, makes Deno start its Node compatibility layer
 * at launch, in time and memory (bench/README.md). A specifier built at run
 * time is not in the
 * graph, so the cost is paid on first use only.
 *
 * @module
 */

/**
 * Imports `node:NAME` without naming it in the module graph.
 *
 * @param name The built-in's name without `node:`, such as `zlib`.
 * @returns The module.
 */
export function importNode<T>(name: string): Promise<T> {
  return import(`node:${name}`);
}
