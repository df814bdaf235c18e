"""One small registry type for alignment methods, inversion samplers, scorers and suites.

A plugin class registers by naming itself in its class keywords (`class DPO(AlignmentMethod, name="dpo", ...)`,
which its base's `__init_subclass__` hands to `declare`); any other object by decorator (`@SUITES.register("toy")`);
a third-party package through an entry point group (e.g. `[project.entry-points."diffusion_align_bench.methods"]`).
A plugin package's
`__init__` calls `discover`, which imports every module in its folder, so a plugin file is registered by
being there: there is no import list to forget. A typo gets the nearest known name, as
lm-evaluation-harness's registry does. A renamed entry keeps its old name as a deprecated alias
(`alias(old, new)`): it still resolves, with a FutureWarning naming the new name, but is not listed, and
`canonical` maps it silently (for reading records written under the old name).

This module sits at the bottom of the import graph (it imports nothing of the project), so that
`methods/` and `metrics/` can use it without knowing the harness.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
import sys
import warnings
from collections.abc import Callable, Collection, Iterator
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class UnknownNameError(KeyError):
    """An unknown registry name; the message lists the known names and the nearest one."""

    def __init__(self, kind: str, name: str, known: list[str]):
        self.kind, self.name, self.known = kind, name, known
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.5)
        hint = f"; did you mean {close[0]!r}?" if close else "."
        super().__init__(f"unknown {kind} {name!r}{hint} Known {kind}s: {', '.join(known)}")

    def __str__(self) -> str:  # KeyError would quote the message
        return self.args[0]


class Registry(Generic[T]):
    """Name -> object, with class-keyword or decorator registration, entry points and "did you mean" on a typo."""

    def __init__(self, kind: str, entry_point_group: str | None = None):
        self.kind = kind
        self.entry_point_group = entry_point_group
        self._items: dict[str, T] = {}
        self._aliases: dict[str, tuple[str, str]] = {}  # deprecated name -> (current name, why it changed)
        self._entry_points_loaded = entry_point_group is None
        self.plugin_modules: list[str] = []  # the modules `discover` imported, each expected to register something

    def register(self, name: str) -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered to {self._items[name]!r}")
            if name in self._aliases:
                raise ValueError(f"{self.kind} {name!r} is a deprecated alias of {self._aliases[name][0]!r}")
            self._items[name] = obj
            return obj

        return decorator

    def declare(self, cls: type, keywords: dict[str, object], attributes: Collection[str],
                check: Callable[[type], None] | None = None) -> None:
        """Apply a plugin class's class keywords, for its base's `__init_subclass__` (`class DPO(AlignmentMethod,
        name="dpo", config=DPOConfig)`): each keyword sets the class attribute of `attributes` it names in lower case
        (`config=` sets `Config`), and any other keyword is a TypeError naming it. A class given `name` is then
        checked by `check` and registered under it; one without (an intermediate base) is not, and its subclasses
        inherit what it set."""
        by_keyword = {attribute.lower(): attribute for attribute in attributes}
        if unknown := [keyword for keyword in keywords if keyword not in by_keyword]:
            raise TypeError(f"{cls.__qualname__}: unknown class keyword {unknown[0]!r}; a {self.kind} class takes "
                            f"{', '.join(by_keyword)}")
        for keyword, value in keywords.items():
            setattr(cls, by_keyword[keyword], value)
        if "name" in keywords:
            if check is not None:
                check(cls)
            self.register(keywords["name"])(cls)

    def discover(self, package: str, skip: Collection[str] = ()) -> None:
        """Import every module of `package`'s folder (a subpackage counts as one) except those named in `skip`,
        so that their classes register; call it from the package's `__init__` with `__name__`.

        `skip` names the folder's modules that are not plugins (the contract in `base.py`, helpers), which
        register nothing; every other module is a plugin and is listed in `plugin_modules` (the tests check
        that each one registered something). A name in `skip` that is not in the folder is an error, so the
        list cannot go stale.
        """
        found = [info.name for info in pkgutil.iter_modules(sys.modules[package].__path__)]  # sorted by name
        if stale := sorted(set(skip) - set(found)):
            raise ValueError(f"discover({package!r}): skip names {stale}, which are not modules of the package")
        for name in found:
            if name not in skip:
                importlib.import_module(f"{package}.{name}")
                self.plugin_modules.append(f"{package}.{name}")

    def alias(self, old: str, new: str, *, note: str = "") -> None:
        """Keep `old` working as a deprecated name of the registered `new` (a FutureWarning on use); `note`
        says why it was renamed."""
        if new not in self._items:
            raise ValueError(f"cannot alias {old!r} to {new!r}: no {self.kind} {new!r} is registered")
        if old in self._items or self._aliases.get(old, (new,))[0] != new:
            raise ValueError(f"{self.kind} name {old!r} is already taken")
        self._aliases[old] = (new, note)

    def canonical(self, name: str) -> str:
        """The current name of `name`: its target if it is a deprecated alias, else `name` itself (no warning)."""
        return self._aliases[name][0] if name in self._aliases else name

    def resolve(self, name: str) -> str:
        """The registered name `name` stands for; a deprecated alias warns and gives its new name, an unknown
        name raises UnknownNameError."""
        self._load_entry_points()
        if name in self._aliases:
            new, note = self._aliases[name]
            warnings.warn(f"{self.kind} {name!r} is deprecated; use {new!r}" + (f" ({note})" if note else ""),
                          FutureWarning, stacklevel=3)
            return new
        if name not in self._items:
            raise UnknownNameError(self.kind, name, self.names())
        return name

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.entry_point_group):
            if ep.name not in self._items:
                self._items[ep.name] = ep.load()

    def names(self) -> list[str]:
        """The registered names, sorted (deprecated aliases are not listed)."""
        self._load_entry_points()
        return sorted(self._items)

    def get(self, name: str) -> T:
        return self._items[self.resolve(name)]

    def check(self, names: list[str]) -> None:
        """Raise UnknownNameError for the first unknown name, before any work starts."""
        for name in names:
            self.get(name)

    def __contains__(self, name: str) -> bool:
        self._load_entry_points()
        return name in self._items or name in self._aliases

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def items(self) -> list[tuple[str, T]]:
        return [(name, self._items[name]) for name in self.names()]
