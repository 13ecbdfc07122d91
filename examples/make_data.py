"""Make datasets for the example prescriptions (no download; deterministic).

    python examples/make_data.py mlp  mlp-data.safetensors     # for examples/mlp-exact.json
    python examples/make_data.py text corpus.txt               # for examples/char-transformer-cpu.json

`mlp`: 4096 samples of 8 features; the label is the argmax of the first three features (a task the
MLP learns, so its loss falls). `text`: this repository's documentation as a byte corpus.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

ROOT = Path(__file__).resolve().parents[1]


def mlp_data(path: Path, n: int = 4096) -> None:
    rng = np.random.default_rng(7)
    features = rng.standard_normal((n, 8)).astype(np.float32)
    labels = features[:, :3].argmax(axis=1).astype(np.int64)
    save_file({"features": features, "labels": labels}, str(path))


def text_data(path: Path) -> None:
    docs = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    path.write_bytes(b"\n\n".join(doc.read_bytes() for doc in docs))


def main(argv: list[str]) -> int:
    if len(argv) != 2 or argv[0] not in ("mlp", "text"):
        print(__doc__.strip(), file=sys.stderr)
        return 2
    out = Path(argv[1])
    (mlp_data if argv[0] == "mlp" else text_data)(out)
    print(f"wrote {out} ({out.stat().st_size} bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
