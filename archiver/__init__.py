"""archiver: chunked, content-addressed, verifiable archives of model checkpoints.

    import archiver
    res = archiver.archive(["ckpt/"], name="llama-7b", label="final")
    report = archiver.verify([res.id], deep=True)
    archiver.restore("llama-7b@final", "/restore/here")

The public names are loaded on first use, so low-level modules (errors, codecs, stores)
import without pulling in the whole pipeline.
"""
from __future__ import annotations

import importlib
import sys
import types
from typing import Any

__all__ = ["archive", "verify", "restore", "open_store", "open_repository", "list_archives", "show",
           "rebuild_catalog", "keygen", "export", "ArchiveResult", "VerifyReport", "RestoreResult", "RebuildResult",
           "ArchiverError", "Settings", "S3Options", "Problem",
           "fixity_status", "event_log"]
__all__ += ["replicate", "repair", "copies_add", "copies_list", "copies_remove", "verify_copies", "store_check",
            "ReplicateResult", "RepairResult", "CopiesReport"]
__all__ += ["key_split", "key_combine"]
__all__ += ["sync_catalog"]  # many hosts, one store (see README "The catalog")

_ELSEWHERE = {"ArchiverError": "archiver.errors", "Settings": "archiver.settings", "S3Options": "archiver.settings",
              "Problem": "archiver.problems"}


def __getattr__(name: str) -> Any:
    if name in _ELSEWHERE:
        return getattr(importlib.import_module(_ELSEWHERE[name]), name)
    if name in __all__:
        return getattr(importlib.import_module("archiver.api"), name)
    raise AttributeError(f"module 'archiver' has no attribute {name!r}")


# Two public functions share their names with submodules (archiver.replicate, archiver.repair).
# Importing a submodule sets it as an attribute of its package, over the function: a script
# calling replicate, repair, then replicate again failed with "'module' object is not
# callable". So those two submodules are callable when the package takes them: calling one
# calls the API function of its name, and `import archiver.repair as m` still binds the module.
_API_MODULES = frozenset({"replicate", "repair"})


class _ApiModule(types.ModuleType):
    """A submodule that shares its name with an API function: calling it calls the function."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return getattr(importlib.import_module("archiver.api"), self.__name__.rpartition(".")[2])(*args, **kwargs)


class _Package(types.ModuleType):
    def __setattr__(self, name: str, value: Any) -> None:
        if name in _API_MODULES and type(value) is types.ModuleType:
            value.__class__ = _ApiModule
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
