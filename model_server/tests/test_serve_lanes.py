"""The server's engine lanes (serve/lanes.py) and its listening socket: engine calls run on two
fixed threads - the main lane with torch's thread count while it is free, the side lane with one
torch thread while it is busy - and replies are not held back by Nagle's algorithm; a failed
encoder compile at start is said and served through."""

from __future__ import annotations

import socket
import threading
import time
from typing import Callable

import pytest
import torch

from sam3d.engine.predictor import IdleStep, Predictor
from sam3d.serve import lanes as lanes_module
from sam3d.serve.commands import compile_encoder, listening_socket
from sam3d.serve.lanes import EngineLanes


def where() -> tuple[str, int]:
    return threading.current_thread().name, torch.get_num_threads()


@pytest.fixture
def lanes():
    engine = EngineLanes(2)
    yield engine
    engine.shutdown()


def test_a_call_runs_on_the_main_lane_with_all_threads_while_it_is_free(lanes):
    first, second = lanes.run(where), lanes.run(where)
    assert first == second  # always the same thread: one OpenMP team
    assert first[0].startswith("sam3d-engine_") and first[1] == 2
    assert lanes.run_on_main(where) == first


def hold_main_lane(lanes: EngineLanes) -> tuple[threading.Thread, threading.Event]:
    """A call that holds the main lane until the returned event is set."""
    started, release = threading.Event(), threading.Event()

    def busy() -> None:
        started.set()
        release.wait(30)

    blocker = threading.Thread(target=lanes.run, args=(busy,))
    blocker.start()
    assert started.wait(30)
    return blocker, release


def test_a_call_arriving_while_the_main_lane_is_busy_takes_the_side_lane(lanes):
    blocker, release = hold_main_lane(lanes)
    try:
        name, threads = lanes.run(where)
    finally:
        release.set()
        blocker.join(30)
    assert name.startswith("sam3d-engine-side") and threads == 1
    assert lanes.run(where)[0].startswith("sam3d-engine_")  # free again: back on the main lane


def test_idle_work_waits_while_the_main_lane_is_wanted_and_goes_on_after(lanes):
    """Idle work given while a call holds the main lane runs once it is free (it is not
    dropped), on the main lane with all threads; a call that arrives during an idle step waits
    for it on the main lane rather than taking the side lane."""
    ran, in_step, release_step = [], threading.Event(), threading.Event()

    def step() -> IdleStep:
        ran.append(where())
        in_step.set()
        release_step.wait(30)
        return IdleStep.DONE

    blocker, release = hold_main_lane(lanes)
    try:
        lanes.run_in_idle_time("session", step)
        time.sleep(0.3)
        assert not ran and lanes.idle_work == 1  # the lane is wanted: the work waits
    finally:
        release.set()
        blocker.join(30)
    assert in_step.wait(30)  # the lane is free: the work goes on, nobody asked again
    assert ran[0][0].startswith("sam3d-engine_") and ran[0][1] == 2
    threading.Timer(0.2, release_step.set).start()  # the idle step ends a moment later
    name, threads = lanes.run(where)
    assert name.startswith("sam3d-engine_") and threads == 2
    deadline = time.monotonic() + 30
    while lanes.idle_work and time.monotonic() < deadline:
        time.sleep(0.01)
    assert lanes.idle_work == 0 and len(ran) == 1


def test_idle_work_starts_only_once_no_call_has_ended_for_a_while(lanes, monkeypatch):
    """A client clicking back to back must not wait behind idle work: it starts only
    ``IDLE_AFTER_S`` after the last engine call ended."""
    monkeypatch.setattr(lanes_module, "IDLE_AFTER_S", 0.5)
    started, ran = threading.Event(), []

    def step() -> IdleStep:
        ran.append(time.monotonic())
        started.set()
        return IdleStep.DONE

    lanes.run(where)
    ended = time.monotonic()
    lanes.run_in_idle_time("session", step)
    assert started.wait(30)
    assert ran[0] - ended >= 0.45


def test_idle_time_steps_run_until_there_is_nothing_left(lanes):
    calls, done = [], threading.Event()

    def step() -> IdleStep:
        calls.append(where()[0])
        if len(calls) == 3:
            done.set()
        return IdleStep.MORE if len(calls) < 3 else IdleStep.DONE

    lanes.run_in_idle_time("session", step)
    assert done.wait(30)
    time.sleep(0.2)
    assert len(calls) == 3 and all(name.startswith("sam3d-engine_") for name in calls)


def test_idle_work_that_found_something_busy_goes_on_when_the_next_call_ends(lanes, monkeypatch):
    """A step that says BUSY (its session or the encoder was in use) is tried again as soon as
    an engine call ends, on either lane - not after the fallback wait."""
    monkeypatch.setattr(lanes_module, "BUSY_RETRY_S", 60.0)
    outcomes, calls, again = [IdleStep.BUSY, IdleStep.DONE], [], threading.Event()

    def step() -> IdleStep:
        calls.append(time.monotonic())
        if len(calls) == 2:
            again.set()
        return outcomes[len(calls) - 1]

    lanes.run_in_idle_time("session", step)
    deadline = time.monotonic() + 30
    while not calls and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)
    assert len(calls) == 1  # busy: not retried in a loop
    lanes.run(where)  # an engine call ends
    assert again.wait(10) and len(calls) == 2


def test_newer_idle_work_replaces_a_sessions_older_work_and_goes_first(lanes):
    order, done = [], threading.Event()

    def step(name: str) -> Callable[[], IdleStep]:
        def run() -> IdleStep:
            order.append(name)
            if len(order) == 2:
                done.set()
            return IdleStep.DONE
        return run

    blocker, release = hold_main_lane(lanes)
    try:
        lanes.run_in_idle_time("a", step("a, first interaction"))
        lanes.run_in_idle_time("b", step("b"))
        lanes.run_in_idle_time("a", step("a, second interaction"))
    finally:
        release.set()
        blocker.join(30)
    assert done.wait(30)
    time.sleep(0.2)
    assert order == ["a, second interaction", "b"]


def test_a_failing_call_raises_in_the_caller_and_frees_its_lane(lanes):
    def fail() -> None:
        raise ValueError("bad click")

    with pytest.raises(ValueError, match="bad click"):
        lanes.run(fail)
    assert lanes.run(where)[0].startswith("sam3d-engine_")


def test_the_listening_socket_hands_out_connections_without_nagle_delay():
    with listening_socket("127.0.0.1", 0) as server:
        with socket.create_connection(server.getsockname()[:2]) as client:
            accepted, _ = server.accept()
            with accepted:
                assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


def test_a_compile_that_fails_is_said_and_the_server_goes_on_uncompiled(tiny_model, capsys):
    """`sam3d serve --compile` (the default) on an encoder that cannot be compiled: a warning that
    names the error and the way out, and "no" for the start-up line - never a server that does
    not start. (A real missing compiler, CXX=/nonexistent/g++ with an empty torch cache, fails
    the same way after about 30 s of tracing: InductorError, InvalidCxxCompiler.)"""
    predictor = Predictor.load(str(tiny_model), device="cpu")
    assert not predictor.compilable  # the tiny model has no TinyViT: compile_encoder raises
    assert compile_encoder(predictor) == "no"
    warning = capsys.readouterr().err
    assert "could not compile the encoder (ValueError: only a lite model's encoder" in warning
    assert "running it uncompiled" in warning and "--no-compile" in warning
    assert predictor.warm_up() > 0  # and the model still runs


def test_creating_the_app_runs_the_encoder_only_on_the_main_lane(tiny_model, lanes):
    """The app measures a crop's cached features with one encoder run; on any other thread that
    run would start a second OpenMP team beside the main lane's (docs/BENCHMARKS.md, "Torch work
    at the server's start off the main lane")."""
    from sam3d.serve.app import create_app

    predictor = Predictor.load(tiny_model, device="cpu")
    encode, threads = predictor.encode, []
    predictor.encode = lambda image: threads.append(where()[0]) or encode(image)  # records, then runs it
    create_app(predictor, lanes=lanes)
    assert threads and all(name.startswith("sam3d-engine_") for name in threads)
