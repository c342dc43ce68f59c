"""The one module action scripts import: ``run_action`` and the action functions.

An action script is only::

    import scripts_eqliscsi
    scripts_eqliscsi.run_action("<name>", scripts_eqliscsi.<function>)

Keep the imports here light: modules that talk to the group (and so load paramiko) are
imported inside the functions of the actions that need them; ``stat`` never loads them.
The functions of ``eqliscsi.ds_actions`` and of the TM modules (``tm_actions``,
``tm_migrate``, ``tm_monitor``) are looked up on first use (``__getattr__``).
"""

import importlib

from eqliscsi.image_source import ds_stat
from eqliscsi.oned import ActionFunction, run_action

_LAZY_ACTIONS = {
    **{name: "eqliscsi.ds_actions"
       for name in ("ds_cp", "ds_mkfs", "ds_clone", "ds_rm", "ds_monitor", "ds_snap_delete",
                    "ds_snap_revert", "ds_snap_flatten")},
    **{name: "eqliscsi.tm_actions"
       for name in ("tm_clone", "tm_ln", "tm_mkimage", "tm_mkswap", "tm_context", "tm_mv",
                    "tm_mvds", "tm_cpds", "tm_delete", "tm_resize", "tm_snap_create",
                    "tm_snap_delete", "tm_snap_revert")},
    **{name: "eqliscsi.tm_migrate"
       for name in ("tm_premigrate", "tm_postmigrate", "tm_failmigrate")},
    "tm_monitor": "eqliscsi.tm_monitor",
}

__all__ = ["ds_stat", "run_action", *_LAZY_ACTIONS]


def __getattr__(name: str) -> ActionFunction:
    """The action functions of modules that are imported only when an action needs them."""
    module = _LAZY_ACTIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    function: ActionFunction = getattr(importlib.import_module(module), name)
    return function
