"""The benchmark sections; each returns the tables it measured."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Dict, List, Sequence, Tuple

from bench.measure import Samples, Table, Timed, median, ms, ratio, run_timed
from bench.world import World, world
from tests.ds_harness import FRONTEND, DsHarness, ds_xml
from tests.eqlsim.state import StateStore, Volume
from tests.oned_xml import action_xml, b64, datastore_xml, image_xml, stat_action_xml, vm_xml
from tests.tm_harness import (
    IMAGE_DS,
    LUN,
    SYSTEM_DS,
    TmHarness,
    image_disk,
    vm,
    vm_path,
    volatile_disk,
)

MIB = 1024 * 1024
PY = sys.executable
HOST_RE = re.compile(r"^host\d+$")
SEND_TO_MONITOR = "send_to_monitor() { cat > /dev/null; printf '%s\\n' \"$@\" > /dev/null; }\n"


@dataclass(frozen=True)
class Options:
    """What the run is asked for."""

    quick: bool

    @property
    def rounds(self) -> int:
        return 3 if self.quick else 5

    @property
    def image_mib(self) -> int:
        return 128 if self.quick else 1024

    @property
    def copy_rounds(self) -> int:
        return 2 if self.quick else 15

    @property
    def bursts(self) -> Tuple[int, ...]:
        return (10, 20) if self.quick else (10, 20, 40)

    @property
    def scale_volumes(self) -> int:
        return 2000


# --- floors --------------------------------------------------------------------------------

def group_login_floor(w: World) -> float:
    """paramiko connect + login + one command to the simulator, in this process."""
    started = time.perf_counter()
    client = w.sim.connect()
    status, _ = w.sim.exec("grpparams show", client)
    client.close()
    w.sim.clients.remove(client)
    seconds = time.perf_counter() - started
    assert status == 0
    return seconds


def ssh_true_floor(w: World, host: str = "host1") -> float:
    assert w.hosts is not None
    done = run_timed(w.hosts.ssh_argv(host, "true"), timeout=30)
    assert done.returncode == 0, done.stderr
    return done.seconds


def python_floor(code: str) -> float:
    done = run_timed([PY, "-c", code], timeout=30)
    assert done.returncode == 0, done.stderr
    return done.seconds


FLOOR_NAMES = ("python -c pass", "python -c 'import paramiko, lxml'",
               "paramiko connect+login+1 command", "ssh host true")


def measure_floors(w: World, samples: Samples) -> None:
    """One sample of every floor (called once per round, between the actions)."""
    samples.add(FLOOR_NAMES[0], python_floor("pass"))
    samples.add(FLOOR_NAMES[1], python_floor("import paramiko, lxml"))
    samples.add(FLOOR_NAMES[2], group_login_floor(w))
    if w.hosts is not None:
        samples.add(FLOOR_NAMES[3], ssh_true_floor(w))


def floors_table(samples: Samples) -> Table:
    table = Table("Floors (median of the interleaved rounds)", ["floor", "ms"])
    for name in FLOOR_NAMES:
        if name in samples.values:
            table.rows.append([name, ms(samples.median(name))])
    return table


# --- actions: round trips and latency -------------------------------------------------------

@dataclass(frozen=True)
class ActionRun:
    """One action run with its round trips."""

    name: str
    returncode: int
    seconds: float
    logins: int
    commands: int
    host_calls: Dict[str, int]
    host_seconds: float  # wall time inside the host ssh calls
    stderr: str


class Recorder:
    """Runs actions and counts their group logins, CLI commands and host ssh calls."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.runs: List[ActionRun] = []

    def _marks(self) -> Tuple[int, int]:
        return len(self.w.sim.commands()), len(self.w.ssh_calls())

    def record(self, name: str, run: Callable[[], Timed]) -> ActionRun:
        commands_before, calls_before = self._marks()
        done = run()
        log = self.w.sim.commands()[commands_before:]
        calls = self.w.ssh_calls()[calls_before:]
        per_host: Dict[str, int] = {}
        host_seconds = 0.0
        for call in calls:
            micros, _, args = call.partition(" ")
            host_seconds += int(micros) / 1e6
            host = next((word for word in args.split() if HOST_RE.match(word)), "?")
            per_host[host] = per_host.get(host, 0) + 1
        result = ActionRun(name, done.returncode, done.seconds,
                           len({entry.get("conn") for entry in log}), len(log), per_host,
                           host_seconds, done.stderr.decode(errors="replace"))
        if done.returncode != 0:
            raise RuntimeError(f"{name} failed: {result.stderr.strip()[-400:]}")
        self.runs.append(result)
        return result


def ds_action(ds: DsHarness, action: str, xml: str, object_id: int = 42) -> Callable[[], Timed]:
    script = ds.remotes / "datastore" / "eqliscsi" / action
    return lambda: run_timed([str(script), str(object_id)], stdin=b64(xml).encode(),
                             env=ds.env(), cwd=str(ds.base), timeout=600)


def tm_action(tm: TmHarness, action: str, *args: str, stdin: bytes = b"") -> Callable[[], Timed]:
    script = tm.remotes / "tm" / "eqliscsi" / action
    return lambda: run_timed([str(script), *args], stdin=stdin, env=tm.env(),
                             cwd=str(tm.base), timeout=600)


def cp_xml(path: str, size_mb: int) -> str:
    return ds_xml({"PATH": path, "SIZE": str(size_mb), "NAME": "Ubuntu"})


def monitor_system_xml() -> str:
    system = datastore_xml(ID=str(SYSTEM_DS), NAME="system", TYPE="1",
                           template={"EQL_HOST": None, "SHARED": "YES", "TYPE": "SYSTEM_DS"})
    return action_xml("", system, "<MONITOR_VM_DISKS>1</MONITOR_VM_DISKS>")


def ds_round(rec: Recorder, ds: DsHarness, image: Path) -> None:
    """Every DS action once; the group ends as it started."""
    size = image.stat().st_size // MIB
    rec.record("DS stat", ds_action(ds, "stat", stat_action_xml(str(image))))
    rec.record("DS cp (4 MiB raw)", ds_action(ds, "cp", cp_xml(str(image), size)))
    rec.record("DS mkfs (16 MB ext4)", ds_action(ds, "mkfs", ds_xml(
        {"NAME": "Data", "TYPE": "2", "SIZE": "16", "PATH": "", "FORMAT": "raw",
         "FS": "ext4"})))
    rec.record("DS clone", ds_action(ds, "clone", ds_xml(
        {"ID": "43", "NAME": "Copy", "PATH": "golden.7", "SIZE": "16", "CLONING_ID": "7",
         "SOURCE": ""}), object_id=43))
    rec.record("DS monitor", ds_action(ds, "monitor", ds_xml(with_image=False), 100))
    for volume, image_id in (("ubuntu.42", 42), ("data.42", 42), ("copy.43", 43)):
        rec.record("DS rm", ds_action(ds, "rm", ds_xml({"ID": str(image_id), "SOURCE": volume,
                                                         "PATH": ""}), image_id))


def tm_round(rec: Recorder, tm: TmHarness) -> None:
    """A VM's disks through the TM actions on host1; the group ends as it started."""
    def publish(lcm_state: int) -> None:
        disks = [image_disk(0, "centos.52", 52, 16), image_disk(1, "disk.53", 53, 16,
                                                                 persistent=True),
                 volatile_disk(2, 8)]
        tm.put_vm(17, vm(17, disks, ["host1"], lcm_state))

    def disk(number: int) -> str:
        return f"host1:{vm_path(17, number)}"

    ds, sys_ds = str(IMAGE_DS), str(SYSTEM_DS)
    publish(1)
    rec.record("TM clone", tm_action(tm, "clone", "one:centos.52", disk(0), "17", ds))
    rec.record("TM ln", tm_action(tm, "ln", "one:disk.53", disk(1), "17", ds))
    rec.record("TM mkimage (8 MB raw)", tm_action(tm, "mkimage", "8", "raw", disk(2), "17",
                                                  sys_ds))
    rec.record("TM monitor (system DS)", tm_action(
        tm, "monitor", sys_ds, stdin=b64(monitor_system_xml()).encode()))
    publish(51)
    rec.record("TM resize", tm_action(tm, "resize", disk(0), "40", "17", ds))
    tm.put_vm(17, vm(17, [image_disk(0, "centos.52", 52, 40),
                          image_disk(1, "disk.53", 53, 16, persistent=True),
                          volatile_disk(2, 8)], ["host1"], 51))
    rec.record("TM snap_create", tm_action(tm, "snap_create", disk(0), "0", "17", ds))
    rec.record("TM snap_delete", tm_action(tm, "snap_delete", disk(0), "0", "17", ds))
    tm.put_vm(17, vm(17, [image_disk(0, "centos.52", 52, 40),
                          image_disk(1, "disk.53", 53, 16, persistent=True),
                          volatile_disk(2, 8)], ["host1"], 11))
    rec.record("TM delete (clone)", tm_action(tm, "delete", disk(0), "17", ds))
    rec.record("TM delete (persistent)", tm_action(tm, "delete", disk(1), "17", ds))
    rec.record("TM delete (volatile)", tm_action(tm, "delete", disk(2), "17", sys_ds))
    rec.record("TM delete (VM dir)", tm_action(tm, "delete", f"host1:{vm_path(17)}", "17",
                                               sys_ds))


def action_floor(run: ActionRun, floors: Samples) -> float:
    """The floor an action is compared with: the interpreter with paramiko and lxml (or
    bare, for actions that log in nowhere), plus one group login per login, plus one
    ``ssh host true`` per host call."""
    host_calls = sum(run.host_calls.values())
    python = floors.median(FLOOR_NAMES[1] if run.logins or host_calls else FLOOR_NAMES[0])
    return (python + run.logins * floors.median(FLOOR_NAMES[2])
            + host_calls * floors.median(FLOOR_NAMES[3]))


def actions_section(opts: Options) -> List[Table]:
    """Round trips and latency of every DS and TM action, floors interleaved."""
    floors = Samples()
    with world(hosts=2) as w:
        ds, tm = w.ds(), w.tm()
        image = w.base / "image.raw"
        image.write_bytes(os.urandom(4 * MIB))
        with ds.group() as group:
            group.create_volume("golden.7", 16)
        tm.make_image(52, "centos", 16, 0xAB)
        tm.make_image(53, "disk", 16, 0x11, persistent=True)
        (tm.remotes / "scripts_common.sh").write_text(SEND_TO_MONITOR)
        rec = Recorder(w)
        for _ in range(opts.rounds):
            measure_floors(w, floors)
            ds_round(rec, ds, image)
            measure_floors(w, floors)
            tm_round(rec, tm)
    return [floors_table(floors), actions_table(rec.runs, floors)]


def actions_table(runs: Sequence[ActionRun], floors: Samples) -> Table:
    by_name: Dict[str, List[ActionRun]] = {}
    for run in runs:
        by_name.setdefault(run.name, []).append(run)
    table = Table("Actions: round trips and latency",
                  ["action", "group logins", "CLI commands", "host ssh calls (per host)",
                   "median ms", "floor ms", "ratio to floor", "host-side ms",
                   "front-end ratio"])
    for name, group in by_name.items():
        last = group[-1]
        counts = sorted({(r.logins, r.commands, tuple(sorted(r.host_calls.items())))
                         for r in group})
        seconds = median([r.seconds for r in group])
        floor = median([action_floor(r, floors) for r in group])
        ssh_true = floors.median(FLOOR_NAMES[3]) if FLOOR_NAMES[3] in floors.values else 0.0
        host_side = median([max(r.host_seconds - sum(r.host_calls.values()) * ssh_true, 0.0)
                            for r in group])
        calls = ", ".join(f"{h}: {n}" for h, n in sorted(last.host_calls.items())) or "0"
        variants = "" if len(counts) == 1 else f" (runs differ: {len(counts)} patterns)"
        table.rows.append([name, str(last.logins), f"{last.commands}{variants}", calls,
                           ms(seconds), ms(floor), ratio(seconds, floor), ms(host_side),
                           ratio(seconds - host_side, floor)])
    table.note = ("Floor = `python -c 'import paramiko, lxml'` (bare `python -c pass` for "
                  "actions that reach nothing) + group logins x (paramiko connect + login + "
                  "1 command) + host ssh calls x `ssh host true`, all medians of this run. "
                  "Counts are per single action run (DS rm: per volume). Host-side = time "
                  "inside the host ssh calls beyond `ssh host true` (the test hosts' iSCSI "
                  "stand-in: qemu-nbd, nbdfuse, loop device per login); front-end ratio = "
                  "(median - host-side) / floor, what the driver itself adds.")
    return table


# --- cp throughput ---------------------------------------------------------------------------

def lun_opts(portal: str, iqn: str) -> str:
    return (f"driver=iscsi,transport=tcp,portal={portal},target={iqn},lun={LUN},"
            f"initiator-name={FRONTEND}")


def bare_copy(ds: DsHarness, source: Path, fmt: str, extra: Sequence[str]) -> float:
    """``qemu-img convert`` of ``source`` into a fresh volume's LUN, nothing else timed."""
    size_mb = -(-source_virtual_size(source, fmt) // MIB)
    with ds.group() as group:
        group.create_volume("bare.1", size_mb)
        group.create_access("bare.1", initiator=FRONTEND)
        iqn = group.show_volume("bare.1").iqn
    done = run_timed(["qemu-img", "convert", "-n", *extra, "-f", fmt, str(source),
                      "--target-image-opts", lun_opts(ds.portal, iqn)], timeout=900)
    assert done.returncode == 0, done.stderr
    with ds.group() as group:
        group.set_online("bare.1", False)
        group.delete_volume("bare.1")
    return done.seconds


def source_virtual_size(path: Path, fmt: str) -> int:
    if fmt == "raw":
        return path.stat().st_size
    out = subprocess.run(["qemu-img", "info", "--output=json", str(path)], check=True,
                         capture_output=True, text=True, timeout=60).stdout
    import json

    return int(json.loads(out)["virtual-size"])


def local_copy(source: Path, target: Path) -> float:
    done = run_timed(["cp", "--sparse=never", str(source), str(target)], timeout=900)
    assert done.returncode == 0, done.stderr
    target.unlink()
    return done.seconds


CP_STEP_RE = {"write": re.compile(r"image written in ([0-9.]+)s"),
              "verify": re.compile(r"verification passed in ([0-9.]+)s")}


def driver_copy(ds: DsHarness, source: Path, fmt: str, steps: Samples) -> float:
    size_mb = -(-source_virtual_size(source, fmt) // MIB)
    done = ds_action(ds, "cp", cp_xml(str(source), size_mb))()
    stderr = done.stderr.decode(errors="replace")
    assert done.returncode == 0, stderr
    logged = 0.0
    for step, pattern in CP_STEP_RE.items():
        match = pattern.search(stderr)
        if match:
            logged += float(match.group(1))
            steps.add(f"{fmt} {step}", float(match.group(1)))
    steps.add(f"{fmt} other", done.seconds - logged)
    rm = ds_action(ds, "rm", ds_xml({"SOURCE": "ubuntu.42", "PATH": ""}))()
    assert rm.returncode == 0, rm.stderr
    return done.seconds


def cp_section(opts: Options) -> List[Table]:
    """DS cp against the bare qemu-img copy into the same kind of LUN and a local copy."""
    size = opts.image_mib * MIB
    samples = Samples()
    steps = Samples()
    with world(hosts=0, in_memory=True) as w:
        ds = w.ds()
        raw = w.base / "image.raw"
        with open(raw, "wb") as stream:
            for _ in range(opts.image_mib):
                stream.write(os.urandom(MIB))
        qcow2 = w.base / "image.qcow2"
        subprocess.run(["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw),
                        str(qcow2)], check=True, timeout=900)
        ratios = Samples()  # per round: whole action, write, and at the action floor, each vs bare
        for round_number in range(opts.copy_rounds):
            floor = python_floor("import paramiko, lxml") + group_login_floor(w)
            for fmt, source in (("raw", raw), ("qcow2", qcow2)):
                pair: List[Tuple[str, Callable[[], float]]] = [
                    ("bare -W -m 16", partial(bare_copy, ds, source, fmt, ["-W", "-m", "16"])),
                    ("cp", partial(driver_copy, ds, source, fmt, steps))]
                units: List[List[Tuple[str, Callable[[], float]]]] = [
                    [("local", partial(local_copy, source, w.base / "copy.out"))],
                    [("bare", partial(bare_copy, ds, source, fmt, []))],
                    pair if round_number % 2 else pair[::-1]]
                # cp and its bare copy run back to back (their ratio is taken per round);
                # no unit always follows the same other one: each round starts elsewhere
                shift = round_number % len(units)
                seconds: Dict[str, float] = {}
                for name, copy in [c for unit in units[shift:] + units[:shift] for c in unit]:
                    seconds[name] = copy()
                    samples.add(f"{fmt} {name}", seconds[name])
                bare = seconds["bare -W -m 16"]
                ratios.add(f"{fmt} cp", bare / seconds["cp"])
                ratios.add(f"{fmt} write", bare / steps.values[f"{fmt} write"][-1])
                ratios.add(f"{fmt} at floor", bare / (bare + floor))
    mb = size / 1e6
    table = Table(f"cp throughput ({opts.image_mib} MiB of random data, median of "
                  f"{opts.copy_rounds})",
                  ["image", "local cp (MB/s)", "bare qemu-img (MB/s)",
                   "bare qemu-img -W -m 16 (MB/s)", "DS cp (MB/s)",
                   "DS cp s (write / verify / other)", "cp / bare", "cp write / bare",
                   "cp / bare at floor"])
    for fmt in ("raw", "qcow2"):
        cp = samples.median(f"{fmt} cp")
        table.rows.append([
            fmt, f"{mb / samples.median(f'{fmt} local'):.0f}",
            f"{mb / samples.median(f'{fmt} bare'):.0f}",
            f"{mb / samples.median(f'{fmt} bare -W -m 16'):.0f}", f"{mb / cp:.0f}",
            f"{cp:.2f} ({steps.median(f'{fmt} write'):.2f} / "
            f"{steps.median(f'{fmt} verify'):.2f} / {steps.median(f'{fmt} other'):.2f})",
            f"{ratios.median(f'{fmt} cp'):.2f}", f"{ratios.median(f'{fmt} write'):.2f}",
            f"{ratios.median(f'{fmt} at floor'):.2f}"])
    table.note = ("Bare: `qemu-img convert -n -f FMT image --target-image-opts "
                  "driver=iscsi,...` into a new volume (only the convert timed); "
                  "`-W -m 16` are the driver's own options (always the faster bare copy). "
                  "Local: `cp --sparse=never` of the image file. DS cp: the whole action "
                  "(start-up, volume, access, write, sample verification, clean-up); write "
                  "and verify as the action logs them (verify: what runs after the write, the "
                  "image's windows are read before), other: the rest (start-up, group "
                  "commands, clean-up), each a median. Ratios are medians over the rounds of "
                  "per-round ratios, the bare `-W -m 16` copy and cp running back to back in "
                  "each round (in turn first), so that the machine's slow spells (the same "
                  "copy takes 1.4-4 s here) hit both: cp / bare = bare seconds / whole "
                  "action seconds (target >= 0.9); cp write / bare = bare seconds / the "
                  "action's write (the data path); at floor = bare / (bare + the floor of an "
                  "action that logs in once, as in the latency table: `python -c 'import "
                  "paramiko, lxml'` + paramiko connect+login+1 command, measured each round): "
                  "cp / bare if everything besides the write cost exactly that floor. Image, "
                  "copies and the group's volumes on tmpfs; each round starts with a "
                  "different copy.")
    return [table]


# --- burst -----------------------------------------------------------------------------------

def cpu_busy() -> float:
    """Seconds of CPU time the whole machine has spent busy so far (``/proc/stat``)."""
    with open("/proc/stat") as stat:
        fields = [int(value) for value in stat.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def vm_pair(tm: TmHarness, vm_id: int, host: str) -> Tuple[int, float, str]:
    """TM clone + ln of one VM on ``host``: (failures, seconds, first failure)."""
    failures = 0
    reason = ""
    started = time.perf_counter()
    for action, source, number in (("clone", "one:ubuntu.42", 0),
                                   ("ln", f"one:data.{vm_id}", 1)):
        done = tm_action(tm, action, source, f"{host}:{vm_path(vm_id, number)}", str(vm_id),
                         str(IMAGE_DS))()
        if done.returncode != 0:
            failures += 1
            reason = reason or done.stderr.decode(errors="replace").strip().splitlines()[-1]
    return failures, time.perf_counter() - started, reason


def publish_vm(tm: TmHarness, vm_id: int, host: str, lcm_state: int) -> None:
    tm.put_vm(vm_id, vm(vm_id, [image_disk(0, "ubuntu.42", 42, 16),
                                image_disk(1, f"data.{vm_id}", vm_id, 16, persistent=True)],
                        [host], lcm_state))


def undeploy(tm: TmHarness, vms: Sequence[Tuple[int, str]]) -> int:
    """Delete both disks of every VM (4 at a time); returns the failures."""
    def one(item: Tuple[int, str]) -> int:
        vm_id, host = item
        publish_vm(tm, vm_id, host, 11)
        failed = 0
        for number in (0, 1):
            done = tm_action(tm, "delete", f"{host}:{vm_path(vm_id, number)}", str(vm_id),
                             str(IMAGE_DS))()
            failed += done.returncode != 0
        return failed
    with ThreadPoolExecutor(max_workers=4) as pool:
        return sum(pool.map(one, vms))


class SessionSampler:
    """Samples the group's active CLI sessions every 2 ms (for at most 15 minutes)."""

    def __init__(self, w: World) -> None:
        self.w = w
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + 900
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.peak = max(self.peak, self.w.sim.active_sessions())
            time.sleep(0.002)

    def stop(self) -> int:
        """Stop sampling; the highest count seen."""
        self._stop.set()
        self._thread.join(5)
        return self.peak


def burst_section(opts: Options) -> List[Table]:
    """N VMs deployed at once (clone + ln each) against a group of 7 sessions."""
    table = Table("Burst: VMs deployed at once (TM clone + ln per VM, 2 hosts, group "
                  "allows 7 sessions)",
                  ["VMs", "failures", "makespan s", "one VM alone s", "ideal s",
                   "makespan / ideal", "CPU busy during burst", "max concurrent group sessions"])
    with world(hosts=2) as w:
        tm = w.tm()
        tm.make_image(42, "ubuntu", 16, 0xAB)
        next_id = 100
        for count in opts.bursts:
            vms = [(next_id + i, f"host{1 + i % 2}") for i in range(count + 1)]
            next_id += count + 1
            with tm.group() as group:
                for vm_id, host in vms:
                    group.create_volume(f"data.{vm_id}", 16)
                    publish_vm(tm, vm_id, host, 1)
            alone_failures, alone, reason = vm_pair(tm, *vms[0])
            undeploy(tm, vms[:1])
            sampler = SessionSampler(w)
            busy = cpu_busy()
            started = time.perf_counter()
            with ThreadPoolExecutor(max_workers=count) as pool:
                results = list(pool.map(lambda item: vm_pair(tm, *item), vms[1:]))
            makespan = time.perf_counter() - started
            cpu_share = (cpu_busy() - busy) / (makespan * (os.cpu_count() or 1))
            peak = sampler.stop()
            failures = sum(r[0] for r in results) + alone_failures
            reason = reason or next((r[2] for r in results if r[2]), "")
            ideal = max(alone, count * alone / 7)
            shown = f" ({reason[:90]}...)" if reason else ""
            table.rows.append([str(count), f"{failures}{shown}", f"{makespan:.2f}",
                               f"{alone:.2f}", f"{ideal:.2f}",
                               f"{makespan / ideal:.2f}", f"{cpu_share:.0%}", str(peak)])
            undeploy(tm, vms[1:])
    table.note = ("Ideal = max(one VM alone, N x one VM alone / 7): the group's 7 sessions "
                  "fully used, nothing else limiting. CPU busy = the whole machine's busy "
                  f"CPU time during the burst / (makespan x {os.cpu_count()} CPUs): near "
                  "100 % means the burst is CPU-bound here (driver start-up, ssh, the test "
                  "hosts' iSCSI stand-in, tgtd), not session-bound. The driver's own limit "
                  "is EQL_MAX_SESSIONS (default 5) group sessions per front-end.")
    return [table]


# --- scale ------------------------------------------------------------------------------------

def fill_pool(state_dir: Path, count: int) -> None:
    """``count`` volumes straight into the group's state: images, VM clones, volatile."""
    with StateStore(state_dir).transaction() as state:
        for index in range(count):
            kind = index % 4
            if kind == 0:
                name, text = f"img{index}.{index}", f"OpenNebula image {index} (img{index})"
            elif kind == 3:
                name, text = f"vm{index}-disk1", f"OpenNebula VM {index} disk 1 (volatile raw)"
            else:
                base = index - kind
                name = f"img{base}.{base}-v{index}-d0"
                text = f"OpenNebula VM {index} disk 0 (clone of img{base}.{base})"
            state.add_volume(Volume(name=name, size_mb=1024 + index % 7, description=text,
                                    thin=True))
        state.data_ops.clear()


def scale_section(opts: Options) -> List[Table]:
    """Monitor and listings against an empty pool and one with many volumes."""
    table = Table(f"Scale: a pool of {opts.scale_volumes} volumes",
                  ["measurement", "0 volumes", f"{opts.scale_volumes} volumes"])
    rows: Dict[str, List[str]] = {}
    reps = 3 if opts.quick else 5
    with world(hosts=0, iscsi=False) as w:
        tm = w.tm()
        (tm.remotes / "scripts_common.sh").write_text(SEND_TO_MONITOR)
        for filled in (False, True):
            if filled:
                fill_pool(w.sim.state_dir, opts.scale_volumes)
            results = scale_measure(w, tm, reps)
            for name, value in results.items():
                rows.setdefault(name, []).append(value)
    for name, values in rows.items():
        table.rows.append([name, *values])
    table.note = ("TM monitor with MONITOR_VM_DISKS=1 (one `volume show`, VM disk sizes to "
                  "send_to_monitor), DS monitor (`pool select ... show`) and the admin tool "
                  "(`python -m eqliscsi ... --json`, one run each, stopped after "
                  f"{ADMIN_TIMEOUT:.0f} s; `orphans` with OpenNebula's lists owning all but "
                  f"every {ORPHAN_EVERY}th image and VM of the pool, 10 orphans) "
                  "run as subprocesses (wall ms, peak RSS of the process); list_volumes in "
                  "this process (`volume show` round trip, then the parse alone, timed without "
                  "tracemalloc, and its tracemalloc peak in a separate run). Medians of "
                  f"{reps}.")
    return [table]


def scale_measure(w: World, tm: TmHarness, reps: int) -> Dict[str, str]:
    from eqliscsi import cli_commands
    from eqliscsi.cli_output import parse_volume_list

    result: Dict[str, str] = {}
    monitor = [tm_action(tm, "monitor", str(SYSTEM_DS),
                         stdin=b64(monitor_system_xml()).encode())() for _ in range(reps)]
    assert all(m.returncode == 0 for m in monitor), monitor[0].stderr
    result["TM monitor ms"] = ms(median([m.seconds for m in monitor]))
    result["TM monitor peak RSS MiB"] = f"{max(m.maxrss_kib for m in monitor) / 1024:.0f}"
    ds = w.ds()
    ds_monitor = [ds_action(ds, "monitor", ds_xml(with_image=False), 100)()
                  for _ in range(reps)]
    result["DS monitor ms"] = ms(median([m.seconds for m in ds_monitor]))
    result.update(admin_listing(w, tm))
    round_trip: List[float] = []
    parse: List[float] = []
    with tm.group() as group:
        for _ in range(reps):
            started = time.perf_counter()
            group.list_volumes()
            round_trip.append(time.perf_counter() - started)
        session = group._ready_session()
        lines = session.run(cli_commands.volume_list(), 120)
        for _ in range(reps):
            started = time.perf_counter()
            parse_volume_list(lines)
            parse.append(time.perf_counter() - started)
        tracemalloc.start()
        parse_volume_list(lines)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    result["list_volumes ms (round trip + parse)"] = ms(median(round_trip))
    result["parse_volume_list ms"] = f"{median(parse) * 1000:.1f}"
    result["parse_volume_list peak MiB (tracemalloc)"] = f"{peak / MIB:.1f}"
    result["`volume show` output lines"] = str(len(lines))
    return result


ADMIN_TIMEOUT = 60.0
ORPHAN_EVERY = 400  # fill_pool's images and VMs left out of OpenNebula's lists: 5 + 5 orphans


def admin_listing(w: World, tm: TmHarness) -> Dict[str, str]:
    """The admin tool's ``volumes``, ``orphans`` and ``volumes --details`` once each (slow
    ones stopped after ``ADMIN_TIMEOUT``)."""
    count = len(w.sim.load_state().volumes)
    images = tm.base / "images.xml"
    images.write_text("<IMAGE_POOL>" + "".join(
        image_xml(ID=str(index), SOURCE=f"img{index}.{index}") for index in range(0, count, 4)
        if index % ORPHAN_EVERY) + "</IMAGE_POOL>")
    vms = tm.base / "vms.xml"
    vms.write_text("<VM_POOL>" + "".join(
        vm_xml(str(index)) for index in range(count)
        if index % 4 and index % ORPHAN_EVERY != 1) + "</VM_POOL>")
    result: Dict[str, str] = {}
    for label, args in (("`volumes`", ["volumes"]),
                        ("`orphans`", ["orphans", "--images-xml", str(images),
                                       "--vms-xml", str(vms)]),
                        ("`volumes --details`", ["volumes", "--details"])):
        result.update(admin_run(w, tm, label, args))
    return result


def admin_run(w: World, tm: TmHarness, label: str, args: List[str]) -> Dict[str, str]:
    """``python -m eqliscsi ARGS --json`` once: wall ms, CLI commands and sessions (counted
    once the group has ended the sessions: a stopped run's last commands still run)."""
    before = len(w.sim.commands())
    done = run_timed([PY, "-m", "eqliscsi", *args, "--json", "--conf", str(tm.conf)],
                     env=tm.env(), cwd=str(Path(__file__).resolve().parent.parent),
                     timeout=ADMIN_TIMEOUT)
    w.sim.wait_sessions(0, timeout=ADMIN_TIMEOUT)
    sent = w.sim.commands()[before:]
    sessions = len({(entry["conn"], entry["session"]) for entry in sent})
    commands = f"{len(sent)} over {sessions} session{'s' * (sessions != 1)}"
    if done.returncode == 0:
        return {f"admin {label} ms": ms(done.seconds),
                f"admin {label} peak RSS MiB": f"{done.maxrss_kib / 1024:.0f}",
                f"admin {label} CLI commands": commands}
    if done.seconds >= ADMIN_TIMEOUT:
        return {f"admin {label} ms": f"> {ADMIN_TIMEOUT * 1000:.0f} (stopped)",
                f"admin {label} peak RSS MiB": f"{done.maxrss_kib / 1024:.0f}",
                f"admin {label} CLI commands": f"{commands} in {ADMIN_TIMEOUT:.0f} s"}
    reason = done.stderr.decode(errors="replace").strip().splitlines()[-1:]
    return {f"admin {label} ms": f"failed: {' '.join(reason)[:80]}"}


SECTIONS: Dict[str, Callable[[Options], List[Table]]] = {
    "actions": actions_section, "cp": cp_section, "burst": burst_section,
    "scale": scale_section}

