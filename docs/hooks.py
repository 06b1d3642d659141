"""MkDocs hooks: each command's reference made from the CLI itself (``<!-- cli: NAME -->`` in a page), and a
build that fails under ``--strict`` when a public module, class, function or method has no docstring."""

from __future__ import annotations

import functools
import importlib
import inspect
import logging
import pkgutil
import re

log = logging.getLogger("mkdocs.hooks.fusion_model")
PACKAGES = ("fusion_model", "clinical_schema")
MARKER = re.compile(r"<!-- cli: ([a-z -]+?) -->")


def _own_doc(obj) -> str:
    obj = obj.__func__ if isinstance(obj, (classmethod, staticmethod)) else obj
    obj = obj.fget if isinstance(obj, property) else obj
    return (getattr(obj, "__doc__", None) or "").strip()


def _method_doc(cls, attribute: str) -> str:
    """A method's docstring, or that of the method it overrides (documented once, on the base)."""
    for klass in cls.__mro__:
        if attribute in vars(klass) and _own_doc(vars(klass)[attribute]):
            return _own_doc(vars(klass)[attribute])
    return ""


def _public_members(module):
    """(where, docstring) of the classes and functions defined in ``module`` (not imported), and of their public
    methods and properties."""
    for name, obj in vars(module).items():
        if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
            continue
        if inspect.isclass(obj) or inspect.isfunction(obj):
            yield f"{module.__name__}.{name}", _own_doc(obj)
        if inspect.isclass(obj):
            for attribute, member in vars(obj).items():
                function = member.__func__ if isinstance(member, (classmethod, staticmethod)) else member
                if not attribute.startswith("_") and (inspect.isfunction(function) or isinstance(member, property)):
                    yield f"{module.__name__}.{name}.{attribute}", _method_doc(obj, attribute)


def on_pre_build(config) -> None:
    """Warn (an error under --strict) for every public module, class, function or method without a docstring."""
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        modules = [package] + [importlib.import_module(m.name) for m in
                               pkgutil.walk_packages(package.__path__, f"{package_name}.")]
        for module in modules:
            if not (module.__doc__ or "").strip():
                log.warning("%s: the module has no docstring", module.__name__)
            for where, doc in _public_members(module):
                if not doc:
                    log.warning("%s has no docstring", where)


@functools.cache
def _root_command():
    """The click command typer builds from the CLI (once per build)."""
    import typer

    from fusion_model.cli import app

    return typer.main.get_command(app)


def _command(path: str):
    command = _root_command()
    for part in path.split():
        command = command.commands[part]
    return command


def _cell(text: str) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def cli_reference(path: str) -> str:
    """Markdown for one command: usage, its description and a table of its arguments and options."""
    import click

    command = _command(path)
    context = click.Context(command, info_name=f"fusion-model {path}")
    rows = []
    for param in command.params:
        if param.name == "help":
            continue
        if isinstance(param, click.Argument):
            name = param.name.upper()
        else:
            name = ", ".join(param.opts + param.secondary_opts)
        default = "" if param.required or param.default in (None, False, ()) else f"`{param.default}`"
        rows.append(f"| `{_cell(name)}` | {'yes' if param.required else ''} | {_cell(default)} | "
                    f"{_cell(getattr(param, 'help', '') or '')} |")
    usage = " ".join(command.collect_usage_pieces(context))
    return (f"```\nfusion-model {path} {usage}\n```\n\n{inspect.cleandoc(command.help or '')}\n\n"
            "| argument / option | required | default | what it is |\n|---|---|---|---|\n" + "\n".join(rows) + "\n")


def on_page_markdown(markdown: str, page, config, files) -> str:
    """Replace each ``<!-- cli: NAME -->`` with that command's reference."""
    return MARKER.sub(lambda m: cli_reference(m.group(1).strip()), markdown)
