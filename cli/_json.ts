/**
 * JSON as qemu-img prints it (`qobject_to_json_pretty`, qobject/qjson.c):
 * four-space indents, an empty array or object still opened on its own
 * line, and every character outside printable ASCII escaped as `\uXXXX`
 * with upper-case hex digits (surrogate pairs beyond U+FFFF).
 *
 * @module
 */

/** Escapes a string as QEMU's `to_json` does. */
function quote(text: string): string {
  let out = '"';
  for (const ch of text) {
    const cp = ch.codePointAt(0)!;
    switch (ch) {
      case '"':
        out += '\\"';
        continue;
      case "\\":
        out += "\\\\";
        continue;
      case "\b":
        out += "\\b";
        continue;
      case "\f":
        out += "\\f";
        continue;
      case "\n":
        out += "\\n";
        continue;
      case "\r":
        out += "\\r";
        continue;
      case "\t":
        out += "\\t";
        continue;
    }
    if (cp >= 0x20 && cp < 0x7f) out += ch;
    else if (cp > 0xffff) {
      const v = cp - 0x10000;
      out += u(0xd800 | (v >> 10)) + u(0xdc00 | (v & 0x3ff));
    } else out += u(cp);
  }
  return out + '"';
}

function u(code: number): string {
  return "\\u" + code.toString(16).toUpperCase().padStart(4, "0");
}

/**
 * `value` as qemu-img's `--output=json` prints it (no trailing newline).
 * `undefined` members are left out, as `JSON.stringify` leaves them out.
 *
 * @example
 * ```ts
 * import { qemuJson } from "./_json.ts";
 * import { assertEquals } from "@std/assert";
 *
 * assertEquals(qemuJson({ name: "été", flags: [] }), '{\n    "name": "\\u00E9t\\u00E9",\n    "flags": [\n    ]\n}');
 * ```
 */
export function qemuJson(value: unknown, indent = ""): string {
  if (value === null) return "null";
  if (typeof value === "string") return quote(value);
  if (typeof value === "number" || typeof value === "bigint") {
    return String(value);
  }
  if (typeof value === "boolean") return value ? "true" : "false";
  const inner = indent + "    ";
  if (Array.isArray(value)) {
    const items = value.map((v) => inner + qemuJson(v, inner));
    return items.length
      ? `[\n${items.join(",\n")}\n${indent}]`
      : `[\n${indent}]`;
  }
  const entries = Object.entries(value as Record<string, unknown>)
    .filter(([, v]) => v !== undefined)
    .map(([k, v]) => `${inner}${quote(k)}: ${qemuJson(v, inner)}`);
  return entries.length
    ? `{\n${entries.join(",\n")}\n${indent}}`
    : `{\n${indent}}`;
}
