"""Local English text for the benchmark tokenizer and prompts: CPython 3.11 stdlib docstrings.

No network: the text is the docstrings of a fixed list of pure-Python stdlib modules, walked in
a fixed order, so the same Python build always yields the same corpus. Modules with a C
accelerator whose docstrings differ from the Python fallback (decimal, datetime, ...) are left
out so the text does not depend on how CPython was built.
"""

from __future__ import annotations

import importlib
import inspect
import re

# Pure-Python stdlib modules with plenty of prose in their docstrings (order matters: it is the
# corpus order). A module missing from a stripped-down Python is skipped.
MODULES = (
    "argparse", "ast", "asyncio.base_events", "asyncio.events", "asyncio.locks",
    "asyncio.queues", "asyncio.streams", "asyncio.tasks", "base64", "calendar", "cmd",
    "codecs", "collections", "concurrent.futures._base", "configparser", "contextlib", "copy",
    "csv", "dataclasses", "difflib", "dis", "doctest", "email.message", "email.utils", "enum",
    "fileinput", "fnmatch", "fractions", "ftplib", "functools", "getopt", "gettext", "glob",
    "gzip", "hmac", "html.parser", "http.client", "http.cookiejar", "http.cookies",
    "http.server", "imaplib", "importlib.metadata", "inspect", "ipaddress", "json",
    "json.decoder", "json.encoder", "logging", "logging.handlers", "mailbox", "mimetypes",
    "multiprocessing.pool", "netrc", "numbers", "optparse", "os", "pathlib", "pdb", "pickle",
    "pickletools", "pkgutil", "platform", "plistlib", "poplib", "pprint", "pydoc", "queue",
    "quopri", "random", "re", "reprlib", "sched", "secrets", "selectors", "shelve", "shlex",
    "shutil", "smtplib", "socket", "socketserver", "statistics", "string", "subprocess",
    "sysconfig", "tabnanny", "tarfile", "tempfile", "textwrap", "threading", "timeit",
    "tokenize", "trace", "traceback", "typing", "unittest.case", "unittest.mock",
    "urllib.parse", "urllib.request", "uuid", "warnings", "wave", "weakref", "webbrowser",
    "xml.dom.minidom", "xml.etree.ElementTree", "zipfile", "zipimport",
)


def _own_docs(mod) -> list[str]:
    """Docstrings of `mod` and of the classes/functions/methods it defines, in name order."""
    docs = [mod.__doc__ or ""]
    for name, obj in sorted(vars(mod).items()):
        if getattr(obj, "__module__", None) != mod.__name__ or name.startswith("_"):
            continue
        if inspect.isclass(obj):
            docs.append(obj.__doc__ or "")
            for _, meth in sorted(vars(obj).items()):
                if inspect.isfunction(meth):
                    docs.append(meth.__doc__ or "")
        elif inspect.isfunction(obj):
            docs.append(obj.__doc__ or "")
    return docs


def paragraphs() -> list[str]:
    """All distinct prose paragraphs (>= 60 chars, not code/doctest), in corpus order."""
    seen: set[str] = set()
    out: list[str] = []
    for modname in MODULES:
        try:
            mod = importlib.import_module(modname)
        except Exception:  # missing optional module (e.g. no tkinter for turtle): skip
            continue
        for doc in _own_docs(mod):
            for para in re.split(r"\n\s*\n", inspect.cleandoc(doc)):
                if para.lstrip().startswith((">>>", "...")):
                    continue
                # Re-flow a paragraph's hard line breaks into one line of prose.
                text = " ".join(line.strip() for line in para.splitlines()).strip()
                if len(text) >= 60 and text not in seen:
                    seen.add(text)
                    out.append(text)
    return out


def split(paras: list[str], every: int = 8) -> tuple[list[str], list[str]]:
    """(train, held_out): every `every`-th paragraph is held out for prompts."""
    train = [p for i, p in enumerate(paras) if i % every != every - 1]
    held = [p for i, p in enumerate(paras) if i % every == every - 1]
    return train, held
