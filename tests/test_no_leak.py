"""No validation token reaches training or GPTQ calibration.

The validation shard is filled with a sentinel token id that no training shard contains; a spy
on the model's forward records every input it sees. Over a whole in-process run (train, export,
evaluate), the sentinel must appear only while evaluation stages run, and it must appear there
(so the spy is known to work).
"""
from __future__ import annotations

import numpy as np
import torch

import train_gpt as tg
from conftest import TINY_RUN_ENV
from test_data_metric import write_shard

SENTINEL = 511  # the last id of the 512-piece tokenizer


def test_validation_tokens_never_reach_training_or_calibration(tiny_data, tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    for i in range(2):
        train = rng.integers(2, SENTINEL, size=40_000)
        train[::500] = 1  # documents start with BOS
        write_shard(data / f"fineweb_train_{i:06d}.bin", train)
    val = np.full(3_000, SENTINEL)
    val[::300] = 1
    write_shard(data / "fineweb_val_000000.bin", val)

    phase = {"name": "setup"}
    seen: dict[str, bool] = {}
    hidden_states = tg.GPT.hidden_states  # every forward, calibration's included, runs through it

    def spy(self, input_ids, layout=None):
        seen[phase["name"]] = seen.get(phase["name"], False) or bool((input_ids == SENTINEL).any())
        return hidden_states(self, input_ids, layout)

    def in_phase(name, fn):
        def wrapped(*args, **kwargs):
            before, phase["name"] = phase["name"], name
            try:
                return fn(*args, **kwargs)
            finally:
                phase["name"] = before
        return wrapped

    monkeypatch.setattr(tg.GPT, "hidden_states", spy)
    monkeypatch.setattr(tg, "train_model", in_phase("training", tg.train_model))
    monkeypatch.setattr(tg, "collect_hessians", in_phase("calibration", tg.collect_hessians))
    monkeypatch.setattr(tg, "evaluate_windows", in_phase("evaluation", tg.evaluate_windows))
    monkeypatch.setattr(tg, "score_first_ttt", in_phase("evaluation", tg.score_first_ttt))
    monkeypatch.setattr(tg, "score_documents_ttt", in_phase("evaluation", tg.score_documents_ttt))
    monkeypatch.chdir(tmp_path)

    env = {**TINY_RUN_ENV, "VOCAB_SIZE": "512", "TOKENIZER_PATH": tiny_data["TOKENIZER_PATH"], "DATA_PATH": str(data),
           "VAL_TOKENS_LIMIT": "0", "ITERATIONS": "4", "VAL_LOSS_EVERY": "0", "RUN_ID": "leak",
           "ARTIFACT_PATH": str(tmp_path / "m.ptz"), "CHECKPOINT_PATH": ""}
    tg.run(tg.Hyperparameters(environ=env), tg.Runtime(0, 1, 0, torch.device("cpu")))

    assert seen == {"training": False, "calibration": False, "evaluation": True}
