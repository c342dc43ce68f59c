"""Files on hosts for the TM actions: VM directories (remove, copy or move between hosts)
and single files (the context ISO), with OpenSSH as the front-end's user.

Like ``host_iscsi`` (whose ``Host`` gives the host name, ssh command and timeouts), every
operation is one ssh call per host, the remote command is bash and every path in it is
validated (``naming.parse_host_path``) and shell-quoted:

* ``remove_vm_dir``: one ``Host.run_script`` that removes the directory unless one of the
  given ``disk.N`` links is still in it (then it only names them);
* ``copy_vm_dir``: ``tar -C <src> --sparse -cf - .`` on the source, piped through the
  front-end into ``mkdir -p <dst> && tar -C <dst> -xf -`` on the destination.  To move
  (``mv`` of a VM directory) the source's command then waits on its stdin for the word
  ``moved``, which the front-end sends only after the destination's tar succeeded, and
  removes its directory; so the source is removed in the same ssh call and never before
  the copy is complete.  The source closes its stdout first, so the destination's tar
  sees the end of the archive;
* ``write_file``: ``mkdir -p``, ``cat > <path>.eqliscsi-tmp`` from ssh's stdin, then
  ``mv`` over ``<path>``.
"""

from __future__ import annotations

import posixpath
import shlex
import subprocess
import tempfile
import time
from typing import IO, List, Optional, Sequence

from eqliscsi.host_iscsi import Host, HostError

COPY_TIMEOUT = 4 * 3600.0  # a VM directory may hold a checkpoint of the VM's memory
WRITE_SECONDS_PER_MB = 4.0
MOVED = b"moved\n"
TMP_SUFFIX = ".eqliscsi-tmp"


def _bash(script: str) -> str:
    return "bash --norc --noprofile -c " + shlex.quote(script)


def _tail(output: bytes) -> str:
    """The last lines of a command's error output, on one line."""
    lines = [line.strip() for line in output.decode("utf-8", "replace").splitlines()]
    return " / ".join(line for line in lines if line)[-500:] or "no message"


def _read(stream: IO[bytes]) -> bytes:
    stream.seek(0)
    return stream.read()


def remove_vm_dir(host: Host, path: str, disk_ids: Sequence[int] = ()) -> List[int]:
    """Remove ``path`` on ``host`` (missing is fine), unless ``disk.N`` links of
    ``disk_ids`` are still in it: then nothing is removed and their N are returned."""
    ids = " ".join(str(int(disk_id)) for disk_id in disk_ids)
    script = f"""export LC_ALL=C
main() {{
  local dir={shlex.quote(path)} id linked=0 out
  for id in {ids}; do
    if [ -L "$dir/disk.$id" ]; then printf 'EQLISCSI-LINKED %s\\n' "$id"; linked=1; fi
  done
  [ "$linked" -eq 0 ] || return 0
  if ! out=$(rm -rf -- "$dir" 2>&1); then
    out=$(printf '%s' "$out" | tr '\\n' ' ')
    printf 'EQLISCSI-ERROR 1 cannot remove %s: %s\\n' "$dir" "$out"
    return 1
  fi
}}
main </dev/null
"""
    config = host.config
    result = host.run_script("remove directory", script,
                             config.connect_timeout + config.command_timeout, lock=False)
    return [int(value) for value in result.values("LINKED")]


def copy_vm_dir(source: Host, source_path: str, target: Host, target_path: str,
                move: bool) -> None:
    """Copy the directory ``source_path`` of ``source`` to ``target_path`` of ``target``
    (merged into what is there); ``move`` removes the source after a complete copy."""
    quoted_source, quoted_target = shlex.quote(source_path), shlex.quote(target_path)
    source_script = (f"cd -- {quoted_source} || exit 1\n"
                     "tar --sparse -cf - . || exit 2\n"
                     "exec 1>&-\n")
    if move:
        source_script += ("read -r answer || exit 0\n"
                          f'[ "$answer" = {MOVED.decode().strip()} ] || exit 0\n'
                          f"rm -rf -- {quoted_source}\n")
    target_script = f"mkdir -p -- {quoted_target} && tar -C {quoted_target} -xf -"
    deadline = time.monotonic() + COPY_TIMEOUT
    with tempfile.TemporaryFile() as source_err, tempfile.TemporaryFile() as target_err:
        sender = subprocess.Popen(source.ssh_argv(_bash(source_script)),
                                  stdin=subprocess.PIPE if move else subprocess.DEVNULL,
                                  stdout=subprocess.PIPE, stderr=source_err)
        receiver: Optional[subprocess.Popen[bytes]] = None
        try:
            receiver = subprocess.Popen(target.ssh_argv(_bash(target_script)),
                                        stdin=sender.stdout, stdout=subprocess.DEVNULL,
                                        stderr=target_err)
            assert sender.stdout is not None
            sender.stdout.close()
            received = receiver.wait(max(deadline - time.monotonic(), 1))
            if sender.stdin is not None:
                try:
                    if received == 0:
                        sender.stdin.write(MOVED)
                    sender.stdin.close()
                except BrokenPipeError:
                    pass
            sent = sender.wait(max(deadline - time.monotonic(), 1))
        except subprocess.TimeoutExpired:
            raise HostError(source.name, "copy", f"copying {source_path} to {target.name} "
                            f"took more than {COPY_TIMEOUT:g}s (stopped)") from None
        finally:
            for process in (sender, receiver):
                if process is not None and process.poll() is None:
                    process.kill()
                    process.wait()
        if sent != 0:
            raise HostError(source.name, "copy", f"tar of {source_path} failed "
                            f"(exit {sent}): {_tail(_read(source_err))}", sent)
        if received != 0:
            raise HostError(target.name, "copy", f"unpacking {source.name}:{source_path} "
                            f"into {target_path} failed (exit {received}): "
                            f"{_tail(_read(target_err))}", received)


def write_file(host: Host, path: str, data: bytes) -> None:
    """Write ``data`` to ``path`` on ``host`` (directory created, file replaced whole)."""
    temporary = shlex.quote(path + TMP_SUFFIX)
    script = (f"set -e; mkdir -p -- {shlex.quote(posixpath.dirname(path))}; "
              f"cat > {temporary}; mv -f -- {temporary} {shlex.quote(path)}")
    config = host.config
    timeout = (config.connect_timeout + config.command_timeout
               + WRITE_SECONDS_PER_MB * len(data) / 2**20)
    try:
        done = subprocess.run(host.ssh_argv(_bash(script)), input=data, capture_output=True,
                              timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise HostError(host.name, "write", f"writing {path} took more than {timeout:.0f}s "
                        "(stopped)") from None
    if done.returncode != 0:
        raise HostError(host.name, "write", f"writing {path} failed (exit "
                        f"{done.returncode}): {_tail(done.stderr)}", done.returncode)
