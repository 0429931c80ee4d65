"""User-facing errors.

Anything a user can fix (a path, a name, a config value, a malformed file) raises a subclass of
:class:`UserError`. The CLI prints these as one line (``error: ...``) and exits with status 2 instead of
showing a traceback. Internal invariants use ``assert``.
"""

from __future__ import annotations


class UserError(ValueError):
    """A problem with the user's input; the message names the problem and the fix."""


class UnknownBackboneError(UserError, KeyError):
    """A backbone name that is neither registered, a timm model, a hub id nor a local directory."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class DatasetError(UserError):
    """A dataset that cannot be used as given (layout, missing files, corrupt images...)."""


def user_error_in(e: BaseException) -> BaseException:
    """The :class:`UserError` that caused ``e`` (libraries such as jsonargparse wrap them), else ``e``."""
    cause: BaseException | None = e
    while cause is not None and not isinstance(cause, UserError):
        cause = cause.__cause__ or cause.__context__
    return cause if cause is not None else e


def one_line_error(message: str, option_strings: list[str], positionals: tuple[str, ...] = ()) -> str:
    """An argument parser's (often multi-line, nested) message as one line naming the full key: an unknown
    option with its closest valid keys, a wrong value with the type expected."""
    import difflib
    import re

    keys = [k for k in re.findall(r'Parser key "([^"]+)"', message)]
    prefix = ".".join(keys)
    unknown = re.search(r"unrecognized arguments: (\S+)(?: \(closest valid keys: ([^)]*)\))?", message)
    if unknown:
        word = unknown.group(1).split("=")[0]
        if not word.startswith("-"):
            return f"unexpected argument '{word}'"
        rel = word.lstrip("-")
        full = f"--{prefix}.{rel}" if prefix else word
        if unknown.group(2) is not None:  # a nested parser named its own closest keys
            near = [
                f"--{prefix}.{k.strip().lstrip('-')}" if prefix else k.strip()
                for k in unknown.group(2).split(",")
                if k.strip()
            ]
        else:
            near = difflib.get_close_matches(full, option_strings, n=3, cutoff=0.5)
        return f"unknown option '{full}'" + (f"; closest valid keys: {', '.join(near)}" if near else "")
    expected = [t for t in re.findall(r"Expected a <class '([\w.]+)'>", message) if t != "NoneType"]
    expected = [
        f"one of {c}" for c in re.findall(r"Expected a typing\.Literal\[([^\]]*)\]", message)
    ] + expected
    given = re.search(r"(?:Given value|Got value): ([^\n]*)", message)
    if prefix and expected:
        got = f", got {given.group(1).strip().rstrip('.')!r}" if given else ""
        name = prefix.upper() if prefix in positionals else f"--{prefix}"
        return f"{name}: expected {expected[0]}{got}"
    text = " ".join(message.split())
    return text if len(text) <= 300 else text[:297] + "..."


class OneLineErrors:
    """Mixin for jsonargparse parsers: a usage error raises :class:`UserError` with one line (the CLI prints
    ``error: ...`` and exits with status 2) instead of printing the usage and exiting. Nested parsers (the
    init arguments of a ``class_path``) pass their error up with their closest keys, so the top parser can name
    the full key."""

    def error(self, message: str, ex: Exception | None = None) -> None:
        import difflib
        import re

        if ex is not None and isinstance(user_error_in(ex), UserError):
            raise user_error_in(ex)
        options = [o for a in getattr(self, "_actions", []) for o in a.option_strings]
        if not getattr(self, "exit_on_error", True):  # nested: add our closest keys, let the parent report
            unknown = re.match(r"unrecognized arguments: (\S+)", message)
            if unknown and unknown.group(1).startswith("-"):
                word = unknown.group(1).split("=")[0]
                near = difflib.get_close_matches(word, options, n=3, cutoff=0.5)
                message = f"unrecognized arguments: {word} (closest valid keys: {', '.join(near)})"
            return super().error(message, ex)  # type: ignore[misc]
        prog = re.sub(r"\s*\[options\]", "", str(getattr(self, "prog", "transferkit")))
        positionals = tuple(a.dest for a in getattr(self, "_actions", []) if not a.option_strings)
        raise UserError(f"{prog}: {one_line_error(message, options, positionals)}")
