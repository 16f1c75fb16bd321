"""pipeline/detection.py: the fine-tuning checkpointer reads back only this run's weights-only states."""

import argparse
import os
import pickle

import pytest
import torch
from torch import nn

import models
from models import CheckpointError
from pipeline.detection import AtomicCheckpointer


class _Touch:
    """Unpickling this runs code: it creates the file it names."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (os.system, (f"touch {self.path}",))


def _checkpointer(tmp_path):
    return AtomicCheckpointer(nn.Linear(2, 2), str(tmp_path))


def _pickled(path, obj):
    path.write_bytes(pickle.dumps(obj))


def _torch_saved(path, obj):
    torch.save(obj, path)


@pytest.mark.parametrize("name, save, match", [
    # a pickle named by last_checkpoint, as detectron2's checkpointer would unpickle it
    ("evil.pkl", _pickled, "names .*evil.pkl, not a .pth state of this run's folder; delete it"),
    # a .pth state whose extra entry needs an arbitrary object (unpickling either file would run `touch`)
    ("model_0000001.pth", _torch_saved, "not a loadable weights-only checkpoint.*resume state: delete it"),
])
def test_a_state_that_would_run_code_is_refused_unrun(tmp_path, name, save, match):
    marker = tmp_path / "ran"
    save(tmp_path / name, {"model": {}, "extra": _Touch(marker)})
    (tmp_path / "last_checkpoint").write_text(name)
    with pytest.raises(CheckpointError, match=match):
        _checkpointer(tmp_path).resume_or_load(None, resume=True)
    assert not marker.exists()


def test_a_state_outside_the_run_folder_is_refused(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"model": nn.Linear(2, 2).state_dict()}, tmp_path / "other.pth")
    (run / "last_checkpoint").write_text(str(tmp_path / "other.pth"))
    with pytest.raises(CheckpointError, match="not a .pth state of this run's folder"):
        _checkpointer(run).resume_or_load(None, resume=True)


def test_own_states_resume(tmp_path):
    saver = _checkpointer(tmp_path)
    saver.save("model_0000003", iteration=3)
    assert _checkpointer(tmp_path).resume_or_load(None, resume=True)["iteration"] == 3


def test_released_checkpoints_with_argparse_arguments_load(tmp_path):
    """DeiT-style training scripts save their arguments as an argparse.Namespace beside the weights."""
    state = models.create("pvt_tiny").state_dict()
    torch.save({"model": state, "args": argparse.Namespace(lr=5e-4, model="pvt_tiny")}, tmp_path / "release.pth")
    assert models.load_file(tmp_path / "release.pth")["args"].lr == 5e-4
    models.create("pvt_tiny", pretrained=tmp_path / "release.pth")
