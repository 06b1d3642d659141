"""Named implementations of the extension points: head learners and fusion methods.

A registry maps a name (the one a config file, the model manifest and the CLI use) to an implementation.
The built-in ones are declared by import path, like a package's entry points, with the few facts the
configuration checks (so it checks a name without importing torch or XGBoost); each resolves on first use. Adding one is a module with the implementation plus one line::

    LEARNERS.register(MyHead)            # a class whose ``learner`` attribute is its name
    FUSION_METHODS.register(MyMethod())  # an object whose ``name`` attribute is its name
"""

from __future__ import annotations

import importlib
from collections.abc import Iterator
from typing import Any


class Registry:
    """Implementations of one extension point by name, in registration order (built-ins first)."""

    def __init__(self, kind: str, attribute: str, builtins: dict[str, tuple[str, dict[str, Any]]]):
        self.kind = kind
        self.attribute = attribute  # the implementation's own name: ``learner`` of a head, ``name`` of a method
        self._entries: dict[str, Any] = {name: path for name, (path, _) in builtins.items()}  # until resolved
        self._declared = {name: facts for name, (_, facts) in builtins.items()}

    def register(self, implementation: Any) -> Any:
        """Add (or replace) an implementation under its own name; returns it (usable as a class decorator)."""
        name = getattr(implementation, self.attribute, None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"a {self.kind} needs a non-empty string {self.attribute!r} attribute to be registered")
        self._entries[name] = implementation
        return implementation

    def unregister(self, name: str) -> None:
        """Remove an implementation registered at run time (a test's toy one); built-ins stay."""
        if name not in self._declared:
            self._entries.pop(name, None)

    def fact(self, name: str, attribute: str) -> Any:
        """An attribute of an implementation; a built-in's as declared, without importing its module."""
        declared = self._declared.get(name, {})
        if attribute in declared and isinstance(self._entries.get(name), str):
            return declared[attribute]
        return getattr(self.get(name), attribute)

    def names(self) -> list[str]:
        """Every registered name, built-ins first."""
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def get(self, name: str) -> Any:
        """The implementation registered as ``name``; a ValueError naming the choices otherwise."""
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; choose from {self.names()}")
        entry = self._entries[name]
        if isinstance(entry, str):  # a built-in declared by import path
            module, _, attribute = entry.partition(":")
            entry = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return entry

    def __iter__(self) -> Iterator[Any]:
        return (self.get(name) for name in self.names())


# Head learners: classes following fusion_model.heads.base.Head (binary) or the multi-class head of the type
# mixture; the name is the class's ``learner`` and is what fusion.head and the manifest's heads say.
LEARNERS = Registry("head learner", "learner", {
    "xgboost": ("fusion_model.heads.xgb:XGBHead", {"outputs": "binary"}),
    "logistic": ("fusion_model.heads.logistic:LogisticHead", {"outputs": "binary"}),
    "xgboost_multiclass": ("fusion_model.heads.subtype:MultiClassHead", {"outputs": "classes"}),
})

# Fusion methods: objects following fusion_model.heads.methods.FusionMethod; the name is what fusion.method,
# the manifest's variants and the out-of-fold tables say. The order is the order of the CLI's tables.
_HEAD_METHOD = {"configurable": True, "needs_types": False}
FUSION_METHODS = Registry("fusion method", "name", {
    "fusion_head": ("fusion_model.heads.methods:FUSION_HEAD", _HEAD_METHOD),
    "late_fusion": ("fusion_model.heads.methods:LATE_FUSION", _HEAD_METHOD),
    "tabular_head": ("fusion_model.heads.methods:TABULAR_HEAD", _HEAD_METHOD),
    "type_mixture": ("fusion_model.heads.methods:TYPE_MIXTURE", {"configurable": True, "needs_types": True}),
    "image_logit": ("fusion_model.heads.methods:IMAGE_LOGIT", {"configurable": False, "needs_types": False}),
})


def binary_learners() -> list[str]:
    """The registered learners ``fusion.head`` may name (``auto`` chooses among them), in registration order."""
    return [name for name in LEARNERS.names() if LEARNERS.fact(name, "outputs") == "binary"]


def configurable_methods() -> list[str]:
    """The registered fusion methods ``fusion.method`` may name (the image logit alone is not one of them)."""
    return [name for name in FUSION_METHODS.names() if FUSION_METHODS.fact(name, "configurable")]
