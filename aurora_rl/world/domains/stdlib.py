"""The slice of the running interpreter's standard library that the code and prose domains read.

A fixed, sorted module list (not a directory scan) keeps the corpora independent of what
else is installed. Modules missing from this interpreter are skipped, so a different
Python minor version gives slightly different code and prose text; the build records the
Python version in the world's manifest.
"""

from __future__ import annotations

import ast
import functools
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# Pure-Python modules present in CPython 3.10 to 3.13, chosen for plenty of code and docstrings.
MODULES: tuple[str, ...] = tuple(sorted("""
    _collections_abc _pydecimal _pyio abc argparse ast asyncio.base_events asyncio.events asyncio.streams asyncio.tasks base64 bdb bisect calendar cmd
    code codecs codeop collections colorsys compileall concurrent.futures._base
    concurrent.futures.process configparser
    contextlib copy copyreg csv dataclasses difflib dis doctest email._header_value_parser
    email.feedparser email.header
    email.message email.policy email.utils enum filecmp fileinput fnmatch fractions ftplib functools
    genericpath getopt getpass gettext glob graphlib gzip hashlib heapq hmac html.parser
    http.client http.cookiejar http.cookies http.server imaplib inspect ipaddress json
    json.decoder json.encoder keyword linecache locale logging logging.config logging.handlers
    lzma mailbox mimetypes modulefinder netrc ntpath numbers opcode operator optparse os pdb
    pickle pickletools pkgutil platform plistlib poplib posixpath pprint profile pstats pty
    py_compile pyclbr queue quopri random reprlib rlcompleter runpy sched secrets selectors
    shelve shlex shutil signal site smtplib socket socketserver sqlite3.dump ssl stat statistics
    string stringprep struct subprocess symtable sysconfig tabnanny tarfile tempfile textwrap
    threading timeit tkinter tkinter.ttk token tokenize trace traceback tracemalloc tty turtle types typing
    unittest.case unittest.loader unittest.mock urllib.parse urllib.request uuid warnings wave
    weakref webbrowser wsgiref.handlers xml.dom.minidom xml.etree.ElementTree xml.sax.handler
    xmlrpc.client xmlrpc.server zipapp zipfile zipimport
""".split()))


@dataclass(frozen=True)
class ParsedModule:
    """One stdlib module's source lines and syntax tree."""

    name: str
    lines: tuple[str, ...]
    tree: ast.Module


def _module_path(root: Path, name: str) -> Path | None:
    for candidate in (root / f"{name.replace('.', '/')}.py", root / name.replace(".", "/") / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def parsed_modules() -> tuple[ParsedModule, ...]:
    """Every module of `MODULES` found in this interpreter, parsed (about 1 s; cached per process)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    modules = []
    for name in MODULES:
        path = _module_path(root, name)
        if path is None:
            continue
        source = path.read_text(encoding="utf-8")
        modules.append(ParsedModule(name, tuple(source.splitlines()), ast.parse(source)))
    return tuple(modules)
