"""A torchrun worker for the sequence-parallel tests: runs cases from a JSON file on gloo ranks
and writes each rank's findings to OUT/rank<k>.json.

Each case builds a small seeded VGGTOptimized (in the case's precision, fp32 by default), runs
the whole sequence on this rank alone as the reference, then the same sequence split over the
ranks (this rank passing only its own frames), and records the largest relative L2 error of
every kept layer and prediction against the reference's matching frames, or the error raised.
A `train` case runs a training step's forward and backward of a small-headed model on the
whole sequence and split over the ranks, and records each summed gradient's relative L2 error
and this rank's loss terms. A `memory` case compares the CPU profiler's peak of a preset's
optimized aggregator split over the ranks with rank 0's peak alone.

    torchrun --nproc_per_node=N tests/support/parallel_worker.py CASES.json OUT
"""

import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from profiling.meters.cpu import peak_live_bytes  # noqa: E402
from profiling.sweep.presets import load_preset  # noqa: E402
from tests.support.compare import rel_l2  # noqa: E402
from tests.support.configs import SMALL_VGGT  # noqa: E402
from tests.support.images import seeded_images  # noqa: E402
from tests.support.recipe import (  # noqa: E402
    GOLDEN_FILE,
    recipe_images,
    recipe_query_points,
)
from tests.support.training import with_small_heads  # noqa: E402
from vggt.models.variants import get_variant  # noqa: E402
from vggt.models.vggt_vram_optimized import VGGTOptimized  # noqa: E402
from vggt.parallel.group import SequenceGroup, rank_slice, split_evenly  # noqa: E402
from vggt.precision import get_precision  # noqa: E402
from vggt.streaming.chunks import ChunkPolicy  # noqa: E402
from vggt.training.loss import seeded_targets  # noqa: E402
from vggt.training.step import TrainingStep  # noqa: E402
from vggt.training.trainable import PRESETS  # noqa: E402

# Query points in 140x140 images, scaled with the case's size.
QUERY_POINTS = [[10.0, 20.0], [70.0, 90.0], [130.0, 5.0]]


def my_frames(case: dict, rank: int, world_size: int) -> slice:
    """This rank's consecutive frames under the case's split (even by default)."""
    counts = case.get("counts") or split_evenly(case["frames"], world_size)
    return rank_slice(counts, rank)


def compare_case(case: dict, group: SequenceGroup) -> dict:
    """Largest relative L2 error per kept layer and prediction against one device; the case's
    `ranks_per_node` groups the ranks into nodes (for hybrid attention)."""
    if "ranks_per_node" in case:
        group = SequenceGroup(ranks_per_node=case["ranks_per_node"])
    torch.manual_seed(case.get("seed", 0))
    precision = get_precision(case.get("precision", "fp32"))
    model = VGGTOptimized(**{**SMALL_VGGT, **case.get("architecture", {})}).eval()
    precision.apply(model)
    if case.get("min_chunk_tokens"):
        model.aggregator.block_runner.policy = ChunkPolicy(
            min_chunk_tokens=case["min_chunk_tokens"]
        )
    tracks = case.get("tracks", True)
    # The tracker's five pyramid levels need 128 pixels; without it smaller images run faster.
    size = case.get("size", 140 if tracks else 70)
    images = seeded_images(case["batch"], case["frames"], size, size, seed=case.get("seed", 0))
    points = (torch.tensor([QUERY_POINTS]) * size / 140).expand(case["batch"], -1, -1)
    points = points if tracks else None
    mine = my_frames(case, group.rank, group.world_size)
    with torch.no_grad(), precision.autocast("cpu"):
        reference_view, _, _ = model.aggregator(images)
        reference = model(images, query_points=points)
        model.parallelize(group, case["attention"])
        local = images[:, mine]
        view, _, _ = model.aggregator(local)
        predictions = model(local, query_points=points)
    errors = {f"layer{i}": rel_l2(t, reference_view[i][:, mine]) for i, t in view.items()}
    for name, value in predictions.items():
        pairs = zip(value, reference[name], strict=True) if isinstance(value, list) else None
        pairs = pairs or [(value, reference[name])]
        errors[name] = max(rel_l2(ours, expected[:, mine]) for ours, expected in pairs)
    return {"errors": errors, "frames": [mine.start, mine.stop]}


def train_case(case: dict, group: SequenceGroup) -> dict:
    """Relative L2 error of every gradient summed over the ranks against one device's, and
    this rank's loss terms with the reference's (a training step's forward and backward)."""
    torch.manual_seed(case.get("seed", 0))
    config = {**SMALL_VGGT, **case.get("architecture", {}), "enable_track": False}
    model = with_small_heads(VGGTOptimized(**config))
    reference = with_small_heads(VGGTOptimized(**config))
    reference.load_state_dict(model.state_dict())
    size, frames = case.get("size", 56), case["frames"]
    images = seeded_images(1, frames, size, size, seed=case.get("seed", 0))
    targets = seeded_targets(1, frames, size, size, seed=case.get("seed", 0))
    parts, policy = PRESETS[case["trainable"]], case["checkpoint"]
    precision = get_precision("fp32")
    expected = TrainingStep(reference, parts, policy, precision).loss(images, targets)
    expected["total"].backward()
    model.parallelize(group, case["attention"])
    step = TrainingStep(model, parts, policy, precision)
    mine = my_frames(case, group.rank, group.world_size)
    local = targets.frames(mine.start, mine.stop)
    losses = step.loss(images[:, mine], local, total_frames=frames)
    losses["total"].backward()
    group.all_reduce_sum_([p.grad for p in step.parameters if p.grad is not None])
    grads = dict(reference.named_parameters())
    errors = {
        name: rel_l2(p.grad, grads[name].grad)
        for name, p in model.named_parameters()
        if p.grad is not None and grads[name].grad.abs().max() > 0
    }
    missing = sorted(
        n
        for n, p in reference.named_parameters()
        if (p.grad is None) != (dict(model.named_parameters())[n].grad is None)
    )
    return {
        "errors": errors,
        "missing": missing,
        "losses": {name: value.item() for name, value in losses.items()},
        "expected": {name: value.item() for name, value in expected.items()},
    }


def memory_case(case: dict, group: SequenceGroup) -> dict:
    """Peak live CPU tensor bytes of the optimized aggregator of the case's preset (cpu-small
    by default) split over the ranks, and (on rank 0) of the whole sequence on rank 0 alone."""
    architecture = load_preset(case.get("preset", "cpu-small")).architecture
    torch.manual_seed(0)
    model = get_variant("optimized").build("aggregator", architecture).eval()
    size = architecture.img_size
    images = seeded_images(1, case["frames"], size, size)
    result = {}
    with torch.no_grad():
        if group.rank == 0:
            result["alone"] = peak_live_bytes(lambda: model(images))
        model.parallelize(group, case["attention"])
        local = images[:, my_frames(case, group.rank, group.world_size)]
        model(local)
        result["split"] = peak_live_bytes(lambda: model(local))
    return result


def golden_case(case: dict, group: SequenceGroup) -> dict:
    """Relative L2 errors of this rank's kept layers and predictions against the golden
    reference outputs (full VGGT-1B with the recipe weights saved at the case's `weights`)."""
    golden = torch.load(GOLDEN_FILE, weights_only=True)
    recipe = golden["recipe"]
    with torch.device("meta"):
        model = VGGTOptimized()
    weights = torch.load(case["weights"], mmap=True, weights_only=True)
    model.load_state_dict(weights, strict=True, assign=True)
    model.eval().parallelize(group, case["attention"])
    batch, frames, _, height, width = recipe["images"]
    images = recipe_images(batch, frames, height, width, seed=recipe["images_seed"])
    count = recipe["query_points"][1]
    points = recipe_query_points(batch, count, height, width, seed=recipe["query_points_seed"])
    mine = my_frames({"frames": frames}, group.rank, group.world_size)
    with torch.no_grad():
        view, _, _ = model.aggregator(images[:, mine])
        predictions = model(images[:, mine], query_points=points)
    errors = {
        f"layer{i}": rel_l2(t, golden[f"aggregator.layer{i}"][:, mine]) for i, t in view.items()
    }
    for name in ("pose_enc", "depth", "depth_conf", "world_points", "world_points_conf"):
        errors[name] = rel_l2(predictions[name], golden[name][:, mine])
    poses = torch.stack(predictions["pose_enc_list"])
    errors["pose_enc_list"] = rel_l2(poses, golden["pose_enc_list"][:, :, mine])
    for name in ("track", "vis", "conf"):
        errors[name] = rel_l2(predictions[name], golden[name][:, mine])
    return {"errors": errors, "frames": [mine.start, mine.stop]}


def main(cases_file: str, out_dir: str) -> None:
    dist.init_process_group("gloo")
    group = SequenceGroup()
    findings = {}
    for case in json.loads(Path(cases_file).read_text()):
        run = RUNS[case.get("kind", "compare")]
        try:
            findings[case["name"]] = run(case, group)
        except (ValueError, RuntimeError) as error:
            findings[case["name"]] = {"error": str(error)}
    out = Path(out_dir) / f"rank{group.rank}.json"
    out.write_text(json.dumps(findings))
    dist.destroy_process_group()


RUNS = {
    "compare": compare_case,
    "memory": memory_case,
    "golden": golden_case,
    "train": train_case,
}

if __name__ == "__main__":
    main(*sys.argv[1:])
