"""Seconds to map 64-d latent means to 2-D with ``core.embedding.fit_umap`` at 10k and 100k points.

The 100k run takes the production path: fit on a 20k sample, ``transform`` the other 80k. numba's
one-off compilation is timed separately (a warm-up on a small pool) and kept out of the per-size numbers;
``NUMBA_CACHE_DIR`` defaults to a folder under the temporary directory so a second run starts warm.

    python -m benchmarks.umap_speed [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

LATENT_DIM = 64
FULL_SIZES = (10_000, 100_000)
QUICK_SIZES = (2_000, 5_000)


def clustered_latents(count: int, *, dim: int = LATENT_DIM, clusters: int = 20, seed: int = 0) -> np.ndarray:
    """Latent means shaped like a trained model's: a mixture of anisotropic Gaussian clusters."""
    generator = np.random.default_rng(seed)
    centres = generator.normal(0.0, 3.0, size=(clusters, dim))
    scales = generator.uniform(0.3, 1.0, size=(clusters, dim))
    which = generator.integers(clusters, size=count)
    return (centres[which] + scales[which] * generator.normal(size=(count, dim))).astype(np.float32)


def main(out_dir: Path, quick: bool) -> dict[str, Any]:
    out_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("NUMBA_CACHE_DIR", str(Path(tempfile.gettempdir()) / "latent_labeller_numba"))
    from core.embedding import DEFAULT_SAMPLE_SIZE, fit_umap

    started = time.perf_counter()
    import umap  # noqa: F401  (timed: the import itself costs seconds)

    import_seconds = time.perf_counter() - started
    # Above 4,096 rows umap takes another code path that compiles separately: warm both.
    started = time.perf_counter()
    fit_umap(clustered_latents(5_000, seed=99), sample_size=4_500, seed=0)
    warmup_seconds = time.perf_counter() - started

    sizes = QUICK_SIZES if quick else FULL_SIZES
    sample_size = 4_000 if quick else DEFAULT_SAMPLE_SIZE
    rows = []
    for count in sizes:
        latent = clustered_latents(count)
        started = time.perf_counter()
        coords = fit_umap(latent, sample_size=sample_size, seed=0)
        seconds = time.perf_counter() - started
        if not np.isfinite(coords).all():
            raise RuntimeError(f"UMAP returned non-finite coordinates for {count} points")
        rows.append(
            {
                "points": count,
                "latent_dim": LATENT_DIM,
                "fitted_on": min(count, sample_size),
                "transformed": max(0, count - sample_size),
                "seconds": round(seconds, 2),
                "points_per_second": round(count / seconds, 1),
            }
        )
    result = {
        "name": "umap_speed",
        "quick": quick,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
        "note": (
            f"fit_umap(seed=0) on clustered {LATENT_DIM}-d latents; fit on a sample of {sample_size} when larger, "
            f"transform the rest. `import umap` took {import_seconds:.1f} s and the numba warm-up "
            f"{warmup_seconds:.1f} s (not included below)."
        ),
        "import_seconds": round(import_seconds, 2),
        "warmup_seconds": round(warmup_seconds, 2),
        "rows": rows,
    }
    (out_dir / "umap_speed.json").write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    arguments = parser.parse_args()
    print(json.dumps(main(arguments.out, arguments.quick), indent=2))
