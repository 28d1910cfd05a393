/**
 * Passwords on the command line, in qemu-img's forms and ours:
 * `--password-file FILE`, and `--object secret,id=ID,data=…|file=…` with
 * `--image-opts driver=qcow2,file.filename=IMAGE,encrypt.key-secret=ID`
 * (QEMU's secret objects: qom/object_interfaces.c, crypto/secret.c), so
 * that scripts written for qemu-img work.
 *
 * A secret is used byte for byte, as qemu-img uses it: a trailing newline
 * in a password file is part of the password.
 *
 * @module
 */

import { requireRead } from "../native/output.ts";
import { atPath } from "../native/fs_errors.ts";
import { splitOptionList } from "../src/option_string.ts";
import { type CommandSpec, type Flags, UsageError } from "./_args.ts";

/** Options every command that reads an image takes for its password. */
export const SECRET_FLAGS: Required<
  Pick<CommandSpec, "string" | "repeat" | "boolean">
> = {
  string: ["password-file"],
  repeat: ["object"],
  boolean: ["image-opts"],
};

/**
 * `spec` with {@linkcode SECRET_FLAGS} after its own options.
 *
 * @param spec What the command takes besides the password options.
 * @returns The command's whole spec.
 */
export function withSecretFlags(spec: CommandSpec): CommandSpec {
  return {
    ...spec,
    boolean: [...spec.boolean ?? [], ...SECRET_FLAGS.boolean],
    string: [...spec.string ?? [], ...SECRET_FLAGS.string],
    repeat: [...spec.repeat ?? [], ...SECRET_FLAGS.repeat],
  };
}

/** The lines of `--help` that describe them. */
export const SECRET_HELP =
  `  --password-file FILE  the password of an encrypted image (LUKS or legacy
                  AES), read from FILE as it is (a final newline is part of it)
  --object secret,id=ID,data=PASSWORD|file=FILE[,format=raw|base64]
                  a secret, as qemu-img takes it (with --image-opts)
  --image-opts    IMAGE is an option string, as qemu-img takes it:
                  driver=qcow2,file.filename=PATH,encrypt.key-secret=ID`;

/** An image named on the command line, with its password if one was given. */
export interface NamedImage {
  /** The image's path. */
  path: string;
  /** Its password, if given. */
  password?: Uint8Array;
}

/** Parses `key=value,key=value` with `,,` for a comma, as QEMU's QemuOpts. */
export function parseOptionString(
  text: string,
  what: string,
  command: string,
  status = 2,
): Map<string, string> {
  const out = new Map<string, string>();
  for (const part of splitOptionList(text)) {
    const eq = part.indexOf("=");
    if (eq <= 0) {
      throw new UsageError(
        `${what} '${text}': '${part}' is not key=value`,
        command,
        status,
      );
    }
    out.set(part.slice(0, eq), part.slice(eq + 1));
  }
  return out;
}

/**
 * One `--object` definition: its type (first, bare or as `qom-type=`) and
 * its other options.
 *
 * @throws {UsageError} for a part that is not key=value.
 */
export function parseObject(
  text: string,
  command: string,
  status = 2,
): { type?: string; options: Map<string, string> } {
  const first = text.split(",")[0];
  const bare = !first.includes("=");
  const options = parseOptionString(
    bare ? text.slice(first.length + 1) : text,
    "--object",
    command,
    status,
  );
  const type = bare ? first : options.get("qom-type");
  options.delete("qom-type");
  return { type, options };
}

/** The secrets given with `--object secret,...`, by ID. */
async function secrets(
  flags: Flags,
  command: string,
  status: number,
): Promise<Map<string, Uint8Array>> {
  const out = new Map<string, Uint8Array>();
  const objects = (flags.object ?? []) as string[];
  for (const text of objects) {
    const { type, options: opts } = parseObject(text, command, status);
    if (type !== "secret") {
      throw new UsageError(
        `--object '${text}': only 'secret' objects are supported`,
        command,
        status,
      );
    }
    const id = opts.get("id");
    if (!id) {
      throw new UsageError(`--object '${text}' needs an id=`, command);
    }
    for (const key of opts.keys()) {
      if (!["id", "data", "file", "format"].includes(key)) {
        throw new UsageError(
          `--object '${text}': '${key}' is not supported (id, data, file and format are)`,
          command,
          status,
        );
      }
    }
    const data = opts.get("data");
    const file = opts.get("file");
    if ((data === undefined) === (file === undefined)) {
      throw new UsageError(
        `--object '${text}' needs one of data= and file=`,
        command,
        status,
      );
    }
    if (file !== undefined) await requireRead(file);
    let bytes = data !== undefined
      ? new TextEncoder().encode(data)
      : await readFileAt(file!);
    const format = opts.get("format") ?? "raw";
    if (format === "base64") {
      try {
        const text = new TextDecoder().decode(bytes).trim();
        bytes = Uint8Array.from(atob(text), (c) => c.charCodeAt(0));
      } catch {
        throw new UsageError(
          `--object '${text}': the secret is not valid base64`,
          command,
          status,
        );
      }
    } else if (format !== "raw") {
      throw new UsageError(
        `--object '${text}': format must be raw or base64, not '${format}'`,
        command,
        status,
      );
    }
    out.set(id, bytes);
  }
  return out;
}

/**
 * The images a command names, with their passwords: from `--image-opts`
 * option strings and `--object` secrets, or from `--password-file` (for
 * every image named).
 *
 * @param flags The parsed options (with {@linkcode SECRET_FLAGS}).
 * @param names The image arguments.
 * @param command The command, for usage errors.
 * @param status The exit status of its usage errors (qemu-img's 1 for some).
 * @returns One entry per name.
 */
export async function namedImages(
  flags: Flags,
  names: string[],
  command: string,
  status = 2,
): Promise<NamedImage[]> {
  const byId = await secrets(flags, command, status);
  const file = flags["password-file"] as string | undefined;
  if (file !== undefined) await requireRead(file);
  const fromFile = file !== undefined ? await readFileAt(file) : undefined;
  return names.map((name) => {
    if (!flags["image-opts"]) return { path: name, password: fromFile };
    const opts = parseOptionString(name, "--image-opts", command, status);
    const path = opts.get("file.filename") ?? opts.get("file");
    if (path === undefined) {
      throw new UsageError(
        `--image-opts '${name}' needs file.filename=PATH`,
        command,
        status,
      );
    }
    const driver = opts.get("driver");
    if (driver !== undefined && !["qcow2", "qcow", "raw"].includes(driver)) {
      throw new UsageError(
        `--image-opts '${name}': driver '${driver}' is not supported (qcow2, qcow and raw are)`,
        command,
        status,
      );
    }
    for (const key of opts.keys()) {
      if (
        ![
          "driver",
          "file.filename",
          "file",
          "file.driver",
          "encrypt.key-secret",
        ]
          .includes(key)
      ) {
        throw new UsageError(
          `--image-opts '${name}': option '${key}' is not supported`,
          command,
          status,
        );
      }
    }
    const id = opts.get("encrypt.key-secret");
    if (id === undefined) return { path, password: fromFile };
    const password = byId.get(id);
    if (!password) {
      throw new UsageError(
        `--image-opts '${name}': no --object secret has id '${id}'`,
        command,
        status,
      );
    }
    return { path, password };
  });
}

/**
 * The password a new image is encrypted with: the secret `id` names (from
 * `encrypt.key-secret=ID`), else the `--password-file`.
 *
 * @param flags The parsed options.
 * @param id The secret's ID, if given.
 * @param command The command, for usage errors.
 * @returns The password, or undefined when none was given.
 */
export async function namedSecret(
  flags: Flags,
  id: string | undefined,
  command: string,
): Promise<Uint8Array | undefined> {
  const byId = await secrets(flags, command, 2);
  if (id !== undefined) {
    const found = byId.get(id);
    if (!found) {
      throw new UsageError(
        `encrypt.key-secret=${id}: no --object secret has id '${id}'`,
        command,
      );
    }
    return found;
  }
  const file = flags["password-file"] as string | undefined;
  if (file === undefined) return undefined;
  await requireRead(file);
  return await readFileAt(file);
}

/** The bytes of `path`; an error names the path (see `atPath`). */
async function readFileAt(path: string): Promise<Uint8Array> {
  return await Deno.readFile(path).catch((e) =>
    Promise.reject(atPath(e, path))
  );
}
