"""The one process supervisor (devstack.process) and the polling it uses (devstack.poll): what
a person debugging a failed stack sees, and that nothing outlives a stop, a failing block or
a SIGKILLed harness."""

from __future__ import annotations

import io
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from devstack.poll import eventually, wait_until
from devstack.process import NotReady, Process, ProcessDied, alive, group_members, work_dir


def _python(code: str) -> list[str]:
    return [sys.executable, "-c", textwrap.dedent(code)]


def _read_pid(path: Path) -> int:
    wait_until(lambda: path.is_file() and path.read_text().strip(), timeout_s=10, what=str(path))
    return int(path.read_text())


#: A child that starts a grandchild which ignores SIGTERM and then writes its own pid (so the
#: test knows SIGTERM can no longer stop it), and sleeps.
FAMILY = """
    import subprocess, sys, time
    GRANDCHILD = (
        "import os, signal, sys, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(60)"
    )
    subprocess.Popen([sys.executable, "-c", GRANDCHILD, sys.argv[1]])
    print("family started", flush=True)
    time.sleep(60)
"""


def test_readiness_timeout_names_the_process_what_it_waited_for_and_its_log_tail(
    tmp_path: Path,
) -> None:
    code = "import time; print('listening on nothing yet', flush=True); time.sleep(60)"
    with Process("slow-server", _python(code), log_path=tmp_path / "slow.log") as proc:
        wait_until(lambda: "listening" in proc.log_text(), timeout_s=10)
        started = time.monotonic()
        with pytest.raises(NotReady) as refused:
            proc.wait_ready(lambda: False, what="GET /healthz", timeout_s=0.5)
        assert 0.5 <= time.monotonic() - started < 5
        assert proc.running()  # a timeout reports; stopping is the caller's (here: the with)
    message = str(refused.value)
    assert "slow-server not ready within 0.5 s (GET /healthz)" in message
    assert "listening on nothing yet" in message
    assert str(tmp_path / "slow.log") in message


def test_a_crashed_child_is_reported_with_its_status_and_last_lines(tmp_path: Path) -> None:
    code = "import sys; print('config file not found: /nowhere', flush=True); sys.exit(3)"
    with Process("model-server", _python(code), log_path=tmp_path / "m.log") as proc:
        with pytest.raises(ProcessDied) as died:
            proc.wait_ready(lambda: False, what="/v1/models", timeout_s=30)
        assert proc.returncode == 3
        with pytest.raises(ProcessDied):
            proc.check_running()
    assert "model-server exited with status 3" in str(died.value)
    assert "config file not found: /nowhere" in str(died.value)


def test_probe_errors_count_as_not_yet(tmp_path: Path) -> None:
    calls: list[int] = []

    def probe() -> bool:
        calls.append(1)
        if len(calls) < 3:
            raise ConnectionRefusedError("not listening yet")
        return True

    with Process("s", _python("import time; time.sleep(60)"), log_path=tmp_path / "s.log") as p:
        assert p.wait_ready(probe, what="a probe", timeout_s=10) < 5
    assert len(calls) == 3


def test_stop_kills_the_whole_group_even_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    proc = Process("family", [*_python(FAMILY), str(pid_file)], log_path=tmp_path / "f.log")
    proc.start()
    grandchild = _read_pid(pid_file)
    assert proc.pid is not None
    assert sorted(group_members(proc.pid)) == sorted([proc.pid, grandchild])
    started = time.monotonic()
    assert proc.stop(grace_s=5) == -signal.SIGTERM
    assert time.monotonic() - started < 5  # the leader obeyed SIGTERM: no grace wait
    wait_until(lambda: not alive(grandchild), timeout_s=5, what="the grandchild to die")
    assert group_members(proc.pid) == []
    assert "family started" in proc.log_text()  # the log outlives the process
    assert proc.stop() == -signal.SIGTERM  # idempotent


def test_a_leader_that_ignores_sigterm_gets_sigkill_after_the_grace(tmp_path: Path) -> None:
    code = """
        import signal, time
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("ignoring SIGTERM", flush=True)
        time.sleep(60)
    """
    with Process("stubborn", _python(code), log_path=tmp_path / "s.log") as proc:
        wait_until(lambda: "ignoring" in proc.log_text(), timeout_s=10)
        started = time.monotonic()
        assert proc.stop(grace_s=0.5) == -signal.SIGKILL
        assert 0.5 <= time.monotonic() - started < 5


def test_nothing_is_left_after_a_failing_block(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    seen: dict[str, int] = {}
    said = io.StringIO()
    with (  # noqa: PT012 - the whole block is what fails
        pytest.raises(RuntimeError, match="the test failed"),
        work_dir("rolegate-test-process-", out=said) as kept,
        Process("family", [*_python(FAMILY), str(pid_file)], log_path=kept / "f.log") as proc,
    ):
        assert proc.pid is not None
        seen |= {"leader": proc.pid, "grandchild": _read_pid(pid_file)}
        raise RuntimeError("the test failed")
    assert not alive(seen["leader"])
    wait_until(lambda: not alive(seen["grandchild"]), timeout_s=5, what="the grandchild")
    assert group_members(seen["leader"]) == []
    # What failed keeps its logs, disowned so that no later sweep removes them.
    assert (kept / "f.log").is_file()
    assert not (kept / "owner.pid").exists()
    assert said.getvalue() == f"  logs kept in {kept}\n"
    shutil.rmtree(kept)


def test_a_work_dir_that_ended_well_or_by_ctrl_c_is_removed() -> None:
    with work_dir("rolegate-test-process-") as fine:
        (fine / "x.log").write_text("x")
    assert not fine.exists()
    with pytest.raises(KeyboardInterrupt), work_dir("rolegate-test-process-") as interrupted:
        raise KeyboardInterrupt
    assert not interrupted.exists()


def test_a_work_dir_asked_to_keep_is_kept_and_said_so() -> None:
    said = io.StringIO()
    with work_dir("rolegate-test-process-", keep=True, out=said) as kept:
        (kept / "x.log").write_text("x")
    assert (kept / "x.log").read_text() == "x"
    assert not (kept / "owner.pid").exists()  # never swept
    assert said.getvalue() == f"  logs kept in {kept}\n"
    shutil.rmtree(kept)


def test_a_sigkilled_harness_takes_its_processes_with_it(tmp_path: Path) -> None:
    harness = f"""
        import sys, time
        from pathlib import Path
        sys.path.insert(0, {str(Path(__file__).resolve().parents[2])!r})
        from devstack.process import Process
        child = Process("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"],
                        log_path=Path({str(tmp_path / "sleeper.log")!r}))
        child.start()
        print(child.pid, flush=True)
        time.sleep(60)
    """
    with subprocess.Popen(_python(harness), stdout=subprocess.PIPE, text=True) as parent:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert alive(child)
        parent.kill()  # SIGKILL: no clean-up runs in the harness
        parent.wait()
    wait_until(lambda: not alive(child), timeout_s=5, what="the orphan to be killed")


def test_pipes_carry_a_line_protocol(tmp_path: Path) -> None:
    code = "import sys\nfor line in sys.stdin: print(line.strip().upper(), flush=True)"
    with Process("echo", _python(code), log_path=tmp_path / "e.log", pipes=True) as proc:
        proc.stdin.write("hello\n")
        proc.stdin.flush()
        assert proc.stdout.readline() == "HELLO\n"
        proc.stdin.close()
        assert proc.wait_exit(10) == 0


def test_wait_until_says_what_it_waited_for() -> None:
    with pytest.raises(TimeoutError, match=r"timed out after 0.2 s waiting for the moon"):
        wait_until(lambda: False, timeout_s=0.2, what="the moon", poll_s=0.01)
    with pytest.raises(ZeroDivisionError):  # not tolerated: raised at once
        wait_until(lambda: 1 / 0, timeout_s=5)


async def test_eventually_awaits_async_checks_and_calls_plain_ones() -> None:
    count = 0

    async def check() -> bool:
        nonlocal count
        count += 1
        return count >= 3

    await eventually(check, timeout_s=5, poll_s=0.001)
    assert count == 3
    await eventually(lambda: True, timeout_s=0.1)
    with pytest.raises(TimeoutError, match="waiting for a reload"):
        await eventually(lambda: False, timeout_s=0.05, poll_s=0.01, what="a reload")


def test_a_stopped_process_starts_again_and_its_log_keeps_both_runs(tmp_path: Path) -> None:
    code = "import os, time; print('run', os.getpid(), flush=True); time.sleep(60)"
    proc = Process("restartable", _python(code), log_path=tmp_path / "r.log")
    with proc:
        first = proc.pid
        wait_until(lambda: f"run {first}" in proc.log_text(), timeout_s=10)
        with pytest.raises(RuntimeError, match="restartable is running"):
            proc.start()
    proc.kill()  # what a fault test does; harmless once stopped
    with proc:
        assert proc.running()
        assert proc.pid != first
        second = proc.pid
        wait_until(lambda: f"run {second}" in proc.log_text(), timeout_s=10)
    assert f"run {first}" in proc.log_text()


#: ``devstack up`` in miniature: say READY, then wait for Ctrl-C or SIGTERM, then say so.
WAITER = """
    import signal
    from devstack.process import sigterm_raises_interrupt, wait_for_interrupt
    # Ctrl-C as in a terminal: a shell starts background jobs (CI's) with SIGINT ignored
    signal.signal(signal.SIGINT, signal.default_int_handler)
    with sigterm_raises_interrupt():
        try:
            print("READY", flush=True)
            wait_for_interrupt()
        except KeyboardInterrupt:
            print("stopped", flush=True)
"""


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_right_after_ready_ends_the_wait(sig: signal.Signals) -> None:
    # The signal is sent the moment READY is read: it lands while the waiter is still on its
    # way into the wait, or in it; either way the waiter stops within its poll (0.25 s).
    for _ in range(8):
        proc = subprocess.Popen(
            _python(WAITER), stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[2]
        )
        assert proc.stdout is not None
        try:
            assert proc.stdout.readline() == "READY\n"
            proc.send_signal(sig)
            assert proc.wait(timeout=5) == 0
            assert proc.stdout.read() == "stopped\n"
        finally:
            proc.kill()
            proc.wait()
            proc.stdout.close()


def test_terminate_then_stop_sends_one_sigterm_and_waits_for_the_graceful_exit(
    tmp_path: Path,
) -> None:
    # As Kubernetes' components do: the first SIGTERM starts a graceful stop, a second
    # one exits at once with status 1.
    code = """
        import os, signal, sys, time
        seen = []
        def on_term(*_):
            if seen:
                os._exit(1)
            seen.append(1)
        signal.signal(signal.SIGTERM, on_term)
        print("up", flush=True)
        while not seen:
            time.sleep(0.01)
        print("stopping", flush=True)
        time.sleep(0.5)  # the graceful part
        sys.exit(0)
    """
    proc = Process("graceful", _python(code), log_path=tmp_path / "g.log")
    with proc:
        wait_until(lambda: "up" in proc.log_text(), timeout_s=10)
        proc.terminate()
        wait_until(lambda: "stopping" in proc.log_text(), timeout_s=10)
        assert proc.stop(grace_s=5) == 0
