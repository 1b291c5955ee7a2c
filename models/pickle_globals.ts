/**
 * Which pickle globals a checkpoint reader may even name. The `.pth` reader
 * interprets a short whitelist itself; with `skipUnknown` it turns other
 * globals into inert placeholders, but a global that only makes sense as an
 * attack (running commands, importing or loading code, reaching attributes
 * by name, opening files or sockets) is refused even then: no checkpoint
 * needs one, so a file naming one is hostile or broken.
 *
 * @example
 * ```ts
 * import { dangerousGlobal } from "./pickle_globals.ts";
 * console.log(dangerousGlobal("os", "system")); // "its module can run code or reach the system"
 * console.log(dangerousGlobal("argparse", "Namespace")); // null
 * ```
 * @module
 */

/** Top-level modules whose every callable can act on the outside world or on code. */
const DANGEROUS_MODULES = new Set([
  "os",
  "posix",
  "nt",
  "posixpath",
  "ntpath",
  "subprocess",
  "_posixsubprocess",
  "sys",
  "importlib",
  "imp",
  "pkgutil",
  "zipimport",
  "runpy",
  "code",
  "codeop",
  "pickle",
  "_pickle",
  "cPickle",
  "copyreg",
  "copy_reg",
  "dill",
  "joblib",
  "marshal",
  "shelve",
  "shutil",
  "tempfile",
  "glob",
  "io",
  "_io",
  "socket",
  "_socket",
  "ssl",
  "select",
  "selectors",
  "asyncio",
  "http",
  "urllib",
  "urllib2",
  "ftplib",
  "smtplib",
  "telnetlib",
  "xmlrpc",
  "webbrowser",
  "requests",
  "pty",
  "commands",
  "popen2",
  "signal",
  "threading",
  "_thread",
  "multiprocessing",
  "concurrent",
  "ctypes",
  "_ctypes",
  "cffi",
  "mmap",
  "fcntl",
  "resource",
  "types",
  "functools",
  "operator",
  "_operator",
  "inspect",
  "gc",
  "weakref",
  "atexit",
  "timeit",
  "pdb",
  "bdb",
  "trace",
  "profile",
  "cProfile",
  "platform",
  "site",
  "sysconfig",
  "distutils",
  "setuptools",
  "pip",
  "builtins",
  "__builtin__",
]);

/** Dotted module prefixes of libraries whose loaders or code paths run code. */
const DANGEROUS_PREFIXES = [
  "torch.hub",
  "torch.jit",
  "torch.package",
  "torch.serialization",
  "torch.utils.cpp_extension",
  "torch._C",
  "torch._dynamo",
  "torch._inductor",
  "torch.ops",
  "torch._ops",
  "torch.distributed",
  "torch.multiprocessing",
  "numpy.testing",
  "numpy.f2py",
  "numpy.distutils",
  "numpy.lib.npyio",
  "numpy.lib.format",
];

/** Names that load or run something wherever they live. */
const DANGEROUS_NAMES = new Set([
  "load",
  "loads",
  "load_state_dict_from_url",
  "system",
  "popen",
  "exec",
  "eval",
  "compile",
  "getattr",
  "setattr",
  "delattr",
  "__import__",
  "import_module",
  "open",
  "run",
  "call",
  "check_call",
  "check_output",
  "spawn",
]);

/** The plain data types `builtins` may contribute to a checkpoint. */
const SAFE_BUILTINS = new Set([
  "set",
  "frozenset",
  "slice",
  "complex",
  "bytearray",
  "bytes",
  "int",
  "float",
  "bool",
  "str",
  "tuple",
  "list",
  "dict",
  "range",
]);

/**
 * Names inside refused modules that ordinary pickles use for plain data
 * (old-protocol objects, namespaces, partially applied layers in saved
 * configs); as placeholders they are as inert as any other.
 */
const DATA_EXCEPTIONS = new Set([
  "copyreg._reconstructor",
  "copy_reg._reconstructor",
  "copyreg.__newobj__",
  "copyreg.__newobj_ex__",
  "types.SimpleNamespace",
  "functools.partial",
  "builtins.object",
  "__builtin__.object",
]);

/**
 * Why the global `module.name` must be refused even as an inert
 * placeholder, or null when it may be kept as one.
 *
 * @example
 * ```ts
 * import { dangerousGlobal } from "./pickle_globals.ts";
 * console.log(dangerousGlobal("builtins", "eval") !== null); // true
 * console.log(dangerousGlobal("builtins", "set")); // null
 * console.log(dangerousGlobal("argparse", "_os.system") !== null); // true (reaches os through an attribute)
 * console.log(dangerousGlobal("functools", "partial")); // null (saved configs hold partial layers)
 * ```
 */
export function dangerousGlobal(module: string, name: string): string | null {
  if (DATA_EXCEPTIONS.has(`${module}.${name}`)) return null;
  const top = module.split(".")[0];
  if (top === "builtins" || top === "__builtin__") {
    return module === top && SAFE_BUILTINS.has(name)
      ? null
      : "a Python builtin other than a data type";
  }
  if (DANGEROUS_MODULES.has(top)) return "its module can run code or reach the system";
  if (DANGEROUS_PREFIXES.some((p) => module === p || module.startsWith(`${p}.`))) {
    return "loads or runs code";
  }
  const parts = name.split(".");
  if (parts.length > 1 && parts.some((p) => p.startsWith("_") || DANGEROUS_MODULES.has(p))) {
    return "reaches another object through a private or module attribute";
  }
  if (parts.some((p) => DANGEROUS_NAMES.has(p) || (p.startsWith("__") && p.endsWith("__")))) {
    return "loads or runs code";
  }
  if (!/^[A-Za-z_][\w.]*$/.test(module) || !/^[A-Za-z_][\w.]*$/.test(name)) {
    return "not a Python identifier";
  }
  return null;
}
