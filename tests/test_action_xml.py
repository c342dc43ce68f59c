"""Parsing oned's DS_DRIVER_ACTION_DATA and VM documents."""

import pytest
from lxml import etree

from eqliscsi.action_xml import (
    parse_action_data,
    parse_vm,
    parse_xml,
    template_attributes,
    xpath_text,
)
from eqliscsi.oned import InputError
from tests.oned_xml import (
    action_xml,
    datastore_xml,
    disk_xml,
    history_xml,
    image_xml,
    stat_action_xml,
    vm_xml,
)


def data(xml: str):
    return parse_action_data(xml.encode())


def test_image_and_datastore_fields():
    parsed = data(action_xml(
        image_xml(template={"MD5": "abc", "SHA1": "def"}, PERSISTENT="1", SIZE="3584"),
        datastore_xml(template={"SAFE_DIRS": "/var/tmp /srv/img", "NO_DECOMPRESS": "Yes",
                                "LIMIT_TRANSFER_BW": " 10M "}),
    ))
    image, datastore = parsed.image, parsed.datastore
    assert (image.id, image.name, image.size_mb, image.format) == (42, "ubuntu-24.04", 3584, "raw")
    assert image.path == "https://cloud-images.example.org/noble.qcow2"
    assert image.persistent is True
    assert (image.type, image.target_snapshot, image.cloning_id, image.datastore_id) == (
        0, -1, -1, 100)
    assert (image.md5, image.sha1) == ("abc", "def")
    assert (datastore.id, datastore.name, datastore.type) == (100, "san_images", 0)
    assert datastore.base_path == "/var/lib/one//datastores/100"
    assert datastore.safe_dirs == ["/var/tmp", "/srv/img"]
    assert datastore.restricted_dirs == []
    assert datastore.bridge_list == ["kvm1", "kvm2"]
    assert datastore.no_decompress is True
    assert datastore.limit_transfer_bw == "10M"
    assert datastore.template["EQL_HOST"] == "192.168.0.1"


def test_template_keeps_empty_attributes_and_skips_vectors():
    root = etree.fromstring(
        "<TEMPLATE><A><![CDATA[x & y]]></A><EMPTY/><C><![CDATA[]]></C>"
        "<VEC><X>1</X></VEC><A>second</A><!-- c --></TEMPLATE>")
    assert template_attributes(root) == {"A": "x & y", "EMPTY": "", "C": ""}
    assert template_attributes(None) == {}


def test_fs_falls_back_to_the_pre_6_0_fstype():
    assert data(action_xml(image_xml(FS="ext4"))).image.fs == "ext4"
    assert data(action_xml(image_xml(FS=None, FSTYPE="xfs"))).image.fs == "xfs"
    assert data(action_xml(image_xml(FS=None))).image.fs == ""


def test_escaped_text_is_decoded():
    image = data(action_xml(image_xml(NAME="a & b <c>", PATH="/srv/x&y.img"))).image
    assert (image.name, image.path) == ("a & b <c>", "/srv/x&y.img")


def test_stat_gets_a_reduced_image():
    image = data(stat_action_xml("/srv/images/disk.img", size="10")).image
    assert (image.path, image.size_mb) == ("/srv/images/disk.img", 10)
    with pytest.raises(InputError, match=r"^/DS_DRIVER_ACTION_DATA/IMAGE/ID is missing or empty$"):
        _ = image.id


@pytest.mark.parametrize(("overrides", "attribute", "message"), [
    ({"SIZE": None}, "size_mb", "/DS_DRIVER_ACTION_DATA/IMAGE/SIZE is missing or empty"),
    ({"SIZE": ""}, "size_mb", "/DS_DRIVER_ACTION_DATA/IMAGE/SIZE is missing or empty"),
    ({"SIZE": "12 MB"}, "size_mb", "/DS_DRIVER_ACTION_DATA/IMAGE/SIZE is not an integer: '12 MB'"),
    ({"ID": "4.2"}, "id", "/DS_DRIVER_ACTION_DATA/IMAGE/ID is not an integer: '4.2'"),
    ({"PATH": None}, "path", "/DS_DRIVER_ACTION_DATA/IMAGE/PATH is missing or empty"),
    ({"SOURCE": ""}, "source", "/DS_DRIVER_ACTION_DATA/IMAGE/SOURCE is missing or empty"),
    ({"PERSISTENT": "maybe"}, "persistent",
     "/DS_DRIVER_ACTION_DATA/IMAGE/PERSISTENT is not YES/NO: 'maybe'"),
])
def test_bad_required_fields_name_the_element(overrides, attribute, message):
    image = data(action_xml(image_xml(**overrides))).image
    with pytest.raises(InputError) as error:
        getattr(image, attribute)
    assert str(error.value) == message


def test_missing_sections_are_named():
    with pytest.raises(InputError, match=r"^/DS_DRIVER_ACTION_DATA/IMAGE is missing$"):
        _ = data(action_xml(image="")).image
    with pytest.raises(InputError, match=r"^/DS_DRIVER_ACTION_DATA/DATASTORE is missing$"):
        _ = data(action_xml(datastore="")).datastore


@pytest.mark.parametrize(("xml", "message"), [
    (b"<DS_DRIVER_ACTION_DATA><IMAGE>", "invalid action data XML"),
    (b"not xml at all", "invalid action data XML"),
    (b"", "invalid action data XML"),
    (b"<VM><ID>1</ID></VM>", "root element is <VM>, expected <DS_DRIVER_ACTION_DATA>"),
    (b'<!DOCTYPE DS_DRIVER_ACTION_DATA [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     b"<DS_DRIVER_ACTION_DATA><IMAGE><PATH>&x;</PATH></IMAGE></DS_DRIVER_ACTION_DATA>",
     "a DOCTYPE is not allowed"),
    (b'<!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">'
     b'<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]><DS_DRIVER_ACTION_DATA>&c;&c;'
     b"</DS_DRIVER_ACTION_DATA>", "a DOCTYPE is not allowed"),
    (b'<!DOCTYPE DS_DRIVER_ACTION_DATA SYSTEM "http://127.0.0.1:9/x.dtd">'
     b"<DS_DRIVER_ACTION_DATA/>", "a DOCTYPE is not allowed"),
])
def test_unsafe_or_invalid_documents_are_rejected(xml, message):
    with pytest.raises(InputError, match="invalid action data XML") as error:
        parse_action_data(xml)
    assert message in str(error.value)


def test_xpath_text_has_xpath_rb_semantics():
    root = parse_xml(b"<R><A>first</A><A>second</A><E/><F></F><G><![CDATA[c&d]]></G>"
                     b"<D><ID>1</ID><N>one</N></D><D><ID>2</ID><N>two</N></D></R>", "R", "test")
    assert xpath_text(root, "/R/A") == "first"
    assert xpath_text(root, "A[last()]") == "second"
    assert xpath_text(root, "/R/E", "dflt") == "dflt"
    assert xpath_text(root, "/R/F") == ""
    assert xpath_text(root, "/R/MISSING", "x") == "x"
    assert xpath_text(root, "/R/G") == "c&d"
    assert xpath_text(root, "/R/D[ID=2]/N") == "two"
    assert xpath_text(root, "count(/R/A)", "none") == "none"


def vm(*disks, history=()):
    return parse_vm(vm_xml(disks=disks, history=history).encode())


def test_vm_disks_and_history():
    parsed = vm(
        disk_xml(),
        disk_xml(DISK_ID="1", CLONE="NO", PERSISTENT="YES", SAVE="YES", SOURCE="data.7",
                 IMAGE_ID="7", EQL_MULTIHOST="disable"),
        disk_xml(DISK_ID="2", SOURCE=None, IMAGE_ID=None, TYPE="fs", FORMAT="raw", SIZE="1024",
                 CLONE=None),
        history=[history_xml(0, "kvm1", ds_id="0"), history_xml(1, "kvm2", ds_id="101")],
    )
    assert parsed.id == 17 and parsed.lcm_state == 3
    assert [disk.disk_id for disk in parsed.disks] == [0, 1, 2]
    first, persistent, volatile = (parsed.disk(n) for n in (0, 1, 2))
    assert (first.source, first.persistent, first.clone, first.save) == (
        "ubuntu-24-04.42", False, True, False)
    assert (first.datastore_id, first.image_id, first.size_mb) == (100, 42, 3584)
    assert (first.format, first.type, first.tm_mad) == ("raw", "BLOCK", "eqliscsi")
    assert (persistent.source, persistent.persistent, persistent.clone, persistent.save) == (
        "data.7", True, False, True)
    assert persistent.attributes["EQL_MULTIHOST"] == "disable"
    assert (volatile.type, volatile.clone) == ("fs", False)
    with pytest.raises(InputError, match="DISK\\[3\\]/SOURCE is missing or empty"):
        _ = volatile.source
    assert parsed.last_history.hostname == "kvm2"
    assert parsed.last_history.ds_id == 101
    assert parsed.last_history.tm_mad == "shared"


def test_persistent_no_is_not_persistent():
    assert vm(disk_xml(PERSISTENT="NO")).disk(0).persistent is False


def test_vm_errors():
    parsed = vm(disk_xml())
    with pytest.raises(InputError, match="VM 17 has no disk with DISK_ID 5"):
        parsed.disk(5)
    with pytest.raises(InputError, match="/VM/HISTORY_RECORDS/HISTORY is missing"):
        _ = parsed.last_history
    with pytest.raises(InputError, match="root element is <DS_DRIVER_ACTION_DATA>"):
        parse_vm(action_xml().encode())
