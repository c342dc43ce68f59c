"""Test hypervisor hosts: real sshd/sudo/block devices per mount namespace, with an
``iscsiadm`` stand-in over a userspace iSCSI initiator (see ``world.py`` for what is real
and what stands in for the kernel, ``initiator.py`` for the iscsiadm subset).

Kept free of imports: the stand-in imports ``tests.hosts.initiator`` with the system
Python under sudo, without pytest.
"""
