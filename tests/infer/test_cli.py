"""`vggt.infer` in this process: images found in frame order, bad input refused with exit
status 2 and one line naming the problem (before any model work), bf16 cast with offload
close to fp32, and one clear line when torchrun stops a rank."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist

from profiling.estimate import main as estimator_main
from tests.support.configs import SMALL_VGGT
from tests.support.infer_inputs import (
    SIZE,
    environment,
    write_images,
    write_inputs,
)
from vggt.infer import cli, failures, main, memory_check, outputs
from vggt.infer.errors import InputError
from vggt.infer.inputs import find_images
from vggt.infer.memory_check import RunShape, plan_memory, refusal
from vggt.infer.options import parse_options
from vggt.models.architecture import VGGT_1B
from vggt.parallel.group import CollectiveError, collective
from vggt.precision import get_precision
from vggt.utils.load_fn import ContentBox

EXIT_BAD_INPUT = 2


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return write_inputs(tmp_path_factory.mktemp("infer_cli"))


def run_main(inputs: dict[str, Path], *extra: str, images: str | None = None) -> int:
    """main() on the test images (or `images`) into a fresh folder, on the CPU."""
    out = inputs["root"] / f"out{time.monotonic_ns()}"
    arguments = [images or str(inputs["images"]), "--out", str(out), "--device", "cpu"]
    defaults = ["--checkpoint", str(inputs["checkpoint"]), "--size", SIZE, "--quiet"]
    return main([*arguments, *defaults, *extra])


def assert_refused(capsys: pytest.CaptureFixture, status: int, *words: str) -> None:
    """Exit status 2 and one line on stderr holding `words`."""
    assert status == EXIT_BAD_INPUT
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    for word in words:
        assert word in lines[0], lines[0]


def test_images_from_folders_globs_and_files_in_name_order(tmp_path: Path) -> None:
    folder = write_images(tmp_path / "images")
    other = write_images(tmp_path / "other")
    found = find_images(
        [str(folder / "c.png"), str(folder), str(other / "*.png"), str(folder / "a.png")]
    )
    names = [(path.parent.name, path.name) for path in found]
    assert names == [
        ("images", "a.png"),
        ("other", "a.png"),
        ("images", "b.JPG"),
        ("images", "c.png"),
        ("other", "c.png"),
        ("images", "d.webp"),
    ]
    with pytest.raises(InputError, match="not an image"):
        find_images([str(folder / "notes.txt")])


def test_cast_and_offload_run_close_to_fp32(inputs: dict[str, Path]) -> None:
    results = {}
    for name, extra in {"fp32": [], "bf16": ["--precision", "bf16"]}.items():
        out = inputs["root"] / name
        arguments = [str(inputs["images"]), "--out", str(out), "--device", "cpu", "--quiet"]
        options = ["--checkpoint", str(inputs["checkpoint"]), "--size", SIZE, "--offload"]
        assert main([*arguments, *options, *extra]) == 0
        with np.load(out / "frames" / "000001.npz") as frame:
            results[name] = frame["depth"]
        run = json.loads((out / "run.json").read_text())
        assert run["precision"] == name
    error = np.linalg.norm(results["bf16"] - results["fp32"]) / np.linalg.norm(results["fp32"])
    assert 0 < error < 1e-2, error


def test_no_images(inputs: dict[str, Path], capsys: pytest.CaptureFixture) -> None:
    empty = inputs["root"] / "empty"
    empty.mkdir()
    assert_refused(capsys, run_main(inputs, images=str(empty)), "no images found")
    missing = str(inputs["root"] / "absent")
    assert_refused(capsys, run_main(inputs, images=missing), "no such image", missing)


@pytest.mark.parametrize("damage", ["garbage", "truncated"])
def test_unreadable_image_is_named(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, damage: str
) -> None:
    folder = write_images(inputs["root"] / f"damaged-{damage}")
    broken = folder / "b.JPG"
    data = broken.read_bytes()
    broken.write_bytes(b"not an image at all" if damage == "garbage" else data[: len(data) // 3])
    status = run_main(inputs, images=str(folder))
    assert_refused(capsys, status, "cannot read image", str(broken))


def test_checkpoint_missing_or_mismatched(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    missing = str(inputs["root"] / "absent" / "model.pt")
    assert_refused(capsys, run_main(inputs, "--checkpoint", missing), "no checkpoint at", missing)
    state = {"aggregator.camera_token": torch.zeros(1, 2, 1, 32), "extra.weight": torch.zeros(1)}
    path = inputs["root"] / "model.pt"
    torch.save(state, path)
    config = inputs["root"] / "small.json"
    config.write_text(json.dumps(SMALL_VGGT))
    status = run_main(inputs, "--checkpoint", str(path), "--config", str(config))
    assert_refused(capsys, status, "does not match", "missing", "1 unexpected (extra.weight)")
    # a bare model.pt is taken for VGGT-1B: the small weights are of another shape
    torch.save({"aggregator.camera_token": torch.zeros(1, 2, 1, 32)}, path)
    status = run_main(inputs, "--checkpoint", str(path))
    assert_refused(capsys, status, "VGGT-1B", "aggregator.camera_token [1, 2, 1, 32] for")


def test_offline_hub_id_is_refused(inputs: dict[str, Path], tmp_path: Path) -> None:
    command = [sys.executable, "-m", "vggt.infer", str(inputs["images"]), "--out"]
    command += [str(tmp_path / "out"), "--checkpoint", "nobody/no-such-model", "--device", "cpu"]
    env = {**environment(), "HF_HOME": str(tmp_path / "hf")}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
    assert completed.returncode == EXIT_BAD_INPUT
    assert completed.stderr.startswith("vggt.infer: no checkpoint nobody/no-such-model: ")
    assert "the hub cannot be reached" in completed.stderr
    assert len(completed.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("writer", [[], ["--single-writer"]])
def test_unwritable_output_folder(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, writer: list[str]
) -> None:
    blocker = inputs["root"] / "a-file"
    blocker.write_text("")
    out = str(blocker / "out")
    arguments = [str(inputs["images"]), "--out", out, "--device", "cpu", *writer]
    status = main([*arguments, "--checkpoint", str(inputs["checkpoint"]), "--size", SIZE])
    assert_refused(capsys, status, "cannot create output folder", out)


def test_pickled_checkpoint_is_refused(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    path = inputs["root"] / "pickled.pt"
    torch.save({"weights": Path("anything")}, path)
    status = run_main(inputs, "--checkpoint", str(path))
    assert_refused(capsys, status, "cannot load checkpoint", "Weights only load failed")


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("1,2,3\n4,5,6\n", ["must be [N, 2]", "(2, 3)"]),
        ("1,2\nthree,4\n", ["could not convert"]),
        ("", ["must be [N, 2]"]),
        ("10,20\n500,20\n", ["query point 1 (500, 20) lies outside the first frame, 140x112"]),
    ],
)
def test_malformed_query_points(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, text: str, words: list[str]
) -> None:
    path = inputs["root"] / "points.txt"
    path.write_text(text)
    assert_refused(capsys, run_main(inputs, "--query-points", str(path)), *words)


def small_run(frames: int, world_size: int, **changes: object) -> RunShape:
    """A run of the test checkpoint's architecture at 56x56, offloaded, in bf16."""
    settings = {
        "architecture": VGGT_1B.with_config(SMALL_VGGT),
        "precision": get_precision("bf16"),
        "attention": "ulysses",
        "offload": True,
        "query_points": 0,
        **changes,
    }
    return RunShape(frames, world_size, 56, 56, **settings)


def test_memory_refusal_names_the_frames_that_fit() -> None:
    # offloaded and in bf16 already: the refusal tries no other options (fewer fake passes)
    frames, ranks = 8, 2
    run = small_run(frames, ranks)
    model = run.model()
    needed = plan_memory(run, None, model).per_rank_bytes
    plan = plan_memory(run, needed - 1, model)
    assert plan.fits is False and plan.per_rank_bytes == needed
    problem = refusal(plan, run, model)
    assert "--no-estimate runs anyway" in problem
    most = int(re.search(r"at most (\d+) frames fit 2 rank", problem).group(1))
    assert 0 < most < frames
    assert plan_memory(small_run(most, ranks), None).per_rank_bytes <= needed - 1
    assert f"try {-(-frames // (most // ranks))} ranks" in problem


def test_expandable_segments_are_refused_before_a_cuda_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "expandable_segments:True")
    monkeypatch.setattr(memory_check, "least_usable_memory", lambda ranks: 80 << 30)
    options = parse_options(["images", "--out", "out"])
    message = "without expandable segments, but PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True"
    with pytest.raises(InputError, match=message):
        memory_check.check_memory(options, None, None)
    options = parse_options(["images", "--out", "out", "--no-estimate"])
    assert memory_check.check_memory(options, None, None) is None


def test_the_precision_options_and_their_earlier_form() -> None:
    def precision(*extra: str) -> str:
        return parse_options(["x.png", "--out", "o", "--device", "cpu", *extra]).precision.label

    assert precision() == "fp32"
    assert precision("--precision", "autocast") == "autocast"
    assert precision("--dtype", "bf16", "--dtype-mode", "cast") == "bf16"
    assert precision("--dtype", "bf16") == "autocast"


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--precision", "bf16", "--dtype", "bf16"], "--precision replaces --dtype"),
        (["--world-size", "2"], "--world-size only apply with --dry-run"),
        (["--dry-run", "--device-memory", "lots"], "not a memory size"),
    ],
)
def test_bad_precision_and_dry_run_options(
    extra: list[str], message: str, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        parse_options(["x.png", "--out", "o", "--device", "cpu", *extra])
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def write_config(path: Path) -> Path:
    """The small VGGT's constructor arguments as a --config file."""
    path.write_text(json.dumps(SMALL_VGGT))
    return path


def test_dry_run_loads_nothing_and_answers_as_the_estimator(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    config = write_config(inputs["root"] / "small.json")
    out = inputs["root"] / "never-written"
    argv = [str(inputs["images"]), "--out", str(out), "--config", str(config), "--size", "56"]
    argv += ["--precision", "bf16", "--world-size", "2", "--checkpoint", "no/such-checkpoint"]

    def dry_run(*extra: str) -> dict:
        assert main([*argv, "--dry-run", "--json", *extra]) == 0
        return json.loads(capsys.readouterr().out)

    alone = dry_run()
    assert alone["max_frames"] is None and alone["fits"] is None
    # A memory a little over what 4 frames need: the answer is a few frames, found in a few
    # small passes.
    memory = str(alone["per_rank_bytes"] + (6 << 20))
    document = dry_run("--device-memory", memory)
    assert not out.exists()
    assert (document["frames"], document["world_size"], document["precision"]) == (4, 2, "bf16")
    assert document["per_rank_bytes"] == document["estimate"]["required_bytes"]
    assert document["fits"] is True
    assert document["max_frames"] >= 4 and document["max_frames"] % 2 == 0
    estimator = ["--preset", "tiny", "--component", "model", "--variants", "optimized"]
    estimator += ["--precision", "bf16", "--world-size", "2", "--device-memory", memory]
    estimator += ["--height", "56", "--width", "56", "--frames", "4", "--json"]
    assert estimator_main(estimator) == 0
    (entry,) = json.loads(capsys.readouterr().out)["variants"]
    assert entry["max_frames"] == document["max_frames"]
    assert entry["estimates"][0]["required_bytes"] == document["per_rank_bytes"]


def test_dry_run_plans_the_nodes_and_the_gpu_named(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    config = write_config(inputs["root"] / "small.json")
    argv = [str(inputs["images"]), "--out", "o", "--config", str(config), "--size", "56"]
    argv += ["--dry-run", "--json", "--device", "cpu", "--world-size", "4"]

    def planned(*extra: str) -> dict:
        assert main([*argv, *extra]) == 0
        return json.loads(capsys.readouterr().out)

    one_node = planned()
    two_nodes = planned("--ranks-per-node", "2", "--gpu", "NVIDIA H200")
    # The small model has 2 heads: 4 ranks on one node need a ring; 2 nodes of 2 the hybrid.
    assert (one_node["attention"], two_nodes["attention"]) == ("ring", "hybrid")
    assert "stated rates for H200" in two_nodes["forward"]["source"]
    # Per rank and block the hybrid sends (4 * 1/2 + 2 * 1) / 4 of the tokens, ring 2 * 3/4.
    ratio = two_nodes["forward"]["exchange_seconds"] / one_node["forward"]["exchange_seconds"]
    assert ratio == pytest.approx(1 / 1.5)
    with pytest.raises(SystemExit):
        main([*argv, "--ranks-per-node", "5"])
    assert "--ranks-per-node must be between 1 and the world size" in capsys.readouterr().err


def test_dry_run_prints_the_requirement_and_the_fit(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture
) -> None:
    config = write_config(inputs["root"] / "small.json")
    argv = [str(inputs["images"]), "--out", "o", "--config", str(config), "--size", "56"]
    assert main([*argv, "--dry-run", "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    assert "4 frames over 1 rank(s), precision fp32" in text
    assert "device memory not known: give --device-memory" in text
    assert main([*argv, "--dry-run", "--device-memory", "1MiB", "--device", "cpu"]) == 0
    assert (
        "does not fit 0.00 GiB per GPU; at most 0 frames fit 1 rank(s)" in capsys.readouterr().out
    )


def test_too_many_ranks(
    inputs: dict[str, Path], capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    handler = signal.getsignal(signal.SIGTERM)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "5")
    try:
        # Found before the process group exists: each rank reports it, naming itself.
        assert_refused(capsys, run_main(inputs), "rank 0: 4 frames for 5 ranks")
        monkeypatch.setenv("WORLD_SIZE", "3")
        status = run_main(inputs, "--attention", "ulysses")
        assert_refused(capsys, status, "rank 0: ulysses", "at most 2 ranks, not 3", "ring")
    finally:
        signal.signal(signal.SIGTERM, handler)


def run_watch(lines: str, tmp_path: Path) -> subprocess.CompletedProcess:
    """A process that starts rank 0's Watch of 2 ranks (store: a FileStore under `tmp_path`),
    then runs `lines`; it must end by the watch's line within a minute."""
    script = (
        "import os, signal, time\n"
        "import torch.distributed as dist\n"
        "from vggt.infer.failures import Watch\n"
        f"store = dist.FileStore({str(tmp_path / 'store')!r}, 2)\n"
        "watch = Watch(0, 2, timeout_s=2)\n" + lines + "time.sleep(60)\n"
    )
    return subprocess.run(
        [sys.executable, "-c", script], env=environment(), capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip


def test_sigterm_is_taken_by_the_watch_thread(tmp_path: Path) -> None:
    completed = run_watch("os.kill(os.getpid(), signal.SIGTERM)\n", tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.strip() == (
        "vggt.infer: rank 0 stopped: another rank failed or did not answer in time (torchrun "
        "stopped the run)"
    )


def test_a_failure_another_rank_reported_is_named(tmp_path: Path) -> None:
    lines = "store.set('vggt.infer/failed', '1\\tRuntimeError: boom')\nwatch.attach(store)\n"
    completed = run_watch(lines, tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.strip() == (
        "vggt.infer: rank 0 stopped: rank 1 failed (RuntimeError: boom)"
    )


def test_a_rank_whose_heartbeat_stops_is_named_after_half_the_timeout(tmp_path: Path) -> None:
    completed = run_watch("watch.attach(store)\n", tmp_path)
    assert completed.returncode == 1
    assert re.fullmatch(
        r"vggt\.infer: rank 0 stopped: rank 1 has not answered for [12] s \(stopped or hung\)",
        completed.stderr.strip(),
    ), completed.stderr


def test_this_ranks_own_failure_is_written_for_the_others(tmp_path: Path) -> None:
    lines = "watch.attach(store)\nwatch.failed(ValueError('bad value'))\n"
    completed = run_watch(lines, tmp_path)
    assert completed.returncode == 1
    assert completed.stderr.strip() == "vggt.infer: rank 0 failed: ValueError: bad value"
    store = dist.FileStore(str(tmp_path / "store"), 2)
    assert store.get("vggt.infer/failed") == b"0\tValueError: bad value"


class TwoRanks:
    """Rank 0 of two as `unshared_folder` and `different_inputs` see it: rank 1's answers are
    `others(value)`."""

    world_size, rank, is_first = 2, 0, True

    def __init__(self, others) -> None:
        self.others = others

    def all_gather(self, value: object) -> list:
        return [value, self.others(value)]

    def barrier(self) -> None:
        pass


def test_ranks_that_read_other_images_are_refused(tmp_path: Path) -> None:
    images = write_images(tmp_path / "images")
    paths = find_images([str(images)])
    same = cli.inputs_fingerprint(paths)
    assert cli.different_inputs([same, same, same]) is None
    other = cli.inputs_fingerprint(paths[:-1])
    reordered = cli.inputs_fingerprint(paths[::-1])
    assert other != same != reordered
    problem = cli.different_inputs([same, other, same, reordered])
    assert problem.startswith("ranks [1, 3] found other images than rank 0")


def test_an_output_folder_other_ranks_cannot_see_is_refused(tmp_path: Path) -> None:
    shared = TwoRanks(lambda value: value)
    assert cli.unshared_folder(shared, tmp_path) is None
    blind = TwoRanks(lambda value: False if isinstance(value, bool) else value)
    problem = cli.unshared_folder(blind, tmp_path)
    assert problem.startswith(f"the output folder {tmp_path} is not shared: ranks [1] cannot")
    assert not list(tmp_path.iterdir())


def test_frames_per_round_keep_rank_0_within_the_budget() -> None:
    assert cli.frames_per_round(1000, 2, 100) == 5
    assert cli.frames_per_round(999, 2, 100) == 4
    assert cli.frames_per_round(100, 4, 100) == 1  # a frame from each rank, even over budget
    frame = 518 * 518 * 6 * 4  # depth, world_points (3) and two confidences in fp32
    assert cli.frames_per_round(cli.ROUND_BYTES, 8, frame) == 10


class FirstOfTwo:
    """Rank 0 of two whose rank 1 holds rank 0's first frames: a gather returns the frames
    rank 0 sends, then the first of them again, as many as rank 1 sends."""

    world_size, rank, is_first = 2, 0, True

    def __init__(self) -> None:
        self.sizes: list[list[int]] = []

    def gather_frames(self, local: torch.Tensor, counts: list[int]) -> torch.Tensor:
        self.sizes.append(counts)
        return torch.cat([local[:, : counts[0]], local[:, : counts[1]]], dim=1)


class SecondOfTwo:
    """Rank 1 of two: its gathers return nothing."""

    world_size, rank, is_first = 2, 1, False

    def gather_frames(self, local: torch.Tensor, counts: list[int]) -> None:
        return None


def test_a_single_writer_writes_each_round_as_it_arrives(tmp_path: Path) -> None:
    torch.manual_seed(0)
    predictions = {
        "depth": torch.rand(1, 3, 4, 5, 1),
        "depth_conf": torch.rand(1, 3, 4, 5),
        "world_points": torch.rand(1, 3, 4, 5, 3),
        "world_points_conf": torch.rand(1, 3, 4, 5),
    }
    boxes = [ContentBox(index % 2, 0, 4 - index % 2, 5) for index in range(5)]
    frame_bytes = 4 * 5 * 6 * 4
    cli.write_frames_on_first(
        tmp_path / "absent", predictions, [3, 2], boxes, SecondOfTwo(), 4 * frame_bytes
    )
    assert not (tmp_path / "absent").exists()
    first = FirstOfTwo()
    cli.write_frames_on_first(tmp_path, predictions, [3, 2], boxes, first, 4 * frame_bytes)
    assert first.sizes == [[2, 2]] * 4 + [[1, 0]] * 4  # two frames a rank, then the rest
    for index, local in enumerate([0, 1, 2, 0, 1]):
        box = boxes[index]
        with np.load(outputs.frame_path(tmp_path, index)) as frame:
            depth = predictions["depth"][0, local, box.top :, :, 0].numpy()
            np.testing.assert_array_equal(frame["depth"], depth)
            points = predictions["world_points"][0, local, box.top :].numpy()
            np.testing.assert_array_equal(frame["world_points"], points)


def test_a_peer_failure_is_told_by_its_type_not_its_words() -> None:
    assert not failures.is_peer_failure(RuntimeError("nccl socket timed out: connection reset"))
    assert failures.is_peer_failure(dist.DistNetworkError("rendezvous store unreachable"))
    with pytest.raises(CollectiveError) as caught, collective("all-to-all"):
        raise RuntimeError("[gloo] Connection closed by peer\nsecond line")
    assert failures.is_peer_failure(caught.value)
    assert str(caught.value) == "all-to-all failed: [gloo] Connection closed by peer"
    # Running out of memory inside a collective is this rank's problem, not a peer's.
    with pytest.raises(torch.OutOfMemoryError), collective("all-gather"):
        raise torch.OutOfMemoryError("CUDA out of memory")


def test_a_rank_own_error_reaches_torchruns_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    error_file = tmp_path / "error.json"
    monkeypatch.delenv(failures.ERROR_FILE_VARIABLE, raising=False)
    failures.record_for_torchrun(ValueError("no file outside torchrun"))
    assert not error_file.exists()
    monkeypatch.setenv(failures.ERROR_FILE_VARIABLE, str(error_file))
    failures.record_for_torchrun(ValueError("bad frame 7"))
    recorded = json.loads(error_file.read_text())
    assert recorded["message"]["message"] == "ValueError: bad frame 7"
