"""The one module action scripts import: ``run_action`` and the action functions.

An action script is only::

    import scripts_eqliscsi
    scripts_eqliscsi.run_action("<name>", scripts_eqliscsi.<function>)

Keep the imports here light: modules that talk to the group (and so load paramiko) are
imported inside the functions of the actions that need them; ``stat`` never loads them.
"""

from eqliscsi.image_source import ds_stat
from eqliscsi.oned import run_action

__all__ = ["ds_stat", "run_action"]
