"""Models build and run without huggingface_hub and safetensors, which only loading from the
hub and reading or writing .safetensors files import (each then names the missing package)."""

import json
import subprocess
import sys
import textwrap

from tests.support.infer_inputs import environment
from tests.support.repo import REPO

BLOCKED = ("huggingface_hub", "safetensors")
# Run first in each subprocess: `import huggingface_hub` (or safetensors) then fails.
PRELUDE = f"import sys\nsys.modules.update(dict.fromkeys({BLOCKED!r}))\n"


def run_without_packages(code: str) -> subprocess.CompletedProcess:
    """`code` in a fresh interpreter at the repository root where BLOCKED cannot be imported."""
    return subprocess.run(
        [sys.executable, "-c", PRELUDE + textwrap.dedent(code)],
        cwd=REPO,
        env=environment(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_models_build_run_and_load_model_pt_without_the_packages() -> None:
    result = run_without_packages(
        """
        import json, tempfile
        from pathlib import Path
        import torch
        import vggt.infer.checkpoint
        from tests.support.configs import SMALL_VGGT
        from tests.support.images import seeded_images
        from vggt.models.vggt import VGGT
        from vggt.models.vggt_vram_optimized import VGGTOptimized

        torch.manual_seed(0)
        images = seeded_images(1, 2, 56, 56)
        shapes = {}
        for cls in (VGGT, VGGTOptimized):
            model = cls(**SMALL_VGGT).eval()
            path = Path(tempfile.mkdtemp()) / "model.pt"
            torch.save(model.state_dict(), path)
            fresh = cls(**SMALL_VGGT).eval()
            fresh.load_checkpoint(path)
            with torch.no_grad():
                depth, again = model(images)["depth"], fresh(images)["depth"]
            assert torch.equal(depth, again), cls.__name__
            shapes[cls.__name__] = list(depth.shape)
        print(json.dumps(shapes))
        """
    )
    assert result.returncode == 0, result.stderr
    shapes = json.loads(result.stdout.splitlines()[-1])
    assert shapes == {"VGGT": [1, 2, 56, 56, 1], "VGGTOptimized": [1, 2, 56, 56, 1]}


def test_what_needs_a_missing_package_names_it() -> None:
    result = run_without_packages(
        """
        import json, tempfile
        from pathlib import Path
        from tests.support.configs import SMALL_VGGT
        from vggt.models.vggt import VGGT
        from vggt.models.vggt_vram_optimized import VGGTOptimized

        folder = Path(tempfile.mkdtemp())
        (folder / "weights.safetensors").write_bytes(b"not read")
        model = VGGT(**SMALL_VGGT)
        calls = {
            "hub VGGT": lambda: VGGT.from_pretrained("facebook/VGGT-1B"),
            "hub VGGTOptimized": lambda: VGGTOptimized.from_pretrained("owner/repo"),
            "save": lambda: model.save_pretrained(folder / "saved"),
            "read": lambda: model.load_checkpoint(folder / "weights.safetensors"),
        }
        messages = {}
        for name, call in calls.items():
            try:
                call()
            except ImportError as error:
                messages[name] = str(error)
        print(json.dumps(messages))
        """
    )
    assert result.returncode == 0, result.stderr
    messages = json.loads(result.stdout.splitlines()[-1])
    assert set(messages) == {"hub VGGT", "hub VGGTOptimized", "save", "read"}
    for name in ("hub VGGT", "hub VGGTOptimized"):
        assert "needs the huggingface_hub package: pip install huggingface_hub" in messages[name]
    assert "facebook/VGGT-1B" in messages["hub VGGT"]
    for name in ("save", "read"):
        assert "needs the safetensors package: pip install safetensors" in messages[name]
