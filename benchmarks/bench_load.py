"""Many users and one hostile session on one server: N parallel users (the Slicer module's own
client, each with its own session) click M times with a think time between clicks, alone, together,
and together with a hostile session that keeps uploading huge volumes and flooding points. Prints
p50 / p95 per class of request (upload, first click = encoder, next click = decoder only) and the
issue-11 goals. All traffic goes to a `sam3d serve` this script starts on 127.0.0.1.

    python benchmarks/bench_load.py                          # default model, 8 users x 20 clicks
    python benchmarks/bench_load.py --model PATH --users 4 --clicks 10 --think 0.5
"""

from __future__ import annotations

import argparse
import platform
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import requests

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "SAM3DPrompt"), str(REPO / "model_server" / "tests")]  # server_helpers

from SAM3DPromptLib.client import SAM3DClient  # noqa: E402
from server_helpers import running_server  # noqa: E402

GOAL_CROWD = 3.0  # 8 users: decoder-only p95 <= 3x its single-user p95
GOAL_HOSTILE = 2.0  # the hostile session changes no other user's p95 by more than 2x
SPACING = (2.0, 0.8, 0.8)


def user_volume(shape, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    array = rng.normal(0, 20, shape)
    k, j, i = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    centre = np.asarray(shape) / 2
    array[((k - centre[0]) * 2) ** 2 + ((j - centre[1]) * 0.8) ** 2 + ((i - centre[2]) * 0.8) ** 2 < 225] += 90
    return array.astype(np.int16)


def user(url: str, shape, clicks: int, think: float, seed: int, times: dict, stop: threading.Event) -> None:
    """Upload, then click: the first click of each object runs the encoder, the rest only the decoder."""
    rng = np.random.default_rng(seed)
    with SAM3DClient(url, timeout=600) as client:
        start = time.perf_counter()
        session = client.create_session(user_volume(shape, seed), SPACING)
        times["upload"].append(time.perf_counter() - start)
        centre = np.asarray(shape, float) / 2
        for n in range(clicks):
            time.sleep(think * rng.uniform(0.5, 1.5))
            point = centre + rng.uniform(-3, 3, 3) * (1, 2, 2)
            start = time.perf_counter()
            update = client.interact(session, [point.tolist()], [int(n % 4 != 3)])
            times["first click (encoder)" if update.encoder_ran else "next click (decoder only)"].append(
                time.perf_counter() - start)
        client.delete_session(session)


def hostile(url: str, stop: threading.Event, counts: dict) -> None:
    """Huge uploads (64 MB of float32 noise, barely compressible) and 1000-point floods, until told to stop."""
    noise = zlib.compress(np.random.default_rng(9).normal(0, 1, (256, 256, 256)).astype(np.float32).tobytes(), 1)
    flood = {"points": [[8.0, 24.0, 24.0]] * 1000, "labels": [1] * 1000}
    base = {"shape": "256,256,256", "dtype": "float32", "spacing": "1,1,1"}
    with requests.Session() as http:
        while not stop.is_set():
            reply = http.post(f"{url}/v1/sessions", params=base, data=noise, timeout=600)
            counts[reply.status_code] = counts.get(reply.status_code, 0) + 1
            if reply.status_code != 201:
                continue
            session = reply.json()["session_id"]
            for _ in range(3):
                status = http.post(f"{url}/v1/sessions/{session}/interactions", json=flood, timeout=600).status_code
                counts[status] = counts.get(status, 0) + 1
            http.delete(f"{url}/v1/sessions/{session}", timeout=600)


def phase(url: str, users: int, args, with_hostile: bool) -> tuple[dict, dict]:
    times = {"upload": [], "first click (encoder)": [], "next click (decoder only)": []}
    stop, counts = threading.Event(), {}
    shape = tuple(int(v) for v in args.shape.split(","))
    threads = [threading.Thread(target=user, args=(url, shape, args.clicks, args.think, seed, times, stop))
               for seed in range(users)]
    attacker = threading.Thread(target=hostile, args=(url, stop, counts)) if with_hostile else None
    if attacker:
        attacker.start()
        time.sleep(1.0)  # the attack is under way before the users arrive
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    stop.set()
    if attacker:
        attacker.join()
    return times, counts


def percentiles(values: list[float]) -> tuple[float, float]:
    return (float(np.percentile(values, 50)) * 1000, float(np.percentile(values, 95)) * 1000) if values else (float("nan"),) * 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default")
    parser.add_argument("--users", type=int, default=8)
    parser.add_argument("--clicks", type=int, default=20)
    parser.add_argument("--think", type=float, default=1.0, help="mean seconds between a user's clicks")
    parser.add_argument("--shape", default="64,160,160", help="each user's volume, K,J,I")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    rows, p95 = [], {}
    with running_server("--model", args.model, "--device", args.device,
                        "--max-sessions", str(args.users + 4)) as url:
        for name, users, with_hostile in (("1 user", 1, False), (f"{args.users} users", args.users, False),
                                          (f"{args.users} users + hostile", args.users, True)):
            times, counts = phase(url, users, args, with_hostile)
            for kind, values in times.items():
                p50, p95[(name, kind)] = percentiles(values)
                rows.append((name, kind, len(values), p50, p95[(name, kind)]))
            if with_hostile:
                hostile_counts = counts
    print(f"machine: {platform.processor() or platform.machine()}, model {args.model}, {args.users} users x "
          f"{args.clicks} clicks, think {args.think} s, volume {args.shape}\n")
    print("| phase | request | n | p50 ms | p95 ms |\n|---|---|---|---|---|")
    for name, kind, n, p50, p95_ms in rows:
        print(f"| {name} | {kind} | {n} | {p50:.0f} | {p95_ms:.0f} |")
    decoder = "next click (decoder only)"
    crowd = p95[(f"{args.users} users", decoder)] / p95[("1 user", decoder)]
    print(f"\nhostile session's replies by status: {dict(sorted(hostile_counts.items()))}")
    print(f"goal: {args.users} users, decoder-only p95 <= {GOAL_CROWD:g}x single-user: {crowd:.2f}x "
          f"{'met' if crowd <= GOAL_CROWD else 'NOT met'}")
    for kind in ("first click (encoder)", decoder):
        ratio = p95[(f"{args.users} users + hostile", kind)] / p95[(f"{args.users} users", kind)]
        print(f"goal: hostile session changes the users' {kind} p95 by <= {GOAL_HOSTILE:g}x: {ratio:.2f}x "
              f"{'met' if ratio <= GOAL_HOSTILE else 'NOT met'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
