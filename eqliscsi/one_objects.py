"""oned's objects as its CLI shows them: ``onevm|onedatastore|oneimage show -x <id>``.

oned gives TM actions no object XML (pre/post/failmigrate aside, which get the VM on
stdin), so they fetch what they need the way OpenNebula's own drivers do: with the CLI,
as ``oneadmin`` (``ONE_AUTH`` / ``~/.one/one_auth``, ``ONE_XMLRPC`` come from the
environment oned runs actions in).  ``OneObjects`` runs the command with captured output
and a time limit, parses the answer safely (``action_xml.parse_xml``) and keeps each
object for the rest of the action, so nothing is fetched twice.
"""

from __future__ import annotations

from typing import Dict, Tuple

from lxml import etree

from eqliscsi.action_xml import DatastoreInfo, ImageInfo, VmInfo, parse_xml
from eqliscsi.image_copy import run_tool

ONE_CLI_TIMEOUT = 60.0


class OneObjects:
    """VMs, datastores and images by id, each fetched at most once."""

    def __init__(self) -> None:
        self._cache: Dict[Tuple[str, int], etree._Element] = {}

    def vm(self, vm_id: int) -> VmInfo:
        """``onevm show -x <vm_id>``."""
        return VmInfo(self._show("onevm", "VM", vm_id))

    def datastore(self, datastore_id: int) -> DatastoreInfo:
        """``onedatastore show -x <datastore_id>``."""
        return DatastoreInfo(self._show("onedatastore", "DATASTORE", datastore_id))

    def image(self, image_id: int) -> ImageInfo:
        """``oneimage show -x <image_id>``."""
        return ImageInfo(self._show("oneimage", "IMAGE", image_id))

    def _show(self, command: str, root: str, object_id: int) -> etree._Element:
        key = (command, object_id)
        if key not in self._cache:
            argv = [command, "show", "-x", str(object_id)]
            done = run_tool(argv, " ".join(argv), ONE_CLI_TIMEOUT)
            self._cache[key] = parse_xml(done.stdout.encode(), root, f"{command} show -x")
        return self._cache[key]
