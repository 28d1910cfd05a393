/**
 * `deno task publish:prepare [--out DIR]`: prepares what is published to
 * JSR, in `dist/jsr/` (or DIR): the files `deno.json`'s `publish.include`
 * names, and a `deno.json` fit for JSR:
 *
 * - `imports` keeps only the specifiers the published files import, and
 *   maps `@std/*` to `jsr:@std/*` (our checkout maps them to the npm
 *   repackaging `deno-std`, because JSR is unreachable from our build
 *   machines);
 * - dev-only entries are dropped: `tasks`, `fmt`, `lint`, `publish`, and
 *   imports only tests, benchmarks and examples use (`@std/assert`,
 *   `playwright-core`, the package's own name).
 *
 * Then publish from there: `cd dist/jsr && deno publish`.
 *
 * @module
 */

/** The JSR version range of each `@std` package the published files use. */
export const STD_VERSIONS: Record<string, string> = {
  "@std/assert": "^1.0.0",
  "@std/cli": "^1.0.0",
  "@std/streams": "^1.0.0",
};

/** The keys of `deno.json` a published package keeps. */
const KEPT = ["name", "version", "description", "license", "exports"];

/** The shape of our `deno.json`, as far as this reads it. */
export interface DenoConfig {
  imports?: Record<string, string>;
  publish?: { include?: string[]; exclude?: string[] };
  [key: string]: unknown;
}

/**
 * The bare specifiers `source` imports (static, dynamic and type-only),
 * leaving out relative paths, URLs, and `node:`, `npm:` and `jsr:` ones.
 */
export function bareImports(source: string): string[] {
  const found = new Set<string>();
  const patterns = [
    /\b(?:import|export)\s[^"'`;]*?\bfrom\s*["']([^"']+)["']/g,
    /\bimport\s*["']([^"']+)["']/g,
    /\bimport\s*\(\s*["']([^"']+)["']\s*\)/g,
  ];
  // Examples in doc comments are not part of the module.
  const code = source.replace(/\/\*\*[\s\S]*?\*\//g, "");
  for (const pattern of patterns) {
    for (const [, specifier] of code.matchAll(pattern)) {
      if (!/^(\.|\/|[a-z][a-z0-9+.-]*:)/i.test(specifier)) found.add(specifier);
    }
  }
  return [...found].sort();
}

/**
 * The `jsr:` target of an `@std/...` import key: `@std/cli/parse-args` to
 * `jsr:@std/cli@^1.0.0/parse-args`.
 */
export function stdTarget(key: string): string {
  const [scope, name, ...rest] = key.split("/");
  const pkg = `${scope}/${name}`;
  const range = STD_VERSIONS[pkg];
  if (!range) {
    throw new Error(`no JSR version known for ${pkg}: add it to STD_VERSIONS`);
  }
  return `jsr:${pkg}@${range}${rest.length ? `/${rest.join("/")}` : ""}`;
}

/**
 * The `deno.json` to publish: `config`'s package fields, and the imports
 * `used` names, with `@std/*` from JSR.
 *
 * @throws {Error} If a used specifier has no import in `config`.
 */
export function publishedConfig(
  config: DenoConfig,
  used: Iterable<string>,
): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const key of KEPT) if (key in config) out[key] = config[key];
  const imports: Record<string, string> = {};
  for (const specifier of [...used].sort()) {
    const target = config.imports?.[specifier];
    if (target === undefined) {
      throw new Error(
        `'${specifier}' is imported but deno.json does not map it`,
      );
    }
    imports[specifier] = specifier.startsWith("@std/")
      ? stdTarget(specifier)
      : target;
  }
  out.imports = imports;
  return out;
}

/** The files `publish.include` names, less `publish.exclude`, under `root`. */
export async function publishedFiles(
  root: string,
  config: DenoConfig,
): Promise<string[]> {
  const exclude = (config.publish?.exclude ?? []).map((glob) =>
    new RegExp(
      "^" +
        glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*\*\//g, "(.*/)?")
          .replace(/\*/g, "[^/]*") +
        "$",
    )
  );
  const out: string[] = [];
  const walk = async (path: string) => {
    const info = await Deno.stat(`${root}/${path}`);
    if (info.isDirectory) {
      for await (const e of Deno.readDir(`${root}/${path}`)) {
        await walk(`${path.replace(/\/$/, "")}/${e.name}`);
      }
    } else if (!exclude.some((r) => r.test(path))) out.push(path);
  };
  for (const path of config.publish?.include ?? []) await walk(path);
  return out.sort();
}

/** Writes the package to publish into `out`; returns its `deno.json`. */
export async function preparePublish(
  root: string,
  out: string,
): Promise<Record<string, unknown>> {
  const config: DenoConfig = JSON.parse(
    await Deno.readTextFile(`${root}/deno.json`),
  );
  const files = (await publishedFiles(root, config))
    .filter((f) => f !== "deno.json");
  await Deno.remove(out, { recursive: true }).catch(() => {});
  const used = new Set<string>();
  for (const file of files) {
    const dir = `${out}/${file}`.replace(/\/[^/]*$/, "");
    await Deno.mkdir(dir, { recursive: true });
    await Deno.copyFile(`${root}/${file}`, `${out}/${file}`);
    if (/\.(ts|js|mjs)$/.test(file)) {
      for (const s of bareImports(await Deno.readTextFile(`${root}/${file}`))) {
        used.add(s);
      }
    }
  }
  const published = publishedConfig(config, used);
  await Deno.writeTextFile(
    `${out}/deno.json`,
    JSON.stringify(published, null, 2) + "\n",
  );
  return published;
}

if (import.meta.main) {
  const at = Deno.args.indexOf("--out");
  const root = new URL("..", import.meta.url).pathname.replace(/\/$/, "");
  const out = at >= 0 ? Deno.args[at + 1] : `${root}/dist/jsr`;
  const published = await preparePublish(root, out);
  console.log(
    `Wrote ${out}: ${
      Object.keys(published.imports as object).length
    } imports; publish with: cd ${out} && deno publish`,
  );
}
