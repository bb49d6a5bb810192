"""End-to-end interaction speed over HTTP, as the Slicer module sees it: upload time, first-click
and next-click latency (median of N) and bytes per click reply, on a CT-sized phantom.
Prints a Markdown table.

    python benchmarks/bench_server.py                        # default model, 200 x 512 x 512
    python benchmarks/bench_server.py --model PATH --shape 100,256,256 --repeats 10
    python benchmarks/bench_server.py --server http://host:8000 --api-key KEY
    python benchmarks/bench_server.py --busy-cores 1          # beside another busy process
    python benchmarks/bench_server.py --think-ms 1500         # a pause before each next click
    python benchmarks/bench_server.py --think-ms 1500 --other-user   # beside a second user's first clicks

Without --server it starts `sam3d serve` on a free loopback port with --model / --device.
A first click lands in a part of the volume no crop has covered yet, so the server runs the
image encoder; a next click lands in the crop of the object being segmented, so it runs only
the prompt encoder and decoder. The first click at the tumour's centre, in a new session each
time, is what a user's first click on a small lesion costs: its mask is answered again on a
finer crop (``engine/crop_scale.py``), a second encoder run; the first click on the tumour's
rim (its edge voxel farthest from its centre), one whose crop the engine may centre again
inside the lesion (``engine/recentre.py``), another. That phantom's tumour is too small for its
crop to move, so a first click whose crop moves is timed as well: the evaluation protocol's
first click (seed 0) on a larger lung tumour, case 5 of the complex chest phantoms of seed 6161
(``--moved-crop-case``), answered on a crop centred inside its lesion: the costliest first
click. Each next click is undone
(untimed) before the next one so that all N measure the same situation. Reply bytes are compared with the full-volume mask as
packed bits (what a reply without a bounding box would carry before compression). Where the
model takes boxes, a 2D box on the tumour's largest slice follows, then up to N corrections
where its mask errs most (the evaluation protocol's clicks, not undone): what an annotator
correcting a box waits for. With --other-user a second client, in its own session on the same
volume, makes first clicks (the encoder) one after another, each after the same pause, while the
next clicks and corrections are timed: a server shared by two users.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import platform
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO / "SAM3DPrompt"), str(REPO / "model_server" / "tests")]  # server_helpers

from SAM3DPromptLib.client import SAM3DClient  # noqa: E402
from server_helpers import running_server  # noqa: E402

from sam3d.data.clicks import centre_click, next_click, rim_click  # noqa: E402
from sam3d.engine.choices import CLICK_PATHWAYS, SLICE_PRECISIONS  # noqa: E402
from sam3d.data.chest import generate_chest_case  # noqa: E402
from sam3d.data.phantoms import TUMOR_LABEL, case_id, case_seed, generate_case  # noqa: E402
from sam3d.evaluate.simulation import clicked_object, largest_slice_box  # noqa: E402

GOAL_FIRST_CLICK_MS = 5000.0  # the default model's budget on a 2-core CPU (a GPU's is 300 ms)
GOAL_NEXT_CLICK_MS = 150.0
GOAL_REPLY_FRACTION = 0.01


def first_click_points(shape, spacing, crop_mm: float, count: int, rng) -> list[np.ndarray]:
    """Points more than a crop apart (so none falls in a crop another one encoded)."""
    steps = [max(1, int(np.ceil(crop_mm * 1.1 / s))) for s in spacing]
    grid = np.stack(np.meshgrid(*[np.arange(st // 2, n - st // 4, st) for st, n in zip(steps, shape)],
                                indexing="ij"), axis=-1).reshape(-1, 3).astype(float)
    if len(grid) < count:
        raise SystemExit(f"the volume holds only {len(grid)} crop-separated points; use a larger --shape "
                         f"or fewer --repeats")
    return list(grid[rng.choice(len(grid), count, replace=False)])


def timed(call, *args):
    start = time.perf_counter()
    result = call(*args)
    return result, (time.perf_counter() - start) * 1000


def box_corrections(client: SAM3DClient, session: str, target: np.ndarray, spacing,
                    count: int, think_s: float = 0.0) -> tuple[float, list[float], list[int]]:
    """A 2D box on ``target``'s largest slice, then up to ``count`` corrections at the protocol's
    next click (``next_click``), each ``think_s`` after the previous reply -> (box ms, correction
    ms, model crops per correction: 0 where the 2D pathway answered)."""
    client.reset(session)
    update, box_ms = timed(client.interact, session, [], [], largest_slice_box(target))
    mask = update.apply_to(np.zeros(target.shape, dtype=bool))
    times, crops = [], []
    for _ in range(count):
        click = next_click(mask, target, spacing)
        if click is None:
            break
        time.sleep(think_s)
        update, ms = timed(client.interact, session, [click[0]], [click[1]])
        mask = update.apply_to(mask)
        times.append(ms)
        crops.append(update.crops)
    return box_ms, times, crops


@contextlib.contextmanager
def other_user(url: str, api_key: str | None, image, points: list[np.ndarray], pause_s: float):
    """A second user while the block runs: its own session on ``image`` (uploaded before the block
    starts), a first click at each of ``points`` in turn (each a new object, so the encoder
    runs), ``pause_s`` after each reply. Yields the list its click times (ms) go to."""
    times: list[float] = []
    stop = threading.Event()
    client = SAM3DClient(url, api_key=api_key, timeout=600)
    session = client.create_session(image.array, image.spacing)

    def clicks() -> None:
        for n in itertools.count():
            client.reset(session)
            times.append(timed(client.interact, session, [points[n % len(points)]], [1])[1])
            if stop.wait(pause_s):
                return

    thread = threading.Thread(target=clicks, name="other-user")
    thread.start()
    try:
        yield times
    finally:
        stop.set()
        thread.join(600)
        client.delete_session(session)
        client.close()


def run(args: argparse.Namespace, url: str) -> list[tuple[str, str]]:
    rng = np.random.default_rng(0)
    shape = tuple(int(v) for v in args.shape.split(","))
    print(f"generating a {shape} phantom ...", file=sys.stderr, flush=True)
    image, label = generate_case(args.seed, shape)
    tumor = label.array == TUMOR_LABEL
    client = SAM3DClient(url, api_key=args.api_key, timeout=600)
    caps = client.capabilities()
    model = caps["model"]
    crop_mm = model["crop_size"] * model["crop_spacing_mm"]

    upload_ms = []
    session = None
    for _ in range(args.uploads):
        if session:
            client.delete_session(session)
        session, ms = timed(client.create_session, image.array, image.spacing)
        upload_ms.append(ms)

    first_ms, first_crops, encoder_ran = [], [], []
    for point in first_click_points(shape, image.spacing, crop_mm, args.repeats, rng):
        client.reset(session)
        update, ms = timed(client.interact, session, [point], [1])
        first_ms.append(ms)
        first_crops.append(update.crops)
        encoder_ran.append(update.encoder_ran)

    client.reset(session)
    target = centre_click(tumor, image.spacing)
    tumor_ms, tumor_encode_ms, _ = timed_tumor_first_clicks(client, image, target, args.repeats)
    rim_ms, rim_encode_ms, _ = timed_tumor_first_clicks(client, image, rim_click(tumor, image.spacing), args.repeats)
    chest_seed, chest_index = args.moved_crop_case
    print(f"generating complex chest phantom {chest_index} of seed {chest_seed} ...", file=sys.stderr, flush=True)
    chest, chest_label, _ = generate_chest_case(case_seed(chest_seed, chest_index), complicated=True)
    protocol_click, _ = clicked_object(chest_label.array > 0, 0, case_id("chest-complex", chest_index))
    moved_ms, moved_encode_ms, moved_crops = timed_tumor_first_clicks(client, chest, protocol_click, args.repeats)
    client.interact(session, [target], [1])
    others = first_click_points(shape, image.spacing, crop_mm, args.repeats, np.random.default_rng(1))
    second = (other_user(url, args.api_key, image, others, args.think_ms / 1000) if args.other_user
              else contextlib.nullcontext([]))
    with second as other_ms:
        next_rows, sizes = timed_next_clicks(args, client, session, tumor, target, rng, image.spacing,
                                             "box" in caps["prompts"])
    client.delete_session(session)

    full_mask_bytes = int(np.prod(shape) + 7) // 8
    median_size = statistics.median(sizes)
    return [
        ("server", url),
        ("model", f"{model['name']} ({model['variant']}, {model['crop_size']}^3 at {model['crop_spacing_mm']} mm)"),
        ("device", caps["device"]),
        ("client machine", f"{platform.processor() or platform.machine()}, {platform.system()}"),
        ("pause before each next click or correction", f"{args.think_ms:g} ms"),
        *([("other user's first clicks meanwhile",
            f"{len(other_ms)}, median {statistics.median(other_ms):.0f} ms" if other_ms else "none")]
          if args.other_user else []),
        ("volume (k, j, i)", f"{shape[0]} x {shape[1]} x {shape[2]} int16, {image.array.nbytes / 1e6:.0f} MB"),
        ("upload, median of %d" % len(upload_ms), f"{statistics.median(upload_ms) / 1000:.2f} s"),
        (f"first click, median of {len(first_ms)}",
         f"{statistics.median(first_ms):.0f} ms (encoder ran: {sum(encoder_ran)}/{len(encoder_ran)}; "
         f"crops per click: median {statistics.median(first_crops):g}; "
         f"{goal_text(statistics.median(first_ms), GOAL_FIRST_CLICK_MS)})"),
        (f"first click on the tumour, a new session each time, median of {len(tumor_ms)}",
         f"{statistics.median(tumor_ms):.0f} ms (the server's encoder time: median "
         f"{statistics.median(tumor_encode_ms):.0f} ms; a small object's first click is answered on a "
         "second, finer crop too)"),
        (f"first click on the tumour's rim, a new session each time, median of {len(rim_ms)}",
         f"{statistics.median(rim_ms):.0f} ms (encoder: median {statistics.median(rim_encode_ms):.0f} ms; "
         "a rim click's crop may be centred again inside the lesion, engine/recentre.py)"),
        (f"first click whose crop moves (complex chest phantom {chest_seed}:{chest_index}, "
         f"{' x '.join(map(str, chest.array.shape))}, the protocol's click), a new session each time, "
         f"median of {len(moved_ms)}",
         f"{statistics.median(moved_ms):.0f} ms (encoder: median {statistics.median(moved_encode_ms):.0f} ms; "
         f"crops per click: median {statistics.median(moved_crops):g}, 2 where the crop moved; "
         f"{goal_text(statistics.median(moved_ms), GOAL_FIRST_CLICK_MS)})"),
        *next_rows.items(),
        ("full-volume mask as packed bits", f"{full_mask_bytes} B"),
        ("click reply / full mask", f"{100 * median_size / full_mask_bytes:.3f} % (goal <= "
         f"{100 * GOAL_REPLY_FRACTION:.0f} %: {'met' if median_size <= GOAL_REPLY_FRACTION * full_mask_bytes else 'NOT met'})"),
    ]


def goal_text(median_ms: float, goal_ms: float) -> str:
    """Whether a median click time meets its goal, as the table says it."""
    return f"goal <= {goal_ms:.0f} ms: {'met' if median_ms <= goal_ms else 'NOT met'}"


def seed_and_index(text: str) -> tuple[int, int]:
    """``--moved-crop-case`` SEED:INDEX -> (seed, index), or argparse's error naming the form."""
    try:
        seed, index = (int(part) for part in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SEED:INDEX such as 6161:5, got {text!r}") from None
    if index < 0:
        raise argparse.ArgumentTypeError(f"the case index must be 0 or more, got {index}")
    return seed, index


def timed_tumor_first_clicks(client: SAM3DClient, image, target: np.ndarray,
                             repeats: int) -> tuple[list[float], list[float], list[int]]:
    """The first click at ``target`` on the tumour in a new session each time (no cached crop)
    -> (round-trip ms, the server's encoder ms, crops predicted) per click."""
    round_trip, encode, crops = [], [], []
    for _ in range(repeats):
        session = client.create_session(image.array, image.spacing)
        update, ms = timed(client.interact, session, [target], [1])
        round_trip.append(ms)
        encode.append(update.timing_ms.get("encode", float("nan")))
        crops.append(update.crops)
        client.delete_session(session)
    return round_trip, encode, crops


def timed_next_clicks(args: argparse.Namespace, client: SAM3DClient, session: str, tumor: np.ndarray,
                      target: np.ndarray, rng, spacing, boxes: bool) -> tuple[dict[str, str], list[int]]:
    """Next clicks in the crop of the click at ``target`` (each undone), then, where the model
    takes boxes, a box and its corrections -> (the table's rows by name, the next clicks' reply
    bytes)."""
    next_ms, next_engine_ms, sizes, next_encoder, next_crops = [], [], [], [], []
    for n in range(args.repeats):
        point = target + rng.uniform(-2, 2, 3)
        point = np.clip(point, 0, np.asarray(tumor.shape) - 1)
        time.sleep(args.think_ms / 1000)
        update, ms = timed(client.interact, session, [point], [n % 2])
        next_ms.append(ms)
        next_engine_ms.append(update.timing_ms.get("total", float("nan")))  # the server's own engine time
        sizes.append(update.wire_bytes)
        next_encoder.append(update.encoder_ran)
        next_crops.append(update.crops)
        client.undo(session)
    info = client.session_info(session)  # the counters of the clicks above
    median_next = statistics.median(next_ms)
    rows = {
        f"next click, median of {len(next_ms)}":
            f"{median_next:.0f} ms (encoder ran: {sum(next_encoder)}/{len(next_encoder)}; crops per click: "
            f"median {statistics.median(next_crops):g}; {goal_text(median_next, GOAL_NEXT_CLICK_MS)})",
        "next click, min / max": f"{min(next_ms):.0f} / {max(next_ms):.0f} ms",
        "next click by label, median": ", ".join(
            f"{name} {statistics.median(next_ms[first::2]):.0f} ms" for first, name in ((1, "positive"), (0, "negative"))
            if next_ms[first::2]),
        "next click by label, the server's engine time, median": ", ".join(
            f"{name} {statistics.median(next_engine_ms[first::2]):.0f} ms" for first, name in ((1, "positive"), (0, "negative"))
            if next_engine_ms[first::2]),
    }
    if boxes:
        box_ms, correction_ms, correction_crops = box_corrections(client, session, tumor, spacing, args.repeats,
                                                                  args.think_ms / 1000)
        rows["2D box on the tumour's largest slice"] = f"{box_ms:.0f} ms"
        if correction_ms:
            rows[f"correction after the box, median of {len(correction_ms)}"] = (
                f"{statistics.median(correction_ms):.0f} ms (min / max {min(correction_ms):.0f} / "
                f"{max(correction_ms):.0f}; the 2D pathway answered {correction_crops.count(0)}/{len(correction_crops)})")
    rows["bytes per click reply, median / max"] = f"{statistics.median(sizes):.0f} / {max(sizes)} B"
    rows["session counters"] = f"encoder_runs {info['encoder_runs']}, decoder_runs {info['decoder_runs']}"
    return rows, sizes


@contextlib.contextmanager
def busy_cores(count: int):
    """``count`` processes that each keep a core busy until the block ends."""
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for spinner in spinners:
            spinner.kill()
            spinner.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="default", help="'default' or a checkpoint path (ignored with --server)")
    parser.add_argument("--sam-checkpoint", default=None, help="SAM's sam_vit_b_01ec64.pth, for a vit_b adapter checkpoint")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=None, help="the started server's --threads")
    parser.add_argument("--click-pathway", default="3d", choices=CLICK_PATHWAYS,
                        help="the started server's --click-pathway (default 3d)")
    parser.add_argument("--slice-precision", default="auto", choices=SLICE_PRECISIONS,
                        help="the started server's --slice-precision (default auto)")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=True,
                        help="the started server's --compile / --no-compile (default: compile, as sam3d serve does)")
    parser.add_argument("--server", default=None, help="benchmark a running server instead of starting one")
    parser.add_argument("--api-key", default=None)
    parser.add_argument("--shape", default="200,512,512", help="phantom shape K,J,I (default 200,512,512)")
    parser.add_argument("--repeats", type=int, default=20, help="clicks per median (default 20)")
    parser.add_argument("--uploads", type=int, default=3, help="uploads per median (default 3)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--moved-crop-case", type=seed_and_index, default="6161:5",
                        help="SEED:INDEX of the complex chest phantom (`sam3d phantoms --design chest-complex "
                             "--seed SEED`, case INDEX) whose first click, the evaluation protocol's at seed 0, "
                             "is answered on a moved crop (default 6161:5)")
    parser.add_argument("--think-ms", type=float, default=0.0,
                        help="pause after each reply before the next click or correction, as a reader looks at the "
                             "mask first (default 0: back to back); the server's idle work runs in it")
    parser.add_argument("--idle-prefetch", action=argparse.BooleanOptionalAction, default=True,
                        help="the started server's --idle-prefetch / --no-idle-prefetch (default: on, as sam3d serve)")
    parser.add_argument("--other-user", action="store_true",
                        help="a second client makes first clicks (encoder runs) in its own session, each --think-ms "
                             "after the last, while next clicks and corrections are timed")
    parser.add_argument("--busy-cores", type=int, default=0,
                        help="processes spinning on a core each while the clicks are timed: the machine's other "
                             "work, such as Slicer itself (default 0)")
    args = parser.parse_args()
    extra = ["--threads", str(args.threads)] if args.threads else []
    extra += ["--click-pathway", args.click_pathway, "--slice-precision", args.slice_precision,
              "--compile" if args.compile else "--no-compile",
              "--idle-prefetch" if args.idle_prefetch else "--no-idle-prefetch"]
    if args.sam_checkpoint:
        extra += ["--sam-checkpoint", args.sam_checkpoint]
    server = (contextlib.nullcontext(args.server) if args.server else
              running_server("--model", args.model, "--device", args.device, "--max-voxels", str(1 << 30), *extra))
    with server as url, busy_cores(args.busy_cores):
        rows = run(args, url)
    print("| measurement | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
